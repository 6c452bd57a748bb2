"""Provider webhooks: signatures, forward-only status, duplicates, inbound."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import urlencode

from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from core.config import get_settings
from models import Contact, Message, MessageEvent, WebhookEvent, session_scope
from tests.conftest import META_PHONE_ID, META_SECRET, TWILIO_SID, TWILIO_TOKEN, make_tenant

TO = "+12025550143"


def new_message(client, auth, **fields) -> str:  # type: ignore[no-untyped-def]
    body = {"to": TO, "body": "hello", **fields}
    resp = client.post("/v1/messages", json=body, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def twilio_post(client, path: str, params: dict[str, str], token: str = TWILIO_TOKEN):  # type: ignore[no-untyped-def]
    public = get_settings().public_url  # the URL Herald validates against
    signature = RequestValidator(token).compute_signature(public + path, params)
    return client.post(
        path,
        data=urlencode(params),
        headers={"X-Twilio-Signature": signature},
        content_type="application/x-www-form-urlencoded",
    )


def twilio_status(client, message_id: str, status: str, sid: str = "SM" + "0" * 32, **extra):  # type: ignore[no-untyped-def]
    params = {
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": TWILIO_SID,
        "To": TO,
        "From": "+12025550100",
        **extra,
    }
    return twilio_post(client, f"/webhooks/twilio/status?message_id={message_id}", params)


def get(client, auth, message_id: str) -> dict:  # type: ignore[no-untyped-def]
    return client.get(f"/v1/messages/{message_id}", headers=auth).get_json()


def events_of(message_id: str) -> list[tuple[str, str | None, bool]]:
    with session_scope() as session:
        rows = session.scalars(
            select(MessageEvent)
            .where(MessageEvent.message_id == message_id)
            .order_by(MessageEvent.id)
        )
        return [(e.status, e.native_status, e.applied) for e in rows]


def test_twilio_status_moves_forward_only(client, auth, dispatched) -> None:
    mid = new_message(client, auth, channel="sms")
    sid = "SM" + "1" * 32
    assert twilio_status(client, mid, "sent", sid).status_code == 204
    assert twilio_status(client, mid, "delivered", sid).status_code == 204
    assert twilio_status(client, mid, "sent", sid + "x").status_code == 204  # late, other key
    msg = get(client, auth, mid)
    assert msg["status"] == "delivered"
    # The callback beat the worker: the SID came from it, by Herald's id in the URL.
    assert msg["provider_message_id"] == sid
    assert msg["delivered_at"] is not None
    assert events_of(mid)[1:] == [
        ("sent", "sent", True),
        ("delivered", "delivered", True),
        ("sent", "sent", False),
    ]


def test_twilio_duplicate_callback_changes_nothing(client, auth, dispatched) -> None:
    mid = new_message(client, auth, channel="sms")
    sid = "SM" + "2" * 32
    twilio_status(client, mid, "delivered", sid)
    before = events_of(mid)
    assert twilio_status(client, mid, "delivered", sid).status_code == 204
    assert events_of(mid) == before
    with session_scope() as session:
        n = session.scalar(
            select(func.count()).where(
                WebhookEvent.provider_message_id == sid, WebhookEvent.kind == "status"
            )
        )
    assert n == 1


def test_twilio_failure_keeps_error_code(client, auth, dispatched) -> None:
    mid = new_message(client, auth, channel="sms")
    twilio_status(
        client,
        mid,
        "undelivered",
        "SM" + "3" * 32,
        ErrorCode="30003",
        ErrorMessage="Unreachable destination handset",
    )
    msg = get(client, auth, mid)
    assert msg["status"] == "undelivered"
    assert msg["error"]["provider_code"] == "30003"
    assert msg["error"]["code"] == "unreachable"
    # Terminal: a later delivered does not resurrect it.
    twilio_status(client, mid, "delivered", "SM" + "3" * 32)
    assert get(client, auth, mid)["status"] == "undelivered"


def test_twilio_bad_signature_is_403_and_changes_nothing(client, auth, dispatched) -> None:
    mid = new_message(client, auth, channel="sms")
    params = {"MessageSid": "SM" + "4" * 32, "MessageStatus": "delivered", "AccountSid": TWILIO_SID}
    path = f"/webhooks/twilio/status?message_id={mid}"
    forged = RequestValidator("not-the-token").compute_signature(
        get_settings().public_url + path, params
    )
    for headers in ({"X-Twilio-Signature": forged}, {}):
        resp = client.post(path, data=params, headers=headers)
        assert resp.status_code == 403
        assert resp.get_json()["error"]["code"] == "forbidden"
    assert get(client, auth, mid)["status"] == "queued"


def test_twilio_status_for_unknown_message_is_kept(client) -> None:
    sid = "SM" + "5" * 32
    resp = twilio_post(
        client,
        "/webhooks/twilio/status",
        {"MessageSid": sid, "MessageStatus": "sent", "AccountSid": TWILIO_SID},
    )
    assert resp.status_code == 204
    with session_scope() as session:
        row = session.scalars(
            select(WebhookEvent).where(WebhookEvent.provider_message_id == sid)
        ).one()
        assert row.message_id is None


def test_twilio_inbound_answers_twiml_and_opens_window(client) -> None:
    # One Twilio account serving several tenants: the To number picks the tenant.
    tenant = make_tenant(
        "dealer",
        twilio={
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "whatsapp_from": "+14155230042",
        },
    )
    sid = "SM" + "6" * 32
    params = {
        "MessageSid": sid,
        "AccountSid": TWILIO_SID,
        "From": "whatsapp:+12025550177",
        "To": "whatsapp:+14155230042",
        "Body": "Is the car still available?",
        "NumMedia": "1",
        "MediaUrl0": "https://example.com/a.jpg",
        "ProfileName": "Ana",
    }
    resp = twilio_post(client, "/webhooks/twilio/inbound", params)
    assert resp.status_code == 200
    assert resp.mimetype == "text/xml"
    assert b"<Response" in resp.data
    with session_scope() as session:
        msg = session.scalars(select(Message).where(Message.provider_message_id == sid)).one()
        assert (msg.direction, msg.status, msg.channel) == ("inbound", "received", "whatsapp")
        assert msg.tenant_id == tenant["tenant_id"]
        assert msg.media_urls == ["https://example.com/a.jpg"]
        contact = session.scalars(
            select(Contact).where(
                Contact.tenant_id == tenant["tenant_id"], Contact.phone == "+12025550177"
            )
        ).one()
        assert contact.last_inbound_at is not None and contact.name == "Ana"


# ------------------------------------------------------------------ Meta


def meta_post(client, payload: dict, secret: str = META_SECRET):  # type: ignore[no-untyped-def]
    raw = json.dumps(payload).encode()
    sig = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return client.post(
        "/webhooks/meta",
        data=raw,
        content_type="application/json",
        headers={"X-Hub-Signature-256": sig},
    )


def meta_change(statuses: list[dict] | None = None, messages: list[dict] | None = None) -> dict:
    value: dict = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "12025550111", "phone_number_id": META_PHONE_ID},
    }
    if statuses:
        value["statuses"] = statuses
    if messages:
        value["messages"] = messages
        value["contacts"] = [{"profile": {"name": "Luis"}, "wa_id": messages[0]["from"]}]
    return {"field": "messages", "value": value}


def status(mid: str, wamid: str, state: str, **extra) -> dict:  # type: ignore[no-untyped-def]
    return {
        "id": wamid,
        "status": state,
        "timestamp": str(int(time.time())),
        "recipient_id": TO[1:],
        "biz_opaque_callback_data": mid,
        **extra,
    }


def test_meta_verify_handshake(client, tenant) -> None:
    ok = client.get("/webhooks/meta?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=42")
    assert ok.status_code == 200 and ok.data == b"42"
    bad = client.get("/webhooks/meta?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=42")
    assert bad.status_code == 403


def test_meta_every_entry_and_change_is_applied(client, auth, dispatched) -> None:
    m1, m2, m3 = (new_message(client, auth) for _ in range(3))
    pricing = {"billable": True, "pricing_model": "PMP", "category": "utility"}
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA",
                "changes": [
                    meta_change(
                        statuses=[
                            status(m1, "wamid.A1", "sent", pricing=pricing),
                            status(m1, "wamid.A1", "delivered"),
                        ]
                    ),
                    meta_change(statuses=[status(m2, "wamid.B2", "read")]),  # delivered skipped
                ],
            },
            {
                "id": "WABA",
                "changes": [
                    meta_change(
                        statuses=[
                            status(
                                m3,
                                "wamid.C3",
                                "failed",
                                errors=[{"code": 131047, "title": "Re-engagement message"}],
                            )
                        ],
                        messages=[
                            {
                                "from": "12025550188",
                                "id": "wamid.IN1",
                                "timestamp": "1700000000",
                                "type": "text",
                                "text": {"body": "STOP"},
                            }
                        ],
                    ),
                ],
            },
        ],
    }
    resp = meta_post(client, payload)
    assert resp.status_code == 200
    assert resp.get_json()["received"]["statuses"] == 4
    # Every test tenant holds the shared test phone id: the inbound STOP is no one's.
    assert resp.get_json()["received"]["unrouted"] == 1
    assert get(client, auth, m1)["status"] == "delivered"
    assert get(client, auth, m1)["provider_message_id"] == "wamid.A1"
    read = get(client, auth, m2)
    assert read["status"] == "read" and read["delivered_at"] is not None
    failed = get(client, auth, m3)
    assert failed["status"] == "failed" and failed["error"]["provider_code"] == "131047"
    assert failed["error"]["code"] == "window_closed"
    # Replaying the whole delivery is a no-op.
    again = meta_post(client, payload).get_json()["received"]
    assert again["duplicates"] == 5 and again["statuses"] == 0
    with session_scope() as session:
        detail = session.scalars(
            select(MessageEvent.detail).where(
                MessageEvent.message_id == m1, MessageEvent.native_status == "sent"
            )
        ).one()
    assert detail["pricing"]["category"] == "utility"


def test_meta_bad_signature_is_403(client, auth, dispatched) -> None:
    mid = new_message(client, auth)
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "W", "changes": [meta_change(statuses=[status(mid, "wamid.Z", "read")])]}],
    }
    assert meta_post(client, payload, secret="wrong").status_code == 403
    assert client.post("/webhooks/meta", json=payload).status_code == 403
    assert get(client, auth, mid)["status"] == "queued"


def test_same_callback_twice_at_once_is_recorded_once(app, client, auth, dispatched) -> None:
    import threading

    mid = new_message(client, auth, channel="sms")
    sid = "SM" + "7" * 32
    barrier = threading.Barrier(4)
    codes: list[int] = []

    def deliver_callback() -> None:
        local = app.test_client()
        barrier.wait()
        codes.append(twilio_status(local, mid, "delivered", sid).status_code)

    threads = [threading.Thread(target=deliver_callback) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [204] * 4
    delivered = [e for e in events_of(mid) if e[0] == "delivered"]
    assert delivered == [("delivered", "delivered", True)]


def test_every_twilio_status_maps_onto_the_contract(client, auth, dispatched) -> None:
    expected = {
        "accepted": "queued",
        "scheduled": "queued",
        "queued": "queued",
        "sending": "sending",
        "sent": "sent",
        "delivered": "delivered",
        "read": "read",
        "undelivered": "undelivered",
        "failed": "failed",
        "canceled": "failed",
    }
    for native, mapped in expected.items():
        mid = new_message(client, auth, channel="sms")
        twilio_status(client, mid, native, "SM" + uuid_hex(), ErrorCode="30001")
        status, recorded_native, _applied = events_of(mid)[-1]
        assert (status, recorded_native) == (mapped, native)


def uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex


def test_meta_inbound_media_and_unknown_status(client) -> None:
    from tests.conftest import META_TOKEN

    phone_id = "1" + str(int(uuid_hex(), 16))[:14]  # this tenant's alone
    make_tenant(
        "media",
        meta={"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": META_SECRET},
    )
    wamid = "wamid.UNKNOWN" + uuid_hex()
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "W",
                "changes": [
                    meta_change(
                        statuses=[
                            {
                                "id": wamid,
                                "status": "delivered",
                                "timestamp": "1700000000",
                                "recipient_id": "12025550143",
                            }
                        ],
                        messages=[
                            {
                                "from": "12025550199",
                                "id": "wamid.IMG" + uuid_hex(),
                                "timestamp": "1700000000",
                                "type": "image",
                                "image": {
                                    "id": "media-77",
                                    "mime_type": "image/jpeg",
                                    "caption": "My car",
                                },
                            }
                        ],
                    )
                ],
            }
        ],
    }
    payload["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = phone_id
    resp = meta_post(client, payload)
    assert resp.status_code == 200
    with session_scope() as session:
        kept = session.scalars(
            select(WebhookEvent).where(WebhookEvent.provider_message_id == wamid)
        ).one()
        assert kept.message_id is None  # unknown: answered and kept
        inbound = session.scalars(
            select(Message).where(
                Message.direction == "inbound", Message.from_number == "+12025550199"
            )
        ).one()
        assert inbound.body == "My car" and inbound.media_urls == ["meta-media:media-77"]


def test_meta_body_signed_by_one_tenant_cannot_touch_another(client, auth, dispatched) -> None:
    from tests.conftest import META_TOKEN

    victim_mid = new_message(client, auth)  # the shared test phone id, META_SECRET
    attacker_phone = "1" + uuid_hex()[:14].translate(str.maketrans("abcdef", "123456"))
    make_tenant(
        "attacker",
        meta={
            "phone_number_id": attacker_phone,
            "access_token": META_TOKEN,
            "app_secret": "attacker-secret",
        },
    )
    own = meta_change(statuses=[status("msg_none", "wamid.OWN" + uuid_hex(), "sent")])
    own["value"]["metadata"]["phone_number_id"] = attacker_phone
    forged = meta_change(
        statuses=[
            status(
                victim_mid,
                "wamid.FORGED" + uuid_hex(),
                "failed",
                errors=[{"code": 131026, "title": "x"}],
            )
        ]
    )
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "W", "changes": [own, forged]}],
    }
    resp = meta_post(client, payload, secret="attacker-secret")
    assert resp.status_code == 200
    assert resp.get_json()["received"]["unverified"] == 1
    assert get(client, auth, victim_mid)["status"] == "queued"
