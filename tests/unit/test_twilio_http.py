"""The Twilio client's HTTP transport (providers/http.py): what goes on the wire is what
the SDK's own requests-based client sent, keep-alive pooling, the environment's proxy
and CA settings read once per host, and failures classified as before."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import urllib3
from twilio.http.http_client import TwilioHttpClient

from providers import ErrorKind, OutboundMessage, ProviderError
from providers.base import AccountCredentials
from providers.http import PooledHttpClient
from providers.twilio import TwilioProvider

SID = "AC" + "b2" * 16
MESSAGE = {
    "sid": "SM" + "c3" * 16,
    "status": "queued",
    "price": None,
    "price_unit": "USD",
    "date_created": "Sun, 29 Nov 2026 07:00:00 +0000",
}


class Recorder(ThreadingHTTPServer):
    """An HTTP/1.1 keep-alive server recording each request with its connection."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.mode = "ok"  # ok | 429 | drop | hang
        self.url = f"http://127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        )
        if self.server.mode == "drop":  # read the request, then close without a word
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.server.mode == "hang":
            time.sleep(1.5)
            return
        status, payload, extra = 201, MESSAGE, {}
        if self.command == "GET":
            status, payload = 200, {"messages": [], "next_page_uri": None}
        if self.server.mode == "429":
            status, extra = 429, {"Retry-After": "7"}
            payload = {"code": 20429, "message": "Too Many Requests", "status": 429}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def provider(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> Iterator[TwilioProvider]:
    from core.config import get_settings

    monkeypatch.setenv("TWILIO_API_BASE", recorder.url)
    monkeypatch.setenv("HERALD_HTTP_TIMEOUT", "0.5")
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    get_settings.cache_clear()
    yield TwilioProvider()
    monkeypatch.undo()
    get_settings.cache_clear()


def _account() -> AccountCredentials:
    return AccountCredentials(
        id="pa_1",
        tenant_id="t_1",
        provider="twilio",
        external_id=SID,
        settings={"sms_from": "+12025550100"},
        secrets={"auth_token": "secret-token"},
    )


def _message(**fields: Any) -> OutboundMessage:
    return OutboundMessage(
        herald_id="msg_1",
        channel="sms",
        to="+12025550143",
        body="Hello & welcome",
        status_callback="http://herald.example/webhooks/twilio/status?message_id=msg_1",
        **fields,
    )


def test_the_provider_sends_through_the_pooled_client() -> None:
    assert isinstance(TwilioProvider()._http, PooledHttpClient)


def test_the_wire_is_what_the_sdks_requests_client_sent(recorder: Recorder, provider) -> None:
    """Same method, path, query, form body and headers (but requests' own User-Agent
    default, which the SDK overrides anyway) as `TwilioHttpClient` over requests."""
    from twilio.rest import Client

    message = _message(media_urls=["https://a.example/1.jpg", "https://a.example/2.jpg"])
    provider.send(_account(), message)
    ours = recorder.requests[-1]
    theirs_client = Client(SID, "secret-token", http_client=TwilioHttpClient(timeout=5))
    theirs_client.api.base_url = recorder.url
    theirs_client.messages.create(**TwilioProvider.build_params(_account(), message))
    theirs_client.messages.list(to="+12025550143", limit=5)
    provider.client(_account()).messages.list(to="+12025550143", limit=5)
    theirs, listed_theirs, listed_ours = recorder.requests[-3:]
    for a, b in ((ours, theirs), (listed_ours, listed_theirs)):
        assert (a["method"], a["path"], a["body"]) == (b["method"], b["path"], b["body"])
        for header in ("Authorization", "Content-Type", "Accept", "User-Agent", "Accept-Charset"):
            assert a["headers"].get(header) == b["headers"].get(header), header
    assert b"MediaUrl=https%3A%2F%2Fa.example%2F1.jpg&MediaUrl=" in ours["body"]
    assert listed_ours["path"].endswith("?To=%2B12025550143&PageSize=5")


def test_connections_are_kept_alive_and_pooled(recorder: Recorder, provider) -> None:
    for _ in range(5):
        result = provider.send(_account(), _message())
    assert result.provider_message_id == MESSAGE["sid"]
    assert len(recorder.requests) == 5
    assert recorder.connections == 1


def test_rate_limited_answer_keeps_its_retry_after(recorder: Recorder, provider) -> None:
    recorder.mode = "429"
    with pytest.raises(ProviderError) as caught:
        provider.send(_account(), _message())
    assert caught.value.kind is ErrorKind.RATE_LIMITED
    assert caught.value.retry_after == 7.0
    assert len(recorder.requests) == 1  # never retried in the call


def test_a_refused_connection_is_transient_and_retried_in_call(provider, monkeypatch) -> None:
    from herald.stack import free_port

    provider.client(_account()).api.base_url = f"http://127.0.0.1:{free_port()}"
    attempts: list[int] = []
    create = provider._http.request

    def counting(*args: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        return create(*args, **kwargs)

    monkeypatch.setattr(provider._http, "request", counting)
    with pytest.raises(ProviderError) as caught:
        provider.send(_account(), _message())
    assert caught.value.kind is ErrorKind.TRANSIENT
    assert len(attempts) == 3  # tenacity's in-call retries, as before


@pytest.mark.parametrize("mode", ["drop", "hang"])
def test_a_request_that_went_out_unanswered_is_ambiguous(recorder: Recorder, provider, mode):
    """Dropped after sending, or no answer within the timeout: it may have been taken,
    so it is settled first and never resent in the call."""
    recorder.mode = mode
    with pytest.raises(ProviderError) as caught:
        provider.send(_account(), _message())
    assert caught.value.kind is ErrorKind.AMBIGUOUS
    assert len(recorder.requests) == 1


def test_proxies_and_ca_bundle_come_from_the_environment_once_per_host(monkeypatch) -> None:
    import providers.http as http

    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "sandbox.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    reads: list[str] = []
    original = http.get_environ_proxies

    def counting(url: str, no_proxy: str | None = None) -> dict[str, str]:
        reads.append(url)
        return original(url, no_proxy=no_proxy)

    monkeypatch.setattr(http, "get_environ_proxies", counting)
    client = PooledHttpClient(5)
    for _ in range(3):
        proxied = client._route("https", "api.twilio.com").opener
    assert isinstance(proxied, urllib3.ProxyManager)
    assert proxied.proxy.host == "proxy.example"
    assert proxied.proxy_headers["proxy-authorization"].startswith("Basic ")
    assert proxied.connection_pool_kw["ca_certs"] == "/etc/ssl/certs/ca-certificates.crt"
    direct = client._route("https", "sandbox.example").opener
    assert isinstance(direct, urllib3.HTTPSConnectionPool)
    assert direct.ca_certs == "/etc/ssl/certs/ca-certificates.crt"
    assert reads == ["https://api.twilio.com/", "https://sandbox.example/"]


def test_sdk_logging_is_not_formatted_when_nobody_reads_it(recorder, provider, monkeypatch):
    logger = logging.getLogger("twilio.http_client")
    monkeypatch.setattr(logger, "level", logging.WARNING)
    called: list[object] = []
    monkeypatch.setattr(provider._http, "log_request", lambda kwargs: called.append(kwargs))
    provider.send(_account(), _message())
    assert called == []
