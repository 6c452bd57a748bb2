"""Inbound media and template paging cannot be pointed at Herald's own network or leak
an account's credentials: every media hop is https (or a configured provider base),
resolved once, judged and pinned; credentials go only to the provider's own host; a
next page on another host is refused."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from core.errors import HeraldError
from providers.base import AccountCredentials
from services.content import media
from services.content.templates import TemplateSyncError
from services.reporting import outbound

TOKEN = "meta-secret-token"
TWILIO_SID = "AC" + "1" * 32
TWILIO_TOKEN = "twilio-secret-token"


class Listener:
    """A loopback HTTP server that records every request and answers with `answer`."""

    def __init__(self, answer: Callable[[Request], Response] | None = None) -> None:
        self.requests: list[Request] = []
        self.answer = answer or (lambda request: Response(b"x", 200))

        def app(environ: Any, start_response: Any) -> Any:
            request = Request(environ)
            self.requests.append(request)
            return self.answer(request)(environ, start_response)

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()

    def authorizations(self) -> list[str | None]:
        return [r.headers.get("Authorization") for r in self.requests]


@pytest.fixture
def listeners() -> Iterator[Callable[..., Listener]]:
    started: list[Listener] = []

    def start(answer: Callable[[Request], Response] | None = None) -> Listener:
        started.append(Listener(answer))
        return started[-1]

    yield start
    for listener in started:
        listener.close()


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Set environment variables for one test; the cached settings follow."""
    from core.config import get_settings

    def apply(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()


def names(monkeypatch: pytest.MonkeyPatch, table: dict[str, str]) -> None:
    """A fake resolver: the names in `table` answer its address, IP literals themselves."""

    def resolve(host: str, port: int) -> list[str]:
        if host in table:
            return [table[host]]
        if host.replace(".", "").isdigit() or ":" in host:
            return [host]
        raise OSError("unknown name")

    monkeypatch.setattr(outbound, "resolve", resolve)


def meta_source() -> media.MediaSource:
    account = AccountCredentials(
        id="acc_1",
        tenant_id="ten_1",
        provider="meta",
        external_id="1234",
        settings={},
        secrets={"access_token": TOKEN},
    )
    return media.MediaSource("meta", "meta-media:555", account, None)


def graph_naming(url: str) -> Callable[[Request], Response]:
    """A Graph that answers `url` as the media's download URL."""

    def answer(request: Request) -> Response:
        body = {"url": url, "mime_type": "image/png", "file_size": 1}
        return Response(json.dumps(body), 200, content_type="application/json")

    return answer


def private_off(settings: Callable[..., None], graph: Listener) -> None:
    settings(META_GRAPH_BASE=graph.url, HERALD_ALLOW_PRIVATE_CALLBACKS="0")


def refused(source: media.MediaSource) -> HeraldError:
    with pytest.raises(HeraldError) as caught:
        media.open_media(source)
    assert caught.value.status == 502
    return caught.value


def test_a_graph_answer_naming_loopback_is_refused(settings: Any, listeners: Any) -> None:
    inside = listeners()
    graph = listeners(graph_naming(f"{inside.url}/admin"))
    private_off(settings, graph)
    refused(meta_source())
    assert inside.requests == []  # nothing reached it, the token least of all
    assert graph.authorizations() == [f"Bearer {TOKEN}"]  # Graph itself got it


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.7/media",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:127.0.0.1]/media",
        "https://inside.example/media",  # a public-looking name for a private address
    ],
)
def test_a_graph_answer_naming_an_internal_address_is_refused(
    settings: Any, listeners: Any, monkeypatch: Any, url: str
) -> None:
    names(monkeypatch, {"inside.example": "10.1.2.3"})
    connected: list[str] = []
    monkeypatch.setattr(media, "PinnedTransport", lambda target: connected.append(target.host))
    graph = listeners(graph_naming(url))
    private_off(settings, graph)
    why = str(refused(meta_source()))
    assert "non-public" in why or "embedding" in why
    assert connected == []


def test_a_plain_http_media_url_is_refused(settings: Any, listeners: Any, monkeypatch: Any) -> None:
    looked_up: list[str] = []
    monkeypatch.setattr(outbound, "resolve", lambda host, port: looked_up.append(host) or [])
    graph = listeners(graph_naming("http://cdn.example/media"))
    private_off(settings, graph)
    assert "not https" in str(refused(meta_source()))
    assert looked_up == []


class Body(httpx.SyncByteStream):
    """A streamed body (an in-memory one would count as read already)."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"png"


class Hops:
    """Stands in for the network past the judge: records each hop's URL and headers."""

    def __init__(self, answers: dict[str, httpx.Response]) -> None:
        self.answers = answers
        self.seen: list[tuple[str, str | None, str]] = []

    def transport(self, target: outbound.Target) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            url = str(request.url)
            self.seen.append(
                (url, request.headers.get("Authorization"), ",".join(target.addresses))
            )
            return self.answers.get(url, httpx.Response(200, stream=Body()))

        return httpx.MockTransport(handle)


def moved(to: str) -> httpx.Response:
    return httpx.Response(302, headers={"Location": to})


def test_a_redirect_to_another_public_host_is_followed_without_the_token(
    settings: Any, listeners: Any, monkeypatch: Any
) -> None:
    cdn = "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=555"
    names(monkeypatch, {"lookaside.fbsbx.com": "157.240.1.1", "elsewhere.example": "93.184.216.34"})
    hops = Hops({cdn: moved("https://elsewhere.example/file.png")})
    monkeypatch.setattr(media, "PinnedTransport", hops.transport)
    graph = listeners(graph_naming(cdn))
    private_off(settings, graph)
    stream = media.open_media(meta_source())
    assert b"".join(stream.chunks) == b"png"
    assert hops.seen == [
        (cdn, f"Bearer {TOKEN}", "157.240.1.1"),  # Meta's CDN takes the token
        ("https://elsewhere.example/file.png", None, "93.184.216.34"),
    ]


def test_the_token_goes_to_no_other_host_even_on_the_first_hop(
    settings: Any, listeners: Any, monkeypatch: Any
) -> None:
    names(monkeypatch, {"files.example": "93.184.216.34"})
    hops = Hops({})
    monkeypatch.setattr(media, "PinnedTransport", hops.transport)
    graph = listeners(graph_naming("https://files.example/m"))
    private_off(settings, graph)
    b"".join(media.open_media(meta_source()).chunks)
    assert hops.seen == [("https://files.example/m", None, "93.184.216.34")]


@pytest.mark.parametrize(
    "to", ["https://inside.example/x", "https://127.0.0.1/x", "http://x.example/"]
)
def test_a_redirect_from_an_allowed_host_to_inside_is_refused(
    settings: Any, listeners: Any, monkeypatch: Any, to: str
) -> None:
    cdn = "https://lookaside.fbsbx.com/m"
    names(monkeypatch, {"lookaside.fbsbx.com": "157.240.1.1", "inside.example": "127.0.0.1"})
    hops = Hops({cdn: moved(to)})
    monkeypatch.setattr(media, "PinnedTransport", hops.transport)
    graph = listeners(graph_naming(cdn))
    private_off(settings, graph)
    refused(meta_source())
    assert [url for url, _, _ in hops.seen] == [cdn]


def test_a_redirect_from_the_graph_base_to_a_loopback_listener_is_refused(
    settings: Any, listeners: Any
) -> None:
    inside = listeners()
    graph = listeners()
    graph.answer = lambda request: (
        Response(status=302, headers={"Location": f"{inside.url}/admin"})
        if request.path == "/file"
        else graph_naming(f"{graph.url}/file")(request)
    )
    private_off(settings, graph)
    refused(meta_source())
    assert inside.requests == []
    assert [r.path for r in graph.requests][-1] == "/file"


def test_a_public_name_is_connected_to_at_the_address_judged(
    settings: Any, listeners: Any, monkeypatch: Any
) -> None:
    """Pinned: the name is never looked up again, the Host header keeps it."""
    cdn = listeners(lambda request: Response(b"bytes", 200, content_type="image/png"))
    graph = listeners(graph_naming(f"http://cdn.example:{cdn.port}/m"))
    names(monkeypatch, {"cdn.example": "127.0.0.1"})
    settings(META_GRAPH_BASE=graph.url, HERALD_ALLOW_PRIVATE_CALLBACKS="1")
    assert b"".join(media.open_media(meta_source()).chunks) == b"bytes"
    assert [r.host for r in cdn.requests] == [f"cdn.example:{cdn.port}"]
    assert cdn.authorizations() == [None]  # not Meta's host: no token


# ---------------------------------------------------------------- template paging


def twilio_account() -> AccountCredentials:
    return AccountCredentials(
        id="acc_2",
        tenant_id="ten_1",
        provider="twilio",
        external_id=TWILIO_SID,
        settings={},
        secrets={"auth_token": TWILIO_TOKEN},
    )


def test_twilio_sync_refuses_a_next_page_on_another_host(settings: Any, listeners: Any) -> None:
    from services.content.template_sync import fetch_twilio_contents

    other = listeners(
        lambda request: Response('{"contents": [], "meta": {"key": "contents"}}', 200)
    )

    def first(request: Request) -> Response:
        body = {
            "contents": [],
            "meta": {
                "key": "contents",
                "next_page_url": f"{other.url}/v1/ContentAndApprovals?Page=1",
            },
        }
        return Response(json.dumps(body), 200, content_type="application/json")

    content = listeners(first)
    settings(TWILIO_CONTENT_BASE=content.url)
    with pytest.raises(TemplateSyncError, match="another host"):
        fetch_twilio_contents(twilio_account())
    assert len(content.requests) == 1 and content.authorizations()[0]
    assert other.requests == []  # the Basic credentials never went there


def test_twilio_sync_pages_on_its_own_base(settings: Any, listeners: Any) -> None:
    from services.content.template_sync import fetch_twilio_contents

    def pages(request: Request) -> Response:
        item = {"sid": "HX" + "a" * 32, "friendly_name": "x", "language": "en"}
        meta: dict[str, Any] = {"key": "contents"}
        if request.args.get("Page") != "1":
            meta["next_page_url"] = f"{content.url}/v1/ContentAndApprovals?Page=1&PageSize=50"
            item["sid"] = "HX" + "b" * 32
        body = {"contents": [item], "meta": meta}
        return Response(json.dumps(body), 200, content_type="application/json")

    content = listeners(pages)
    settings(TWILIO_CONTENT_BASE=content.url)
    assert [i["sid"][:3] for i in fetch_twilio_contents(twilio_account())] == ["HXb", "HXa"]
    assert len(content.requests) == 2


def test_meta_sync_refuses_a_next_page_on_another_host(settings: Any, listeners: Any) -> None:
    from services.content.template_sync import fetch_meta_templates

    def first(request: Request) -> Response:
        body = {
            "data": [],
            "paging": {"cursors": {"after": "AB"}, "next": "https://evil.example/v1/next"},
        }
        return Response(json.dumps(body), 200, content_type="application/json")

    graph = listeners(first)
    settings(META_GRAPH_BASE=graph.url)
    account = AccountCredentials(
        id="acc_3",
        tenant_id="ten_1",
        provider="meta",
        external_id="1234",
        settings={"waba_id": "42"},
        secrets={"access_token": TOKEN},
    )
    with pytest.raises(TemplateSyncError, match="another host"):
        fetch_meta_templates(account)
    assert len(graph.requests) == 1


def test_a_media_url_on_another_host_gets_no_token_even_with_private_allowed(
    settings: Any, listeners: Any
) -> None:
    """The Graph answer names where the bytes are, not who may have the token."""
    files = listeners(lambda request: Response(b"bytes", 200, content_type="image/png"))
    graph = listeners(graph_naming(f"{files.url}/m"))
    settings(META_GRAPH_BASE=graph.url, HERALD_ALLOW_PRIVATE_CALLBACKS="1")
    assert b"".join(media.open_media(meta_source()).chunks) == b"bytes"
    assert files.authorizations() == [None]
