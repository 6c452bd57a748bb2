"""Console sessions end on the server: sign-out, idle time and an absolute lifetime; the
`next` of sign-in only ever leads inside the console."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.unit.test_console import _csrf, sign_in


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Move the wall clock forward by `hours` (cookies' timestamps and sessions' records)."""
    offset = [0.0]
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])

    def advance(hours: float) -> None:
        offset[0] += hours * 3600

    return advance


def _cookie(client) -> str:  # type: ignore[no-untyped-def]
    cookie = client.get_cookie("herald_console", path="/console")
    assert cookie is not None
    return cookie.value


def test_a_cookie_captured_before_sign_out_is_refused_after_it(app, tenant) -> None:
    client = app.test_client()
    assert sign_in(client, tenant["api_key"]).status_code == 302
    assert client.get("/console/").status_code == 200
    captured = _cookie(client)
    token = _csrf(client, "/console/")
    assert client.post("/console/logout", data={"csrf_token": token}).status_code == 302
    thief = app.test_client()
    thief.set_cookie("herald_console", captured, path="/console")
    resp = thief.get("/console/")
    assert resp.status_code == 302 and "/console/login" in resp.headers["Location"]


def test_signing_out_ends_only_that_session(app, tenant) -> None:
    first, second = app.test_client(), app.test_client()
    sign_in(first, tenant["api_key"])
    sign_in(second, tenant["api_key"])
    token = _csrf(first, "/console/")
    first.post("/console/logout", data={"csrf_token": token})
    assert first.get("/console/").status_code == 302
    assert second.get("/console/").status_code == 200


def test_a_session_ends_twelve_hours_after_sign_in_whatever_the_activity(
    app, tenant, clock
) -> None:
    client = app.test_client()
    sign_in(client, tenant["api_key"])
    for _hour in range(11):
        clock(1)
        assert client.get("/console/").status_code == 200
    clock(1.1)
    resp = client.get("/console/")
    assert resp.status_code == 302 and "/console/login" in resp.headers["Location"]


def test_an_idle_session_ends(app, tenant, clock) -> None:
    client = app.test_client()
    sign_in(client, tenant["api_key"])
    clock(1.5)
    assert client.get("/console/").status_code == 200  # activity keeps it alive
    clock(2.1)
    assert client.get("/console/").status_code == 302


@pytest.mark.parametrize(
    "target",
    [
        "/console/\r\nSet-Cookie: stolen=1",
        "/console/%0d%0aSet-Cookie:%20stolen=1",
        "/console\nLocation: https://evil.example",
        "//evil.example/console",
        "/\\evil.example",
        "/console\\..\\..\\evil",
        "javascript:alert(1)",
        "https://evil.example/console",
        "/%2F%2Fevil.example",
        "/console/%2F%2Fevil.example",
        "%2F%2Fevil.example",
        "/console/%5Cevil.example",
        "/console/%00",
        "/console/\t",
        "/consolex",
        "",
    ],
)
def test_sign_in_refuses_a_next_that_leads_outside_the_console(app, tenant, target) -> None:
    client = app.test_client()
    token = _csrf(client)
    resp = client.post(
        "/console/login",
        query_string={"next": target},
        data={"api_key": tenant["api_key"], "csrf_token": token},
    )
    assert resp.status_code == 302
    assert resp.headers["Location"] == "/console/"
    assert "stolen" not in resp.headers.get("Set-Cookie", "")


@pytest.mark.parametrize(
    "target", ["/console/messages?status=failed&channel=sms", "/console", "/console/usage"]
)
def test_sign_in_follows_a_next_inside_the_console(app, tenant, target) -> None:
    client = app.test_client()
    token = _csrf(client)
    resp = client.post(
        "/console/login",
        query_string={"next": target},
        data={"api_key": tenant["api_key"], "csrf_token": token},
    )
    assert resp.status_code == 302 and resp.headers["Location"] == target


def test_a_signed_out_page_sends_to_sign_in_and_back(app, tenant) -> None:
    client = app.test_client()
    resp = client.get("/console/messages?status=failed")
    assert resp.status_code == 302
    login = resp.headers["Location"]
    token = _csrf(client)
    back = client.post(login, data={"api_key": tenant["api_key"], "csrf_token": token})
    assert back.headers["Location"] == "/console/messages?status=failed"


def test_without_redis_no_session_is_accepted_and_the_page_says_why(
    app, tenant, monkeypatch
) -> None:
    import redis

    from herald.stack import free_port
    from services.tenancy import sessions

    client = app.test_client()
    sign_in(client, tenant["api_key"])
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    monkeypatch.setattr(sessions, "get_redis", lambda: down)
    resp = client.get("/console/")
    assert resp.status_code == 503 and "Redis" in resp.get_data(as_text=True)
    fresh = app.test_client()
    token = _csrf(fresh)
    resp = fresh.post("/console/login", data={"api_key": tenant["api_key"], "csrf_token": token})
    assert resp.status_code == 503
