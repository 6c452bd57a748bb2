"""Edges a new user tripped on: each is a 4xx in the one JSON error shape, with one code
per meaning, instead of a quiet success, a leaked hint or an HTML page."""

from __future__ import annotations

import json
from datetime import timedelta

from core.ids import iso, new_id, utcnow
from models import Message, session_scope
from tests.conftest import make_tenant

TO = "+12025550143"


def _error(resp, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.get_data(as_text=True)
    return resp.get_json()["error"]


def _count(tenant_id: str) -> int:
    from sqlalchemy import func, select

    with session_scope() as session:
        return session.scalar(
            select(func.count()).select_from(Message).where(Message.tenant_id == tenant_id)
        )


def test_a_cursor_no_page_gave_is_a_400_not_an_empty_page(client, auth) -> None:
    for garbage in ("garbage", "msg_", "msg_" + "Z" * 26, "tpl_" + "0" * 26, "x" * 300):
        error = _error(client.get(f"/v1/messages?cursor={garbage}", headers=auth), 400)
        assert error["code"] == "invalid_fields" and "cursor" in error["fields"]
    assert client.get(f"/v1/messages?cursor={new_id('msg')}", headers=auth).status_code == 200
    error = _error(client.get("/v1/templates?cursor=garbage", headers=auth), 400)
    assert "cursor" in error["fields"]
    assert client.get(f"/v1/templates?cursor={new_id('tpl')}", headers=auth).status_code == 200


def test_a_huge_number_is_malformed_json_without_pythons_advice(client, auth, tenant) -> None:
    body = '{"to": "' + TO + '", "body": "hi", "metadata": {"n": ' + "9" * 5000 + "}}"
    for path in ("/v1/messages", "/v1/contacts"):
        error = _error(
            client.post(path, data=body, headers=auth, content_type="application/json"), 400
        )
        assert error["code"] == "malformed_json"
        assert "sys." not in error["message"] and "int_max_str_digits" not in error["message"]
        assert "4,300 digits" in error["message"]
    assert _count(tenant["tenant_id"]) == 0


def test_json_types_are_taken_as_json_types(client, auth, tenant, dispatched) -> None:
    base = {"to": TO, "provider": "meta"}
    cases = [
        ({**base, "body": "hi http://x.io", "preview_url": "yes"}, "preview_url"),
        ({**base, "body": "hi", "preview_url": 1}, "preview_url"),
        ({**base, "location": {"latitude": "12.5", "longitude": 3.0}}, "location"),
        ({**base, "location": {"latitude": 12.5, "longitude": True}}, "location"),
    ]
    for payload, field in cases:
        error = _error(client.post("/v1/messages", json=payload, headers=auth), 400)
        assert error["code"] == "invalid_fields" and field in error["fields"], error
    assert _count(tenant["tenant_id"]) == 0
    # The read receipt's typing flag: "yes" is not true.
    error = _error(
        client.post(f"/v1/messages/{new_id('msg')}/read", json={"typing": "yes"}, headers=auth),
        400,
    )
    assert "typing" in error["fields"]
    ok = client.post(
        "/v1/messages", json={**base, "location": {"latitude": 12, "longitude": -3.5}}, headers=auth
    )
    assert ok.status_code == 202, ok.get_json()


def test_a_body_declared_as_text_is_a_415(client, auth, tenant) -> None:
    payload = json.dumps({"to": TO, "body": "hi"})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {**auth, **({"Content-Type": content_type} if content_type else {})}
        error = _error(client.post("/v1/messages", data=payload, headers=headers), 415)
        assert error["code"] == "unsupported_media_type"
        assert "application/json" in error["message"]
    assert _count(tenant["tenant_id"]) == 0
    ok = client.post("/v1/messages", data=payload, headers=auth, content_type="application/json")
    assert ok.status_code == 202


def test_send_at_is_at_most_35_days_ahead(client, auth, tenant, dispatched) -> None:
    for when in ("9999-01-01T00:00:00Z", iso(utcnow() + timedelta(days=36))):
        error = _error(
            client.post(
                "/v1/messages", json={"to": TO, "body": "hi", "send_at": when}, headers=auth
            ),
            400,
        )
        assert "send_at" in error["fields"] and "35 days" in error["fields"]["send_at"][0]
        campaign = {
            "name": "far",
            "channel": "sms",
            "body": "hi",
            "send_at": when,
            "recipients": [{"to": TO}],
        }
        error = _error(client.post("/v1/campaigns", json=campaign, headers=auth), 400)
        assert "send_at" in error["fields"]
    assert _count(tenant["tenant_id"]) == 0
    soon = iso(utcnow() + timedelta(days=34))
    ok = client.post("/v1/messages", json={"to": TO, "body": "hi", "send_at": soon}, headers=auth)
    assert ok.status_code == 202 and ok.get_json()["status"] == "scheduled"


def test_a_bad_limit_has_one_code_everywhere(client, auth) -> None:
    codes = set()
    for path in ("/v1/messages", "/v1/templates", "/v1/campaigns"):
        for limit in ("0", "1000", "ten"):
            error = _error(client.get(f"{path}?limit={limit}", headers=auth), 400)
            assert "limit" in error["fields"]
            codes.add(error["code"])
    assert codes == {"invalid_fields"}


def test_an_opted_out_recipient_has_one_code_on_both_providers() -> None:
    from providers import meta, twilio

    assert twilio.PERMANENT[21610] == meta.PERMANENT[131050] == "recipient_opted_out"
    assert "recipient_unsubscribed" not in {*twilio.PERMANENT.values(), *meta.NAMES.values()}


def test_a_204_declares_no_type(client, monkeypatch) -> None:
    from core.config import get_settings

    monkeypatch.setenv("HERALD_ADMIN_TOKEN", "admin-token-0123456789abcdef")
    get_settings.cache_clear()
    try:
        admin = {"Authorization": "Bearer admin-token-0123456789abcdef"}
        tenant = make_tenant("no-type")
        accounts = client.get(f"/admin/v1/tenants/{tenant['tenant_id']}/accounts", headers=admin)
        account_id = accounts.get_json()["data"][0]["id"]
        resp = client.delete(
            f"/admin/v1/tenants/{tenant['tenant_id']}/accounts/{account_id}", headers=admin
        )
        assert resp.status_code == 204 and resp.data == b""
        assert "Content-Type" not in resp.headers
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    finally:
        get_settings.cache_clear()
