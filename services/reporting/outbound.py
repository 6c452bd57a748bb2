"""One POST to a tenant's callback URL: checked, pinned, and over by a wall-clock deadline.

Two things a tenant controls must not reach past this module:

* **Its address.** The name is resolved once, every address is judged (IPv6 forms that
  embed an IPv4 address, IPv4-mapped, NAT64, 6to4, Teredo, IPv4-compatible, are judged
  by the IPv4 address inside), and the connection goes to an address that was judged:
  a second lookup, which a DNS-rebinding name would answer with 127.0.0.1, never
  happens. The Host header, TLS SNI and certificate check keep the URL's name.
* **Its time.** httpx's and httpcore's timeouts are per operation, so a receiver that
  trickles a header byte a second never times out. Here the whole delivery (lookup,
  connect, TLS, request, response headers) has one deadline: every socket operation
  gets at most the time left, and a watchdog shuts the socket at the deadline for the
  operations that loop inside one call (a TLS handshake).
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 6052's well-known NAT64 prefix embeds the IPv4 address in the last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# RFC 8215's local-use prefix: the operator picks where the IPv4 address sits, so
# nothing outside can tell which address it reaches. Never a public destination.
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# Deprecated IPv4-compatible addresses (::a.b.c.d), apart from :: and ::1.
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

USER_AGENT = b"Herald-Events/1"


class Refused(Exception):
    """Herald will not POST to this URL; the message says why (kept as the row's error)."""


class DeliveryFailed(Exception):
    """The POST did not get an answer; the message names the failure (or the deadline)."""


def embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, which are what it reaches."""
    if isinstance(address, ipaddress.IPv4Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)  # (server, client): both must be public
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        found.append(ipaddress.IPv4Address(int(address)))
    return found


def why_not_public(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast destination, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address in _NAT64_LOCAL:
        return "a local-use NAT64 address"
    for inner in [address, *embedded_ipv4(address)]:
        if not inner.is_global or inner.is_multicast:
            return "a non-public address" if inner is address else f"an address embedding {inner}"
    return None


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))


# Lookups run here so that a name server that never answers costs the caller only its
# deadline. Tenants' concurrent deliveries are capped (fairness.py), so one tenant's
# slow name server cannot take every thread of this pool.
_resolver_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="events-dns")

# The name lookup, replaceable in tests (a resolver that changes its answer is how
# DNS rebinding looks from here).
resolve: Callable[[str, int], list[str]] = _getaddrinfo


@dataclass(frozen=True)
class Target:
    """A callback URL resolved once: where to connect, and the name to present."""

    url: str
    host: str
    port: int
    addresses: tuple[str, ...]


def resolve_target(url: str, *, allow_private: bool, timeout: float) -> Target:
    """Resolve `url`'s host once and judge every address (unless `allow_private`).

    Raises Refused (never worth retrying) or DeliveryFailed (the lookup failed)."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refused("not an http(s) URL") from None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise Refused("not an http(s) URL")
    future = _resolver_pool.submit(resolve, host, port)
    try:
        addresses = future.result(timeout=max(timeout, 0.001))
    except FutureTimeout:
        raise DeliveryFailed("DeadlineExceeded") from None
    except (OSError, UnicodeError):
        raise DeliveryFailed("host does not resolve") from None
    if not addresses:
        raise DeliveryFailed("host does not resolve")
    if not allow_private:
        for raw in addresses:
            why = why_not_public(ipaddress.ip_address(raw))
            if why:
                raise Refused(f"refused: {host} resolves to {why}")
    return Target(url=url, host=host, port=port, addresses=tuple(addresses))


class _Watchdog:
    """One thread that shuts the sockets of deliveries whose deadline passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._count = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._count), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="events-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                at, _, deadline = self._heap[0]
                now = time.monotonic()
                if at > now:
                    self._cond.wait(at - now)
                    continue
                heapq.heappop(self._heap)
            deadline.expire()


_watchdog = _Watchdog()


@dataclass
class Deadline:
    """A wall-clock deadline for one delivery, and the sockets it must cut."""

    seconds: float
    at: float = 0.0
    sockets: list[socket.socket] = field(default_factory=list)
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.at = time.monotonic() + self.seconds
        _watchdog.watch(self)

    def left(self, error: type[Exception] = httpcore.ReadTimeout) -> float:
        """Seconds left; raises `error` once none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("DeadlineExceeded")
        return left

    def cap(self, timeout: float | None, error: type[Exception]) -> float:
        left = self.left(error)
        return left if timeout is None else min(timeout, left)

    def adopt(self, sock: Any) -> None:
        with self.lock:
            if not self.done:
                self.sockets.append(sock)
                return
        _shut(sock)

    def expire(self) -> None:
        """The deadline passed: whatever the delivery is blocked in fails now."""
        with self.lock:
            if self.done:
                return
            self.done = True
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            _shut(sock)

    def finish(self) -> None:
        with self.lock:
            self.done = True
            self.sockets = []


def _shut(sock: Any) -> None:
    # socket.socket's own shutdown, also for an SSLSocket: it wakes a thread blocked in
    # recv on the descriptor without touching the TLS object that thread is using.
    with contextlib.suppress(OSError, TypeError, ValueError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation is bounded by the delivery's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline
        deadline.adopt(inner.get_extra_info("socket"))

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.cap(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.cap(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = self._deadline.cap(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, timeout), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the judged addresses whatever host httpcore asks for."""

    def __init__(self, addresses: Iterable[str], deadline: Deadline | None) -> None:
        self._addresses = tuple(addresses)
        self._deadline = deadline
        self._inner = httpcore.SyncBackend()

    def _cap(self, timeout: float | None, error: type[Exception]) -> float | None:
        return timeout if self._deadline is None else self._deadline.cap(timeout, error)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        error: Exception = httpcore.ConnectError("no address")
        for address in self._addresses:
            try:
                stream = self._inner.connect_tcp(
                    address,  # an IP literal: no second lookup
                    port,
                    timeout=self._cap(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                error = exc
                continue
            if self._deadline is None:
                return stream
            return _DeadlineStream(stream, self._deadline)
        raise error

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("callbacks go over TCP only")

    def sleep(self, seconds: float) -> None:
        if self._deadline is not None:
            seconds = min(seconds, self._deadline.left(httpcore.PoolTimeout))
        time.sleep(seconds)


_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def _ssl() -> ssl.SSLContext:
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = httpcore.default_ssl_context()
        return _ssl_context


class PinnedTransport(httpx.HTTPTransport):
    """An httpx transport that connects only to a target's judged addresses.

    For callers that stream a body for longer than one deadline would allow (inbound
    media): httpx's per-operation timeouts apply, the pinning is the same as `post`'s,
    so the name is never looked up a second time."""

    def __init__(self, target: Target) -> None:
        super().__init__(retries=0)
        # httpx keeps its httpcore pool here; ours differs only in the network backend.
        self._pool = httpcore.ConnectionPool(
            ssl_context=_ssl(),
            network_backend=_PinnedBackend(target.addresses, None),
            max_connections=1,
            retries=0,
        )


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    deadline_seconds: float,
    allow_private: bool,
) -> int:
    """POST `body` to `url` within `deadline_seconds` of wall clock; the HTTP status.

    The response body is never read: its status is the whole answer. Raises Refused
    or DeliveryFailed."""
    deadline = Deadline(deadline_seconds)
    try:
        target = resolve_target(url, allow_private=allow_private, timeout=deadline.left())
        sent_headers = [(b"User-Agent", USER_AGENT), (b"Connection", b"close")]
        sent_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
        # One connection per delivery, to the addresses judged for it: nothing pooled
        # outlives the deadline or the lookup it was opened under.
        with httpcore.ConnectionPool(
            ssl_context=_ssl(),
            network_backend=_PinnedBackend(target.addresses, deadline),
            max_connections=1,
            retries=0,
        ) as pool:
            left = deadline.left()
            with pool.stream(
                "POST",
                url,
                headers=sent_headers,
                content=body,
                extensions={
                    "timeout": {"connect": left, "read": left, "write": left, "pool": left}
                },
            ) as response:
                return response.status
    except (
        httpcore.TimeoutException,
        httpcore.NetworkError,  # a socket the watchdog shut ends as a read or write error
        httpcore.ProtocolError,
        httpcore.UnsupportedProtocol,
        OSError,
    ) as exc:
        over = time.monotonic() >= deadline.at
        raise DeliveryFailed("DeadlineExceeded" if over else type(exc).__name__) from exc
    finally:
        deadline.finish()
