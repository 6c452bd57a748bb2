"""What a hostile or careless client found (issue 10): each case answered with a
4xx in the route's error shape, never a 500, and the rules that keep tenants,
tokens, quotas and enqueues honest."""

from __future__ import annotations

import io
import time

import jwt
import pytest
from sqlalchemy import select, update

from models import Message, Tenant, new_session, session_scope
from tests.conftest import make_tenant

TO = "+12025550143"
JWT_SECRET = "test-jwt-secret-0123456789abcdef0123"
SEED_ROUTES = (
    "/api/twilio/message",
    "/api/whatsapp/send",
    "/api/v1/whatsapp/send-message",
    "/api/v1/whatsapp/send-template",
)
DEEP = "[" * 100_000


def _error(resp, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:300])
    error = resp.get_json()["error"]
    assert error["code"] and error["message"]
    return error


# ---------------------------------------------------------------- item 3: no 500 on any input


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/contacts", "/v1/campaigns"])
def test_deeply_nested_json_is_a_400(client, auth, path: str) -> None:
    for data in (DEEP, '{"a":' * 50_000, '{"to": "+12025550143", "metadata": ' + "[" * 500):
        resp = client.post(path, data=data, headers=auth, content_type="application/json")
        assert _error(resp, 400)["code"] == "malformed_json"


@pytest.mark.parametrize("path", SEED_ROUTES)
def test_deeply_nested_json_on_the_seed_routes_is_a_4xx_in_their_shape(
    client, auth, path: str
) -> None:
    for headers in (auth, {}):
        resp = client.post(path, data=DEEP, headers=headers, content_type="application/json")
        assert resp.status_code == 400, resp.get_data(as_text=True)[:300]
        body = resp.get_json()
        if path.startswith("/api/v1/"):  # seed 003: Meta's envelope
            assert body["type"] == "3" and body["data"] is None and "JSON" in body["message"]
        else:  # seeds 000 and 002: {"error": "<text>"}
            assert isinstance(body["error"], str) and "JSON" in body["error"]


@pytest.mark.parametrize("bad", ["\\u0000", "\\ud800", "a\\udfffb", "x\\u0000y"])
def test_nul_or_lone_surrogate_in_text_is_a_400(client, auth, tenant, dispatched, bad) -> None:
    message = f'{{"to": "{TO}", "body": "{bad}"}}'
    resp = client.post("/v1/messages", data=message, headers=auth, content_type="application/json")
    assert _error(resp, 400)["code"] == "malformed_json"
    contact = f'{{"phone": "+12025550199", "name": "{bad}"}}'
    resp = client.post("/v1/contacts", data=contact, headers=auth, content_type="application/json")
    _error(resp, 400)
    seed = f'{{"toPhoneNumber": "{TO}", "messageBody": "{bad}"}}'
    resp = client.post(
        "/api/whatsapp/send", data=seed, headers=auth, content_type="application/json"
    )
    assert resp.status_code == 400 and resp.get_json()["error"]
    with session_scope() as session:
        assert not session.scalars(
            select(Message).where(Message.tenant_id == tenant["tenant_id"])
        ).first()
    assert dispatched == []


def test_the_send_message_task_refuses_nul_too(tenant) -> None:
    from core.errors import InvalidRequest
    from services.content.schemas import load_message_request

    with pytest.raises(InvalidRequest):
        load_message_request({"to": TO, "body": "a\x00b"})
    with pytest.raises(InvalidRequest):
        load_message_request({"to": TO, "body": "hi", "metadata": {"k\x00": "v"}})


def test_nan_and_infinity_are_not_json(client, auth) -> None:
    for number in ("NaN", "Infinity", "-Infinity", "1e999"):
        message = f'{{"to": "{TO}", "body": "x", "metadata": {{"n": {number}}}}}'
        resp = client.post(
            "/v1/messages", data=message, headers=auth, content_type="application/json"
        )
        assert _error(resp, 400)["code"] == "malformed_json", number


def test_nul_in_the_url_is_a_400(client, auth) -> None:
    for url in (
        "/v1/messages?to=%00",
        "/v1/messages?cursor=a%00",
        "/v1/messages/msg_%00",
        "/v1/contacts/a%00",
        "/v1/campaigns/cmp_%00",
        "/api/whatsapp/status/SM%00",
    ):
        resp = client.get(url, headers=auth)
        assert resp.status_code == 400 and resp.is_json, (url, resp.status_code)


def test_nul_in_a_urlencoded_form_is_a_400(client) -> None:
    for path in ("/webhooks/twilio/status", "/webhooks/twilio/inbound"):
        resp = client.post(
            path,
            data={"AccountSid": "AC\x00", "MessageSid": "SM1", "MessageStatus": "sent"},
            headers={"X-Twilio-Signature": "x"},
        )
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_form"


def _upload(client, auth, csv: bytes):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/campaigns",
        data={
            "campaign": '{"name": "csv", "channel": "sms", "body": "Offer!"}',
            "file": (io.BytesIO(csv), "r.csv"),
        },
        headers=auth,
        content_type="multipart/form-data",
    )


def test_campaign_csv_that_is_not_utf8_is_a_400(client, auth, dispatched) -> None:
    resp = _upload(client, auth, "to,name\n+12025550101,Jos\u00e9\n".encode("latin-1"))
    assert _error(resp, 400)["code"] == "invalid_csv"


def test_campaign_csv_field_over_the_limit_is_a_400(client, auth, dispatched) -> None:
    resp = _upload(client, auth, b"to,name\n+12025550101," + b"x" * 200_000 + b"\n")
    assert _error(resp, 400)["code"] == "invalid_csv"


def test_campaign_csv_with_nul_is_a_400(client, auth, dispatched) -> None:
    resp = _upload(client, auth, b"to,name\n+12025550101,a\x00b\n")
    assert _error(resp, 400)["code"] == "invalid_csv"


def test_campaign_form_json_with_nul_is_a_400(client, auth, dispatched) -> None:
    resp = client.post(
        "/v1/campaigns",
        data={
            "campaign": '{"name": "a\\u0000", "channel": "sms", "body": "Offer!"}',
            "file": (io.BytesIO(b"to\n+12025550101\n"), "r.csv"),
        },
        headers=auth,
        content_type="multipart/form-data",
    )
    assert _error(resp, 400)["code"] == "malformed_json"


# ---------------------------------------------------------------- item 6: JWTs


def _token(claims: dict, secret: str = JWT_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def _send_with(client, token: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/messages", json={"to": TO, "body": "hi"}, headers={"Authorization": f"Bearer {token}"}
    )


def test_jwt_needs_exp_and_a_fresh_iat(client, tenant, dispatched) -> None:
    now = int(time.time())
    tid = tenant["tenant_id"]
    assert (
        _send_with(client, _token({"tenant": tid, "iat": now, "exp": now + 60})).status_code == 202
    )
    refused = [
        {"tenant": tid},  # no exp: valid forever
        {"tenant": tid, "iat": now},  # still no exp
        {"tenant": tid, "exp": now + 60},  # no iat: its age cannot be checked
        {"tenant": tid, "iat": now - 86400 * 30, "exp": now + 86400 * 365},  # too old
        {"tenant": tid, "iat": now - 600, "exp": now - 120},  # expired
        {"tenant": tid, "iat": now + 3600, "exp": now + 7200},  # issued in the future
        {"tenant": [tid], "iat": now, "exp": now + 60},  # not a string
        {"tenant": 7, "iat": now, "exp": now + 60},
        {"tenant": "ten_\x00", "iat": now, "exp": now + 60},
        {"tenant": tid, "iat": "yesterday", "exp": now + 60},
    ]
    for claims in refused:
        _error(_send_with(client, _token(claims)), 401)
    unsigned = _token({"tenant": tid, "iat": now, "exp": now + 60}, "", "none")
    _error(_send_with(client, unsigned), 401)


def test_jwt_max_age_is_configurable(client, tenant, dispatched, monkeypatch) -> None:
    from core.config import ConfigError, get_settings, load_settings

    now = int(time.time())
    old = _token({"tenant": tenant["tenant_id"], "iat": now - 7200, "exp": now + 60})
    monkeypatch.setenv("HERALD_JWT_MAX_AGE_SECONDS", "3600")
    get_settings.cache_clear()
    try:
        _error(_send_with(client, old), 401)
        monkeypatch.setenv("HERALD_JWT_MAX_AGE_SECONDS", "10800")
        get_settings.cache_clear()
        assert _send_with(client, old).status_code == 202
    finally:
        monkeypatch.delenv("HERALD_JWT_MAX_AGE_SECONDS")
        get_settings.cache_clear()
    assert load_settings({}).jwt_max_age_seconds == 86400
    with pytest.raises(ConfigError, match="HERALD_JWT_MAX_AGE_SECONDS"):
        load_settings({"HERALD_JWT_MAX_AGE_SECONDS": "0"})


# ---------------------------------------------------------------- item 7: savepoints


def test_a_savepoint_rollback_keeps_earlier_enqueues(tenant, dispatched) -> None:
    from services.messages.dispatch import enqueue_after_commit

    session = new_session()
    try:
        session.execute(select(1))
        enqueue_after_commit(session, ["msg_before"], "herald.send")
        try:
            with session.begin_nested():
                enqueue_after_commit(session, ["msg_inside"], "herald.send")
                raise RuntimeError("the savepoint fails")
        except RuntimeError:
            pass
        enqueue_after_commit(session, ["msg_after"], "herald.send")
        session.commit()
    finally:
        session.close()
    assert [i for i, _ in dispatched] == ["msg_before", "msg_after"]


def test_the_outermost_rollback_still_clears_every_enqueue(tenant, dispatched) -> None:
    from services.messages.dispatch import enqueue_after_commit

    session = new_session()
    try:
        session.execute(select(1))
        enqueue_after_commit(session, ["msg_gone"], "herald.send")
        with session.begin_nested():
            enqueue_after_commit(session, ["msg_gone_too"], "herald.send")
        session.rollback()
        session.execute(select(1))
        session.commit()
    finally:
        session.close()
    assert dispatched == []


def test_a_session_closed_without_commit_forgets_its_enqueues(tenant, dispatched) -> None:
    from services.messages.dispatch import enqueue_after_commit

    session = new_session()
    session.execute(select(1))
    enqueue_after_commit(session, ["msg_closed"], "herald.send")
    session.close()
    session.execute(select(1))
    session.commit()
    session.close()
    assert dispatched == []


# ---------------------------------------------------------------- item 8: quota


def test_quota_is_taken_only_for_a_stored_message(client, dispatched, monkeypatch) -> None:
    """Two requests race with one Idempotency-Key: the loser's insert fails and it
    answers with the winner's message, so it must not have spent the quota."""
    tenant = make_tenant("quota-race")
    with session_scope() as session:
        session.execute(
            update(Tenant).where(Tenant.id == tenant["tenant_id"]).values(hourly_limit=2)
        )
    auth = {"Authorization": f"Bearer {tenant['api_key']}", "Idempotency-Key": "race"}
    first = client.post("/v1/messages", json={"to": TO, "body": "once"}, headers=auth)
    assert first.status_code == 202
    # A replay takes the loser's path: its insert is skipped on the taken key.
    replay = client.post("/v1/messages", json={"to": TO, "body": "once"}, headers=auth)
    assert replay.status_code == 200 and replay.get_json()["id"] == first.get_json()["id"]
    second = client.post(
        "/v1/messages",
        json={"to": TO, "body": "second"},
        headers={"Authorization": auth["Authorization"]},
    )
    assert second.status_code == 202, second.get_json()


def test_a_refused_quota_stores_nothing(client, dispatched) -> None:
    tenant = make_tenant("quota-full")
    with session_scope() as session:
        session.execute(
            update(Tenant).where(Tenant.id == tenant["tenant_id"]).values(hourly_limit=1)
        )
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    assert (
        client.post("/v1/messages", json={"to": TO, "body": "a"}, headers=auth).status_code == 202
    )
    refused = client.post("/v1/messages", json={"to": TO, "body": "b"}, headers=auth)
    assert _error(refused, 429)["code"] == "rate_limited"
    with session_scope() as session:
        rows = session.scalars(
            select(Message.body).where(Message.tenant_id == tenant["tenant_id"])
        ).all()
    assert rows == ["a"] and len(dispatched) == 1


# ---------------------------------------------------------------- item 9: phone numbers


def test_letters_in_a_phone_number_are_refused(client, auth, dispatched) -> None:
    from services.content.phones import normalize_e164

    assert normalize_e164("+1202abc0143") is None
    assert normalize_e164("+1-800-FLOWERS") is None
    assert normalize_e164("+12025550143 ext. 12") is None
    err = _error(
        client.post("/v1/messages", json={"to": "+1202abc0143", "body": "x"}, headers=auth), 400
    )
    assert "letter" in " ".join(err["fields"]["to"]).lower()
    contact = client.post("/v1/contacts", json={"phone": "+1202abc0143"}, headers=auth)
    assert "letter" in " ".join(_error(contact, 400)["fields"]["phone"]).lower()


def test_an_unassigned_number_is_not_valid_for_its_country(client, auth) -> None:
    err = _error(
        client.post("/v1/messages", json={"to": "+15551234567", "body": "x"}, headers=auth), 400
    )
    text = " ".join(err["fields"]["to"]).lower()
    assert "not a valid number for its country" in text and "international format" not in text
    err = _error(
        client.post("/v1/messages", json={"to": "12025550143", "body": "x"}, headers=auth), 400
    )
    assert "international format" in " ".join(err["fields"]["to"])
    contact = client.post("/v1/contacts", json={"phone": "+15551234567"}, headers=auth)
    text = " ".join(_error(contact, 400)["fields"]["phone"]).lower()
    assert "not a valid number for its country" in text


# ---------------------------------------------------------------- item 10: legacy tenant


@pytest.fixture
def legacy_tenant(monkeypatch):  # type: ignore[no-untyped-def]
    from core.config import get_settings

    tenant = make_tenant("legacy")
    monkeypatch.setenv("HERALD_LEGACY_TENANT", tenant["tenant_id"])
    get_settings.cache_clear()
    yield tenant
    monkeypatch.delenv("HERALD_LEGACY_TENANT")
    get_settings.cache_clear()


def test_unauthenticated_seed_callers_read_only_seed_messages(
    client, legacy_tenant, dispatched
) -> None:
    keyed = {"Authorization": f"Bearer {legacy_tenant['api_key']}"}
    private = client.post("/v1/messages", json={"to": TO, "body": "private"}, headers=keyed)
    assert private.status_code == 202
    private_id = private.get_json()["id"]
    resp = client.get(f"/api/whatsapp/status/{private_id}")
    assert resp.status_code == 404 and resp.get_json()["error"]
    # With the tenant's key, the seed route reads every message of the tenant.
    assert client.get(f"/api/whatsapp/status/{private_id}", headers=keyed).status_code == 200
    seed = client.post("/api/whatsapp/send", json={"toPhoneNumber": TO, "messageBody": "seed"})
    seed_id = seed.get_json()["messageId"]
    assert client.get(f"/api/whatsapp/status/{seed_id}").status_code == 200
    # ... and by the provider id too, only for seed messages.
    with session_scope() as session:
        session.execute(
            update(Message).where(Message.id == private_id).values(provider_message_id="SMpriv")
        )
        session.execute(
            update(Message).where(Message.id == seed_id).values(provider_message_id="SMseed")
        )
    assert client.get("/api/whatsapp/status/SMpriv").status_code == 404
    assert client.get("/api/whatsapp/status/SMseed").get_json()["messageId"] == seed_id


def test_unauthenticated_seed_callers_have_their_own_idempotency_keys(
    client, legacy_tenant, dispatched
) -> None:
    keyed = {"Authorization": f"Bearer {legacy_tenant['api_key']}", "Idempotency-Key": "order-1"}
    tenant_msg = client.post(
        "/v1/messages", json={"to": TO, "body": "Your code is 1234"}, headers=keyed
    )
    assert tenant_msg.status_code == 202
    # An unauthenticated caller reusing the tenant's key neither reads the tenant's
    # message (a replay) nor learns it exists (a 409), nor blocks the tenant's key.
    for body in ("Your code is 1234", "something else"):
        resp = client.post(
            "/api/v1/whatsapp/send-message",
            json={"to": TO, "text": body},
            headers={"Idempotency-Key": "order-1"},
        )
        assert resp.status_code in (200, 400), resp.get_json()
        if resp.status_code == 200:
            assert resp.get_json()["data"]["messages"][0]["id"] != tenant_msg.get_json()["id"]
    first = client.post(
        "/api/whatsapp/send",
        json={"toPhoneNumber": TO, "messageBody": "seed"},
        headers={"Idempotency-Key": "seed-1"},
    )
    again = client.post(
        "/api/whatsapp/send",
        json={"toPhoneNumber": TO, "messageBody": "seed"},
        headers={"Idempotency-Key": "seed-1"},
    )
    assert first.get_json()["messageId"] == again.get_json()["messageId"]  # still idempotent
    keyed["Idempotency-Key"] = "seed-1"
    mine = client.post("/v1/messages", json={"to": TO, "body": "seed"}, headers=keyed)
    assert mine.status_code == 202 and mine.get_json()["id"] != first.get_json()["messageId"]


# ---------------------------------------------------------------- item 11: campaign validation


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"provider": "meta", "template": {"content_sid": "HX" + "0" * 32}}, "template"),
        ({"provider": "twilio", "template": {"name": "offer"}}, "template"),
        (
            {
                "provider": "meta",
                "template": {"name": "offer"},
                "media_url": ["https://a.example/1.jpg", "https://a.example/2.jpg"],
            },
            "media_url",
        ),
        ({"channel": "sms", "provider": "meta", "body": "x"}, "provider"),
    ],
)
def test_campaigns_validate_like_messages(client, auth, dispatched, fields, field) -> None:
    body = {"name": "c", "channel": "whatsapp", "recipients": [{"to": TO}], **fields}
    err = _error(client.post("/v1/campaigns", json=body, headers=auth), 400)
    assert field in err["fields"], err
    single = {"to": TO, **{k: v for k, v in fields.items()}}
    single.setdefault("channel", "whatsapp")
    err = _error(client.post("/v1/messages", json=single, headers=auth), 400)
    assert field in err["fields"], err


# ---------------------------------------------------------------- item 12: /metrics


def test_metrics_token(client, monkeypatch) -> None:
    from core.config import get_settings

    assert client.get("/metrics").status_code == 200  # unset: open, as before
    monkeypatch.setenv("HERALD_METRICS_TOKEN", "scrape-me-0123456789")
    get_settings.cache_clear()
    try:
        resp = client.get("/metrics")
        assert _error(resp, 401)["code"] == "unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        _error(client.get("/metrics", headers={"Authorization": "Bearer nope"}), 401)
        _error(
            client.get("/metrics", headers={"Authorization": "Bearer scrape-me-01234567890"}), 401
        )
        ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"})
        assert ok.status_code == 200 and b"herald_messages" in ok.data
    finally:
        monkeypatch.delenv("HERALD_METRICS_TOKEN")
        get_settings.cache_clear()
