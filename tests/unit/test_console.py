"""The console's pages in-process: sign-in, CSRF, tenant isolation, each page renders."""

from __future__ import annotations

import re

import pytest

from models import session_scope
from tests.conftest import make_tenant


def _csrf(client, path: str = "/console/login") -> str:  # type: ignore[no-untyped-def]
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def sign_in(client, api_key: str):  # type: ignore[no-untyped-def]
    token = _csrf(client)
    return client.post("/console/login", data={"api_key": api_key, "csrf_token": token})


@pytest.fixture
def console(app, tenant):  # type: ignore[no-untyped-def]
    client = app.test_client()
    assert sign_in(client, tenant["api_key"]).status_code == 302
    return client


def _send(client, auth: dict[str, str], **body: object) -> dict:  # type: ignore[no-untyped-def]
    resp = client.post(
        "/v1/messages", json={"to": "+12025550143", "body": "hi", **body}, headers=auth
    )
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()


def test_pages_need_a_signed_in_session(client) -> None:
    for path in ("/console/", "/console/messages", "/console/campaigns", "/console/contacts"):
        resp = client.get(path)
        assert resp.status_code == 302 and "/console/login" in resp.headers["Location"]


def test_sign_in_sets_a_secure_http_only_samesite_cookie(app, tenant) -> None:
    client = app.test_client()
    resp = sign_in(client, tenant["api_key"])
    assert resp.status_code == 302 and resp.headers["Location"] == "/console/"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Lax" in cookie
    assert tenant["api_key"] not in cookie  # only the key's id is kept, signed
    assert client.get("/console/").status_code == 200


def test_a_wrong_key_is_refused(app) -> None:
    client = app.test_client()
    resp = sign_in(client, "hk_not-a-key")
    assert resp.status_code == 401 and "not valid" in resp.get_data(as_text=True)


def test_every_form_needs_the_csrf_token(app, tenant) -> None:
    client = app.test_client()
    client.get("/console/login")
    resp = client.post("/console/login", data={"api_key": tenant["api_key"]})
    assert resp.status_code == 400
    signed_in = app.test_client()
    sign_in(signed_in, tenant["api_key"])
    assert signed_in.post("/console/logout").status_code == 400
    assert signed_in.get("/console/").status_code == 200  # still signed in


def test_sign_out(console) -> None:
    token = _csrf(console, "/console/")
    assert console.post("/console/logout", data={"csrf_token": token}).status_code == 302
    assert console.get("/console/").status_code == 302


def test_revoking_the_key_signs_the_session_out(console, tenant) -> None:
    from models import ApiKey
    from services.tenancy.tenants import hash_key

    with session_scope() as session:
        row = session.query(ApiKey).filter_by(key_hash=hash_key(tenant["api_key"])).one()
        row.revoked_at = row.created_at
    assert console.get("/console/").status_code == 302


def test_message_log_and_timeline(console, client, auth, dispatched) -> None:
    sent = _send(client, auth, channel="sms")
    page = console.get("/console/messages").get_data(as_text=True)
    assert sent["id"] in page
    assert sent["id"] in console.get("/console/messages?channel=sms&status=queued").get_data(
        as_text=True
    )
    assert sent["id"] not in console.get("/console/messages?channel=whatsapp").get_data(
        as_text=True
    )
    detail = console.get(f"/console/messages/{sent['id']}")
    html = detail.get_data(as_text=True)
    assert detail.status_code == 200 and "Timeline" in html and '"channel": "sms"' in html
    assert console.get("/console/messages?status=bogus").status_code == 400


def test_tenant_isolation(app, client, auth, dispatched) -> None:
    """Another tenant's message, campaign and contact are invisible, as if missing."""
    other = make_tenant("other")
    theirs = _send(client, {"Authorization": f"Bearer {other['api_key']}"}, body="secret-ish")
    mine = app.test_client()
    sign_in(mine, make_tenant("mine", windows=())["api_key"])
    assert theirs["id"] not in mine.get("/console/messages").get_data(as_text=True)
    assert mine.get(f"/console/messages/{theirs['id']}").status_code == 404
    assert "secret-ish" not in mine.get("/console/phone/+12025550143").get_data(as_text=True)
    campaign = client.post(
        "/v1/campaigns",
        json={
            "name": "theirs",
            "channel": "sms",
            "body": "x",
            "recipients": [{"to": "+12025550143"}],
        },
        headers={"Authorization": f"Bearer {other['api_key']}"},
    ).get_json()
    assert mine.get(f"/console/campaigns/{campaign['id']}").status_code == 404
    assert campaign["name"] not in mine.get("/console/campaigns").get_data(as_text=True)
    token = _csrf(mine, "/console/")
    resp = mine.post(f"/console/campaigns/{campaign['id']}/pause", data={"csrf_token": token})
    assert resp.status_code == 404
    assert "+12025550143" not in mine.get("/console/contacts").get_data(as_text=True)


def test_campaign_page_controls_and_live_fragment(console, client, auth, dispatched) -> None:
    created = client.post(
        "/v1/campaigns",
        json={
            "name": "December",
            "channel": "sms",
            "body": "x",
            "rate": 5,
            "recipients": [{"to": "+12025550143"}, {"to": "+12025550144"}],
        },
        headers=auth,
    ).get_json()
    page = console.get(f"/console/campaigns/{created['id']}").get_data(as_text=True)
    assert 'id="campaign-progress"' in page and "<svg" in page and "rate 5/s" in page
    live = console.get(f"/console/campaigns/{created['id']}/live").get_data(as_text=True)
    assert 'hx-trigger="every 1s"' in live and 'id="count-scheduled">2<' in live
    token = _csrf(console, "/console/")
    resp = console.post(f"/console/campaigns/{created['id']}/pause", data={"csrf_token": token})
    assert resp.status_code == 302
    assert 'id="campaign-status">paused<' in console.get(
        f"/console/campaigns/{created['id']}"
    ).get_data(as_text=True)


def test_overview_draws_charts(console, client, auth, dispatched) -> None:
    _send(client, auth, channel="sms")
    html = console.get("/console/").get_data(as_text=True)
    assert html.count("<svg") >= 2 and "Failure reasons" in html and "Waiting" in html


def test_contacts_search_and_opt_out_toggle(console, tenant) -> None:
    html = console.get("/console/contacts?q=2025550143").get_data(as_text=True)
    assert "+12025550143" in html and "open" in html
    match = re.search(r'action="/console/contacts/(con_[^/]+)/opt-out"', html)
    assert match
    token = _csrf(console, "/console/")
    resp = console.post(
        f"/console/contacts/{match.group(1)}/opt-out", data={"csrf_token": token, "opted_out": "1"}
    )
    assert resp.status_code == 302
    assert "opted out" in console.get("/console/contacts?q=2025550143").get_data(as_text=True)


def test_phone_is_hidden_without_a_sandbox(console, monkeypatch) -> None:
    monkeypatch.setattr("services.reporting.console.sandbox_url", lambda: None)
    assert "Sandbox phone" not in console.get("/console/").get_data(as_text=True)
    assert console.get("/console/phone").status_code == 404


def test_the_message_page_says_what_an_sms_is_billed_as(console, client, auth, dispatched) -> None:
    """Segments and encoding, as the API answers them: a UCS-2 body of 71 characters is two
    segments of 67, and smart encoding's swaps are counted."""
    emoji = _send(client, auth, channel="sms", body="🙂" + "x" * 69)
    assert (emoji["segments"], emoji["encoding"]) == (2, "UCS-2")
    html = console.get(f"/console/messages/{emoji['id']}").get_data(as_text=True)
    assert "Billed as</dt><dd>2 segments, UCS-2" in html
    curly = _send(client, auth, channel="sms", body="It\u2019s ready")
    html = console.get(f"/console/messages/{curly['id']}").get_data(as_text=True)
    assert "Billed as</dt><dd>1 segment, GSM-7 (smart encoding replaced 1 character)" in html


def test_a_message_page_links_its_sms_fallback_both_ways(console, client, auth, dispatched) -> None:
    from sqlalchemy import update

    from models import Message
    from services.messages.failover import sweep_failovers

    sent = _send(client, auth, failover={"after_seconds": 60})
    page = console.get(f"/console/messages/{sent['id']}").get_data(as_text=True)
    assert "SMS fallback" in page and "not delivered by" in page
    with session_scope() as session:  # Meta said: not on WhatsApp
        session.execute(
            update(Message)
            .where(Message.id == sent["id"])
            .values(status="failed", error_code="undeliverable", provider_error_code="131026")
        )
    made = sweep_failovers()  # (other tests' pending rows may be settled too)
    with session_scope() as session:
        (fallback,) = [f for f in made if session.get(Message, f).failover_of == sent["id"]]
    page = console.get(f"/console/messages/{sent['id']}").get_data(as_text=True)
    assert f'href="/console/messages/{fallback}"' in page and "Fell back to SMS" in page
    page = console.get(f"/console/messages/{fallback}").get_data(as_text=True)
    assert f'href="/console/messages/{sent["id"]}"' in page and "SMS fallback of" in page
