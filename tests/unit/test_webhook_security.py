"""Webhooks as an attacker or a careless provider would use them (issue 10): inbound
routing to the right tenant, receipts scoped to their signer, bounded work before
the signature check, and no 500 on any body, signed or not."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from core.config import get_settings
from models import Message, WebhookEvent, session_scope
from tests.conftest import (
    META_SECRET,
    META_TOKEN,
    TWILIO_SID,
    TWILIO_TOKEN,
    make_tenant,
    statements_run,
)
from tests.unit.test_webhooks import get, meta_change, new_message, status, twilio_status

CUSTOMER = "+12025550177"


def hexid(n: int = 32) -> str:
    return uuid.uuid4().hex[:n] if n <= 32 else (uuid.uuid4().hex * 2)[:n]


def digits(n: int = 14) -> str:
    return "1" + str(uuid.uuid4().int)[: n - 1]


def twilio_post(client, path: str, params: dict[str, str], token: str = TWILIO_TOKEN):  # type: ignore[no-untyped-def]
    signature = RequestValidator(token).compute_signature(get_settings().public_url + path, params)
    return client.post(
        path,
        data=urlencode(params),
        headers={"X-Twilio-Signature": signature},
        content_type="application/x-www-form-urlencoded",
    )


def twilio_inbound(client, to: str, body: str = "hola", **extra: str):  # type: ignore[no-untyped-def]
    sid = "SM" + hexid()
    whatsapp = to.startswith("whatsapp:")
    params = {
        "MessageSid": sid,
        "AccountSid": TWILIO_SID,
        "From": ("whatsapp:" if whatsapp else "") + CUSTOMER,
        "To": to,
        "Body": body,
        "NumMedia": "0",
        **extra,
    }
    resp = twilio_post(client, "/webhooks/twilio/inbound", params)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "text/xml" and b"<Response" in resp.data
    return sid


def inbound_tenant(sid: str) -> str | None:
    with session_scope() as session:
        return session.scalar(select(Message.tenant_id).where(Message.provider_message_id == sid))


def unrouted(provider_id: str) -> list[WebhookEvent]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(WebhookEvent).where(
                    WebhookEvent.provider_message_id == provider_id,
                    WebhookEvent.kind == "unrouted",
                )
            )
        )


def sign(raw: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def meta_raw(client, raw: bytes, signature: str | None):  # type: ignore[no-untyped-def]
    headers = {"X-Hub-Signature-256": signature} if signature is not None else {}
    return client.post("/webhooks/meta", data=raw, content_type="application/json", headers=headers)


def meta_signed(client, payload: dict, secret: str):  # type: ignore[no-untyped-def]
    raw = json.dumps(payload).encode()
    return meta_raw(client, raw, sign(raw, secret))


def envelope(*changes: dict) -> dict:
    return {"object": "whatsapp_business_account", "entry": [{"id": "W", "changes": list(changes)}]}


def change_for(phone_id: str, **value: object) -> dict:
    return {
        "field": "messages",
        "value": {
            "messaging_product": "whatsapp",
            "metadata": {"phone_number_id": phone_id},
            **value,
        },
    }


def text_message(body: str = "hola") -> dict:
    return {
        "from": CUSTOMER[1:],
        "id": "wamid.IN" + hexid(),
        "timestamp": "1700000000",
        "type": "text",
        "text": {"body": body},
    }


def assert_error_shape(resp, status_code: int) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == status_code, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert error["code"] and error["message"]


# ------------------------------------------------------------ 1. inbound routing


def test_twilio_inbound_to_a_messaging_service_reaches_its_tenant(client) -> None:
    make_tenant("first")  # another tenant on the same Twilio account, created earlier
    service = "MG" + hexid()
    b = make_tenant(
        "service",
        twilio={
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "messaging_service_sid": service,
        },
    )
    # The number is one of the service's pool; no tenant lists it as a sender.
    sid = twilio_inbound(client, "+1202555" + digits(4), "STOP", MessagingServiceSid=service)
    assert inbound_tenant(sid) == b["tenant_id"]


def test_twilio_whatsapp_inbound_matches_a_prefixed_sender(client) -> None:
    make_tenant("first")
    number = "+1415555" + digits(4)
    c = make_tenant(
        "prefixed",
        twilio={
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "whatsapp_from": f"whatsapp:{number}",
        },
    )
    sid = twilio_inbound(client, f"whatsapp:{number}")
    assert inbound_tenant(sid) == c["tenant_id"]


def test_twilio_inbound_matching_no_tenant_is_kept_unrouted(client, app) -> None:
    make_tenant("first")
    sid = twilio_inbound(client, "+1202555" + digits(4), "STOP")
    assert inbound_tenant(sid) is None  # stored under no tenant's messages
    (kept,) = unrouted(sid)
    assert kept.tenant_id is None and kept.payload["reason"] == "no_tenant"
    assert kept.payload["item"]["Body"] == "STOP"
    metrics = client.get("/metrics").get_data(as_text=True)
    line = next(x for x in metrics.splitlines() if x.startswith("herald_inbound_unrouted "))
    assert float(line.split()[1]) >= 1


def test_twilio_inbound_to_a_number_two_tenants_claim_is_never_guessed(client) -> None:
    number = "+1415555" + digits(4)
    for name in ("one", "two"):
        make_tenant(
            name,
            twilio={"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "sms_from": number},
        )
    sid = twilio_inbound(client, number, "STOP")
    assert inbound_tenant(sid) is None
    (kept,) = unrouted(sid)
    assert kept.payload["reason"] == "ambiguous"


def test_unrouted_inbound_is_listed_for_operators(client, capsys) -> None:
    from herald.cli import main

    sid = twilio_inbound(client, "+1202555" + digits(4))
    assert main(["inbound", "unrouted", "--limit", "1000"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (row,) = [r for r in rows if r["provider_message_id"] == sid]
    assert row["provider"] == "twilio" and row["reason"] == "no_tenant"
    assert CUSTOMER not in json.dumps(row)  # the customer's number is masked


def test_meta_phone_id_on_two_tenants_routes_no_inbound_but_applies_statuses(
    client, dispatched
) -> None:
    phone_id = digits()
    secret = "shared-" + hexid()
    meta = {"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": secret}
    one = make_tenant("one", meta=meta)
    make_tenant("two", meta=meta)
    auth = {"Authorization": f"Bearer {one['api_key']}"}
    mid = new_message(client, auth)  # WhatsApp through Meta, from the shared phone id
    inbound = text_message("STOP")
    resp = meta_signed(
        client,
        envelope(
            change_for(
                phone_id,
                statuses=[status(mid, "wamid.S" + hexid(), "delivered")],
                messages=[inbound],
            )
        ),
        secret,
    )
    assert resp.status_code == 200
    assert resp.get_json()["received"]["unrouted"] == 1
    assert resp.get_json()["received"]["statuses"] == 1
    assert inbound_tenant(inbound["id"]) is None
    (kept,) = unrouted(inbound["id"])
    assert kept.payload["reason"] == "ambiguous"
    assert get(client, auth, mid)["status"] == "delivered"


# ------------------------------------------------------------ 5. receipts scoped


def test_a_tenant_cannot_pre_record_another_tenants_twilio_callback(
    client, auth, dispatched
) -> None:
    attacker_sid, attacker_token = "AC" + hexid(), "attacker-token-" + hexid()
    make_tenant(
        "attacker",
        twilio={
            "account_sid": attacker_sid,
            "auth_token": attacker_token,
            "sms_from": "+12025550100",
        },
    )
    mid = new_message(client, auth, channel="sms")
    victim_sid = "SM" + hexid()
    forged = {
        "MessageSid": victim_sid,
        "MessageStatus": "delivered",
        "AccountSid": attacker_sid,
    }
    assert (
        twilio_post(
            client, f"/webhooks/twilio/status?message_id={mid}", forged, token=attacker_token
        ).status_code
        == 204
    )
    assert get(client, auth, mid)["status"] == "queued"  # the forgery touched nothing
    assert twilio_status(client, mid, "delivered", victim_sid).status_code == 204
    assert get(client, auth, mid)["status"] == "delivered"  # and recorded nothing it blocks


def test_a_tenant_cannot_pre_record_another_tenants_meta_callback(client, auth, dispatched) -> None:
    attacker_phone, attacker_secret = digits(), "attacker-" + hexid()
    make_tenant(
        "attacker",
        meta={
            "phone_number_id": attacker_phone,
            "access_token": META_TOKEN,
            "app_secret": attacker_secret,
        },
    )
    mid = new_message(client, auth)
    wamid = "wamid.V" + hexid()
    forged = envelope(change_for(attacker_phone, statuses=[status(mid, wamid, "read")]))
    assert meta_signed(client, forged, attacker_secret).status_code == 200
    assert get(client, auth, mid)["status"] == "queued"
    real = envelope(meta_change(statuses=[status(mid, wamid, "read")]))
    resp = meta_signed(client, real, META_SECRET)
    assert resp.get_json()["received"]["statuses"] == 1
    assert get(client, auth, mid)["status"] == "read"


def test_a_callback_naming_a_provider_id_another_message_holds_is_not_a_500(
    client, auth, dispatched
) -> None:
    holder, other = (
        new_message(client, auth, channel="sms"),
        new_message(client, auth, channel="sms"),
    )
    sid = "SM" + hexid()
    assert twilio_status(client, holder, "sent", sid).status_code == 204
    assert get(client, auth, holder)["provider_message_id"] == sid
    # A callback for `other` (Herald's id in the signed URL) naming the same SID.
    assert twilio_status(client, other, "delivered", sid).status_code == 204
    assert get(client, auth, other)["status"] == "delivered"
    assert get(client, auth, other)["provider_message_id"] is None
    assert get(client, auth, holder)["provider_message_id"] == sid
    # The same through Meta.
    m_holder, m_other = new_message(client, auth), new_message(client, auth)
    wamid = "wamid.H" + hexid()
    first = envelope(meta_change(statuses=[status(m_holder, wamid, "sent")]))
    assert meta_signed(client, first, META_SECRET).status_code == 200
    second = envelope(meta_change(statuses=[status(m_other, wamid, "delivered")]))
    assert meta_signed(client, second, META_SECRET).status_code == 200
    assert get(client, auth, m_other)["status"] == "delivered"
    assert get(client, auth, m_holder)["provider_message_id"] == wamid


# ------------------------------------------------------------ 3. no 500 before auth


@pytest.mark.parametrize(
    "raw",
    [
        b'{"entry":"x"}',
        b'{"entry":[{"changes":[{"value":"x"}]}]}',
        b'{"entry":[{"changes":"x"}]}',
        b'{"entry":[{"changes":[{"value":{"metadata":"x"}}]}]}',
        b'{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":{"a":1}}}}]}]}',
        b'{"entry":["x",1,null]}',
        b"[]",
        b'"x"',
        b"not json",
        b"\xff\xfe",
        b"[" * 100_000,
        b'{"a":' * 50_000,
    ],
)
def test_meta_unsigned_or_malformed_bodies_are_403(client, tenant, raw: bytes) -> None:
    assert_error_shape(meta_raw(client, raw, "sha256=" + "0" * 64), 403)
    assert_error_shape(meta_raw(client, raw, sign(raw, "not-a-secret")), 403)
    assert_error_shape(meta_raw(client, raw, None), 403)


def test_meta_non_ascii_signature_and_verify_token_are_403(client, tenant) -> None:
    raw = json.dumps(envelope(meta_change(statuses=[]))).encode()
    assert_error_shape(meta_raw(client, raw, "sha256=é" + "0" * 63), 403)
    assert_error_shape(meta_raw(client, raw, "é"), 403)
    resp = client.get(
        "/webhooks/meta?hub.mode=subscribe&hub.challenge=42&hub.verify_token=%C3%A9t%C3%A9"
    )
    assert_error_shape(resp, 403)


def test_twilio_non_ascii_signature_is_403(client, tenant) -> None:
    params = {"MessageSid": "SM" + hexid(), "MessageStatus": "sent", "AccountSid": TWILIO_SID}
    for path in ("/webhooks/twilio/status", "/webhooks/twilio/inbound"):
        resp = client.post(path, data=params, headers={"X-Twilio-Signature": "é" * 28})
        assert_error_shape(resp, 403)


def test_meta_malformed_bodies_signed_app_wide_are_400(client, monkeypatch) -> None:
    monkeypatch.setenv("META_APP_SECRET", "app-wide-" + hexid())
    get_settings.cache_clear()
    try:
        secret = get_settings().meta_app_secret
        assert secret
        for raw in (b"[" * 100_000, b"[]", b"not json", b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
            assert_error_shape(meta_raw(client, raw, sign(raw, secret)), 400)
        for raw in (b'{"entry":"x"}', b'{"entry":[{"changes":[{"value":"x"}]}]}'):
            resp = meta_raw(client, raw, sign(raw, secret))
            assert resp.status_code == 200, resp.get_data(as_text=True)
    finally:
        monkeypatch.delenv("META_APP_SECRET")
        get_settings.cache_clear()


def test_meta_shapes_after_authentication_are_handled(client, auth, dispatched) -> None:
    phone_id, secret = digits(), "shape-" + hexid()
    owner = make_tenant(
        "shapes",
        meta={"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": secret},
    )
    own_auth = {"Authorization": f"Bearer {owner['api_key']}"}
    mid = new_message(client, own_auth)
    odd_values = [
        {"statuses": "x", "messages": {"a": 1}, "contacts": "x"},
        {"statuses": [1, "x", None, [], {"id": {"a": 1}, "status": "read"}]},
        {"statuses": [{"id": "w" * 500, "status": "read"}, {"id": "wamid.X", "status": "r" * 500}]},
        {"statuses": [{"id": "wamid.T" + hexid(), "status": "read", "timestamp": "9" * 40}]},
        {"statuses": [{"id": "wamid.T" + hexid(), "status": "read", "timestamp": 1e300}]},
        {
            "statuses": [
                {
                    "id": "wamid.E" + hexid(),
                    "status": "failed",
                    "biz_opaque_callback_data": "m" * 500,
                    "errors": "x",
                },
                {
                    "id": "wamid.E" + hexid(),
                    "status": "failed",
                    "biz_opaque_callback_data": mid,
                    "errors": [{"code": "9" * 100, "title": {"a": 1}}, "x"],
                },
            ]
        },
        {
            "contacts": [{"wa_id": ["x"], "profile": "x"}, "x", {"profile": {"name": "n" * 500}}],
            "messages": [
                1,
                {"id": ["x"]},
                {"from": "x" * 500, "id": "wamid.F" + hexid(), "type": "text"},
                {"from": CUSTOMER[1:], "id": "wamid.G" + hexid(), "type": ["x"]},
                {
                    "from": CUSTOMER[1:],
                    "id": "wamid.I" + hexid(),
                    "type": "interactive",
                    "interactive": {"type": ["x"]},
                },
                {
                    "from": CUSTOMER[1:],
                    "id": "wamid.J" + hexid(),
                    "type": "text",
                    "text": {"body": "nul \x00 and lone \ud800 surrogate"},
                },
                {"from": CUSTOMER[1:], "id": "wamid.K" + hexid(), "type": "text", "text": "x"},
            ],
        },
    ]
    for value in odd_values:
        resp = meta_signed(client, envelope(change_for(phone_id, **value)), secret)
        assert resp.status_code == 200, (value, resp.get_data(as_text=True))
    with session_scope() as session:
        body = session.scalar(
            select(Message.body)
            .where(Message.tenant_id == owner["tenant_id"], Message.direction == "inbound")
            .where(Message.body.like("nul %"))
        )
    assert body is not None and "\x00" not in body


def test_twilio_shapes_after_authentication_are_not_500(client, auth, dispatched) -> None:
    mid = new_message(client, auth, channel="sms")
    for extra in (
        {"MessageSid": "S" * 500},
        {"MessageStatus": "d" * 500},
        {"Price": "-1e400", "PriceUnit": "U" * 50, "ErrorCode": "3" * 100},
    ):
        resp = twilio_status(client, mid, "sent", "SM" + hexid(), **extra)
        assert resp.status_code in (204, 400), resp.get_data(as_text=True)
        if resp.status_code == 400:
            assert_error_shape(resp, 400)
    number = "+1415555" + digits(4)
    make_tenant(
        "nul",
        twilio={"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "sms_from": number},
    )
    # A NUL never appears in a real Twilio form: refused before any work, with the error shape.
    resp = twilio_post(
        client,
        "/webhooks/twilio/inbound",
        {
            "MessageSid": "SM" + hexid(),
            "AccountSid": TWILIO_SID,
            "From": CUSTOMER,
            "To": number,
            "Body": "nul \x00 body",
            "NumMedia": "0",
        },
    )
    assert_error_shape(resp, 400)
    twilio_inbound(client, number, "plain body", ProfileName="p" * 500)
    twilio_inbound(client, number, "x", **{"From": "f" * 500})
    twilio_inbound(client, "t" * 500, "x")


# ------------------------------------------------------------ 4. bounded before auth


def test_many_phone_ids_cost_one_bounded_query_before_refusal(client, tenant) -> None:
    # 20,000 distinct ids in a body just under the 1 MiB limit.
    base = 10**7 + int(digits(6)) * 20_000 % (8 * 10**7)
    ids = [str(base + i) for i in range(20_000)]
    changes = [{"value": {"metadata": {"phone_number_id": int(i)}}} for i in ids]
    raw = json.dumps({"entry": [{"changes": changes}]}, separators=(",", ":")).encode()
    assert 900_000 < len(raw) < get_settings().max_body_bytes
    with statements_run() as statements:
        resp = meta_raw(client, raw, "sha256=" + "0" * 64)
    assert_error_shape(resp, 403)
    lookups = [
        parameters for statement, parameters in statements if "provider_accounts" in statement
    ]
    assert len(lookups) <= 1, len(lookups)
    examined = {x for parameters in lookups for x in _flatten(parameters)} & set(ids)
    assert 1 <= len(examined) <= 10, len(examined)


def _flatten(value: object) -> list[str]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flatten(v)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _flatten(v)]
    return [str(value)]


def test_twilio_receipt_keys_name_the_signing_account(client, auth, dispatched) -> None:
    mid = new_message(client, auth, channel="sms")
    sid = "SM" + hexid()
    twilio_status(client, mid, "delivered", sid)
    with session_scope() as session:
        keys = session.scalars(
            select(WebhookEvent.dedup_key).where(WebhookEvent.provider_message_id == sid)
        ).all()
        account = session.scalar(select(Message.provider_account_id).where(Message.id == mid))
        n = session.scalar(select(func.count()).where(WebhookEvent.provider_message_id == sid))
    assert keys == [f"twilio:{account}:{sid}:delivered"] and n == 1
