"""The twilio client's HTTP transport on urllib3's connection pools, without requests.

The `twilio` SDK builds every request and parses every answer; it hands the wire
to an `HttpClient` (`twilio.http.HttpClient.request(...) -> Response`). Its own,
`TwilioHttpClient`, goes through a `requests.Session`, whose per-request work
(preparing the request, cookies, hooks, merging settings, redirects, building a
`requests.Response`) cost a worker about half of its CPU per message. This one
does what that path did for these requests, once per host where it can, and sends
on urllib3 directly:

* keep-alive pools per host (8 hosts kept, 64 connections each, as before);
* proxies and the CA bundle from the environment, as requests reads them
  (HTTP(S)_PROXY/NO_PROXY, REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE, else certifi's),
  read once per host: a changed environment takes effect at the next start;
* urllib3 errors raised as the `requests.exceptions` requests would raise for them
  (same classes, same wrapped reasons), so callers classify failures as before;
* no retries inside urllib3 (requests' `Retry(0, read=False)`), no redirects
  unless asked, a connect and a read timeout of `timeout` seconds each.

Cookies are not kept (Twilio's API sets none), and the SDK's request/response
logging is formatted only when its logger would print it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests.exceptions as rex
import urllib3
from requests.utils import (
    DEFAULT_CA_BUNDLE_PATH,
    get_auth_from_url,
    get_environ_proxies,
    select_proxy,
)
from twilio.http import HttpClient
from twilio.http.response import Response
from urllib3.connectionpool import connection_from_url
from urllib3.exceptions import (
    ClosedPoolError,
    ConnectTimeoutError,
    InvalidHeader,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
    SSLError,
)
from urllib3.exceptions import ProxyError as Urllib3ProxyError
from urllib3.util import make_headers

_logger = logging.getLogger("twilio.http_client")

# What requests sends on every request unless the caller sets it.
_DEFAULT_HEADERS = {
    "User-Agent": "python-requests/2",
    **make_headers(accept_encoding=True),
    "Accept": "*/*",
    "Connection": "keep-alive",
}
_NO_RETRIES = urllib3.Retry(0, read=False)  # requests' default: never resend
# Following redirects when asked (the SDK never asks), up to requests' 30, and still
# never resending a request that failed.
_REDIRECTS = urllib3.Retry(total=None, connect=0, read=False, status=0, other=0, redirect=30)


def encode_params(data: Any) -> str:
    """A form or query string as requests encodes a dict: None values dropped, a list
    or tuple value repeated under its key, everything else str()'d."""
    if not data:
        return ""
    if isinstance(data, str | bytes):
        return data.decode() if isinstance(data, bytes) else data
    pairs = []
    for key, values in data.items() if hasattr(data, "items") else data:
        if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
            values = [values]
        for value in values:
            if value is not None:
                pairs.append(
                    (
                        key.encode("utf-8") if isinstance(key, str) else key,
                        value.encode("utf-8") if isinstance(value, str) else value,
                    )
                )
    return urlencode(pairs, doseq=True)


def _text(body: bytes, content_type: str | None) -> str:
    """The body as requests' `Response.text` decodes it: the charset the answer
    declares, UTF-8 for JSON, ISO-8859-1 for other text."""
    encoding = None
    if content_type:
        for part in content_type.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                encoding = value.strip("'\" ")
        if encoding is None and "text" in content_type.split(";")[0]:
            encoding = "ISO-8859-1"
    try:
        return str(body, encoding or "utf-8", errors="replace")
    except LookupError:  # an unknown charset
        return str(body, "utf-8", errors="replace")


def _raise_as_requests(exc: Exception) -> None:
    """Raise the `requests.exceptions` error requests' HTTPAdapter raises for `exc`."""
    if isinstance(exc, MaxRetryError):
        reason = exc.reason
        if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
            raise rex.ConnectTimeout(exc) from None
        if isinstance(reason, ResponseError):
            raise rex.RetryError(exc) from None
        if isinstance(reason, Urllib3ProxyError):
            raise rex.ProxyError(exc) from None
        if isinstance(reason, SSLError):
            raise rex.SSLError(exc) from None
        raise rex.ConnectionError(exc) from None
    if isinstance(exc, ClosedPoolError):
        raise rex.ConnectionError(exc) from None
    if isinstance(exc, Urllib3ProxyError):
        raise rex.ProxyError(exc) from None
    if isinstance(exc, SSLError):
        raise rex.SSLError(exc) from None
    if isinstance(exc, ReadTimeoutError):
        raise rex.ReadTimeout(exc) from None
    if isinstance(exc, InvalidHeader):
        raise rex.InvalidHeader(exc) from None
    if isinstance(exc, ProtocolError | OSError):
        raise rex.ConnectionError(exc) from None
    raise exc


_ROUTES_KEPT = 32


class _Route:
    """Where requests to one (scheme, host) go: `opener.urlopen(method, url[prefix:])`,
    a direct host's own connection pool by path (prefix: the length of
    `scheme://host`), or a proxy manager by whole URL (prefix 0). `manager`: a pool
    manager for the same route, for requests that follow redirects elsewhere."""

    __slots__ = ("manager", "opener", "prefix")

    def __init__(self, opener: Any, prefix: int, manager: urllib3.PoolManager) -> None:
        self.opener = opener
        self.prefix = prefix
        self.manager = manager


class PooledHttpClient(HttpClient):
    """A `twilio.http.HttpClient` on urllib3 pools; remembers the last answer's headers
    per thread (the SDK's exceptions drop them, and `Retry-After` is among them)."""

    def __init__(
        self,
        timeout: float | None = None,
        *,
        pool_connections: int = 8,
        pool_maxsize: int = 64,
        logger: logging.Logger = _logger,
    ) -> None:
        super().__init__(logger, False, timeout)
        self._pool_kwargs = {"num_pools": pool_connections, "maxsize": pool_maxsize}
        self._direct: dict[Any, urllib3.PoolManager] = {}
        self._proxies: dict[str, urllib3.PoolManager] = {}
        self._routes: dict[tuple[str, str], _Route] = {}
        self._auth: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    # ----------------------------------------------------------------- environment

    def _route(self, scheme: str, netloc: str) -> _Route:
        """How requests to this host go out, resolved on the first one."""
        route = self._routes.get((scheme, netloc))
        if route is None:
            with self._lock:
                route = self._routes.get((scheme, netloc)) or self._new_route(scheme, netloc)
                if len(self._routes) >= _ROUTES_KEPT:  # never in practice: a few hosts
                    self._drop_routes()
                self._routes[(scheme, netloc)] = route
        return route

    def _new_route(self, scheme: str, netloc: str) -> _Route:
        """Direct (a connection pool of its own, addressed by path) or through the
        environment's proxy for this host; the CA bundle the environment names."""
        url = f"{scheme}://{netloc}/"
        tls: dict[str, Any] = {}
        if scheme == "https":
            bundle = (
                os.environ.get("REQUESTS_CA_BUNDLE")
                or os.environ.get("CURL_CA_BUNDLE")
                or DEFAULT_CA_BUNDLE_PATH
            )
            tls = {"cert_reqs": "CERT_REQUIRED"}
            tls["ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"] = bundle
        proxy = select_proxy(url, get_environ_proxies(url))
        key = json.dumps(tls, sort_keys=True)
        direct = self._direct.get(key)
        if direct is None:
            direct = self._direct[key] = urllib3.PoolManager(**self._pool_kwargs, **tls)
        if proxy is None:
            pool = connection_from_url(
                url, maxsize=self._pool_kwargs["maxsize"], block=False, **tls
            )
            return _Route(pool, len(url) - 1, direct)
        manager = self._proxies.get(proxy + key)
        if manager is None:
            manager = self._proxies[proxy + key] = self._proxy_manager(proxy, tls)
        return _Route(manager, 0, manager)

    def _drop_routes(self) -> None:
        for route in self._routes.values():
            if route.prefix:
                route.opener.close()
        self._routes.clear()

    def _proxy_manager(self, proxy: str, tls: dict[str, Any]) -> urllib3.PoolManager:
        """As requests' `HTTPAdapter.proxy_manager_for`: SOCKS or HTTP(S), with the
        proxy URL's credentials as `Proxy-Authorization`."""
        username, password = get_auth_from_url(proxy)
        if proxy.lower().startswith("socks"):
            from urllib3.contrib.socks import SOCKSProxyManager

            return SOCKSProxyManager(
                proxy, username=username, password=password, **self._pool_kwargs, **tls
            )
        headers = make_headers(proxy_basic_auth=f"{username}:{password}") if username else {}
        return urllib3.ProxyManager(proxy, proxy_headers=headers, **self._pool_kwargs, **tls)

    def _basic(self, auth: tuple[str, str]) -> str:
        header = self._auth.get(auth)
        if header is None:
            raw = f"{auth[0]}:{auth[1]}".encode("latin1")
            header = self._auth[auth] = "Basic " + base64.b64encode(raw).decode()
        return header

    # ----------------------------------------------------------------- the call

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        """One HTTP exchange, as the SDK's `TwilioHttpClient.request` makes it."""
        if timeout is None:
            timeout = self.timeout
        elif timeout <= 0:
            raise ValueError(timeout)
        self._local.headers = {}
        method = method.upper()
        if self.logger.isEnabledFor(logging.INFO):
            self.log_request({"method": method, "url": url, "params": params, "headers": headers})
        sent = {**_DEFAULT_HEADERS, **(headers or {})}
        if auth is not None:
            sent["Authorization"] = self._basic(auth)
        body: bytes | None = None
        content_type = sent.get("Content-Type")
        if content_type in ("application/json", "application/scim+json"):
            if data is not None:
                body = json.dumps(data, allow_nan=False).encode("utf-8")
        elif data:
            body = encode_params(data).encode("utf-8")
            if content_type is None:
                sent["Content-Type"] = "application/x-www-form-urlencoded"
        elif method in ("POST", "PUT", "PATCH"):
            sent["Content-Length"] = "0"
        parts = urlsplit(url)
        query = encode_params(params)
        if query:
            url = f"{url}&{query}" if parts.query else f"{url}?{query}"
        route = self._route(parts.scheme, parts.netloc)
        if allow_redirects:  # the SDK never asks; a redirect may lead to another host
            opener, target = route.manager, url
        else:
            opener, target = route.opener, url[route.prefix :] or "/"
        try:
            answer = opener.urlopen(
                method,
                target,
                body=body,
                headers=sent,
                redirect=allow_redirects,
                assert_same_host=False,
                retries=_REDIRECTS if allow_redirects else _NO_RETRIES,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
                preload_content=True,
                decode_content=True,
            )
        except Exception as exc:  # as requests' HTTPAdapter maps them
            _raise_as_requests(exc)
            raise
        response = Response(
            answer.status, _text(answer.data, answer.headers.get("Content-Type")), answer.headers
        )
        self._local.headers = answer.headers
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info("Response Status Code: %s", answer.status)
            self.logger.info("Response Headers: %s", answer.headers)
        return response

    def last_headers(self) -> Any:
        """The headers of this thread's last answer (empty if it had none)."""
        return getattr(self._local, "headers", None) or {}

    def close(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            self._drop_routes()
            for manager in [*self._direct.values(), *self._proxies.values()]:
                manager.clear()
