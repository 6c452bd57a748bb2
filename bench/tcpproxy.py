"""A TCP proxy that can be cut and restored: a dependency outage without touching the
dependency.

Put it between Herald and PostgreSQL (or Redis); `cut()` drops every open connection
and refuses new ones, as a stopped server does; `restore()` listens again on the same
port. The server itself keeps running, so other users of it notice nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from sqlalchemy.engine import make_url


class TcpProxy:
    """Forward 127.0.0.1:`port` to `target_host`:`target_port` (or to the Unix socket
    `unix_path`), one thread per direction."""

    def __init__(
        self,
        target_host: str = "127.0.0.1",
        target_port: int = 0,
        port: int = 0,
        *,
        unix_path: str | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.unix_path = unix_path
        self.port = port
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.up = False

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener, self.up = listener, True
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Refuse new connections and reset the open ones (a server that went away)."""
        with self._lock:
            listener, self._listener, self.up = self._listener, None, False
            conns, self._conns = self._conns, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes the pumps; they close the sockets

    def restore(self) -> None:
        self.start()

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = self._connect_upstream()
            except OSError:
                client.close()
                continue
            with self._lock:
                if not self.up:
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        if self.unix_path is None:
            upstream = socket.create_connection(self.target, timeout=5)
        else:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.settimeout(5)
            try:
                upstream.connect(self.unix_path)
            except OSError:
                upstream.close()
                raise
        upstream.settimeout(None)
        return upstream

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            for sock in (src, dst):
                # shutdown, not just close: it wakes the other direction's recv (a socket
                # closed under a blocked recv stays open, and so would the server's session).
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


def proxy_to(database_url: str) -> tuple[TcpProxy, str]:
    """Start a cuttable proxy to the PostgreSQL of `database_url` (TCP, or the Unix socket
    of the embedded server) and return it with the URL that goes through it."""
    url = make_url(database_url)
    socket_dir = url.query.get("host")
    if isinstance(socket_dir, str) and socket_dir.startswith("/"):
        proxy = TcpProxy(unix_path=f"{socket_dir}/.s.PGSQL.{url.port or 5432}").start()
        url = url.difference_update_query(["host"])
    else:
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    proxied = url.set(host="127.0.0.1", port=proxy.port)
    return proxy, proxied.render_as_string(hide_password=False)
