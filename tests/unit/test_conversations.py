"""Conversations (Meta) in-process: the request rules and their 400s, Meta's payloads,
what an inbound message keeps, and the read route's refusals."""

from __future__ import annotations

from typing import Any

import pytest

from models import Message, session_scope, utcnow
from providers.base import OutboundMessage
from providers.meta import build_payload, read_payload
from services.content.conversations import inbound_extras
from tests.conftest import make_tenant

TO = "+12025550143"
WAMID = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"


def _post(client, auth, **fields: Any):  # type: ignore[no-untyped-def]
    return client.post("/v1/messages", json={"to": TO, **fields}, headers=auth)


def _inbound(tenant_id: str, provider: str = "meta", wamid: str | None = WAMID) -> str:
    """An inbound message of the tenant, stored as a webhook would."""
    with session_scope() as session:
        from services.tenancy.tenants import find_account

        account = find_account(session, tenant_id, provider)
        message = Message(
            tenant_id=tenant_id,
            direction="inbound",
            channel="whatsapp",
            provider=provider,
            provider_account_id=account.id,
            to_number="+12025550111",
            from_number=TO,
            body="hi",
            status="received",
            provider_message_id=wamid,
            meta={},
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        session.add(message)
        session.flush()
        return message.id


# ------------------------------------------------------------------ payloads


def test_meta_payloads_for_each_kind() -> None:
    base = {"herald_id": "msg_1", "channel": "whatsapp", "to": TO}
    reply = build_payload(OutboundMessage(**base, body="Yes", context_message_id=WAMID))
    assert reply["type"] == "text" and reply["context"] == {"message_id": WAMID}
    reaction = build_payload(
        OutboundMessage(
            **base, reaction={"message_id": WAMID, "emoji": "👍"}, context_message_id=WAMID
        )
    )
    assert reaction["reaction"] == {"message_id": WAMID, "emoji": "👍"}
    assert "context" not in reaction  # a reaction names its target itself
    location = {"latitude": 1.5, "longitude": 2.5, "name": "Shop"}
    assert build_payload(OutboundMessage(**base, location=location))["location"] == location
    cards = [{"name": {"formatted_name": "Ana"}}]
    assert build_payload(OutboundMessage(**base, contacts=cards))["contacts"] == cards
    sticker = build_payload(OutboundMessage(**base, sticker={"id": "123"}))
    assert sticker["type"] == "sticker" and sticker["sticker"] == {"id": "123"}
    document = build_payload(
        OutboundMessage(**base, media_urls=["https://e.com/a.pdf"], filename="A.pdf")
    )
    assert document["document"] == {"link": "https://e.com/a.pdf", "filename": "A.pdf"}
    image = build_payload(
        OutboundMessage(**base, media_urls=["https://e.com/a.jpg"], filename="A.jpg")
    )
    assert "filename" not in image["image"]


def test_read_payload_shape() -> None:
    assert read_payload(WAMID) == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": WAMID,
    }
    assert read_payload(WAMID, typing=True)["typing_indicator"] == {"type": "text"}


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"location": {"latitude": 91, "longitude": 0}}, "location"),
        ({"location": {"latitude": 1}}, "location"),
        ({"location": {"latitude": True, "longitude": 0}}, "location"),
        ({"location": {"latitude": 1, "longitude": 2}, "body": "hi"}, "location"),
        ({"reaction": {"message_id": WAMID, "emoji": "ok"}}, "reaction"),
        ({"reaction": {"message_id": WAMID, "emoji": "👍👍"}}, "reaction"),
        ({"reaction": {"emoji": "👍"}}, "reaction"),
        ({"reaction": {"message_id": WAMID, "emoji": "👍"}, "reply_to": WAMID}, "reply_to"),
        ({"contacts": []}, "contacts"),
        ({"contacts": [{"name": {"first_name": "A"}}]}, "contacts"),
        ({"contacts": [{"name": {"formatted_name": "A"}, "phones": "x"}]}, "contacts"),
        ({"contacts": [{"name": {"formatted_name": "A"}}] * 258}, "contacts"),
        ({"sticker": {"link": "https://e.com/a.png"}}, "sticker"),
        ({"sticker": {}}, "sticker"),
        ({"sticker": {"link": "https://e.com/a.webp", "id": "1"}}, "sticker"),
        ({"body": "hi", "filename": "a.pdf"}, "filename"),
        ({"media_url": "https://e.com/a.jpg", "filename": "a.jpg"}, "filename"),
        ({"body": "hi", "reply_to": "12345"}, "reply_to"),
        ({"body": "hi", "reply_to": "msg_01M8JHCKW4ZFWGGAKWKTF1KXBJ"}, "reply_to"),
        ({"location": {"latitude": 1, "longitude": 2}, "channel": "sms"}, "location"),
    ],
)
def test_bad_conversation_fields_are_400_naming_the_field(
    client, auth, dispatched, fields, field
) -> None:
    resp = _post(client, auth, **fields)
    assert resp.status_code == 400, resp.get_json()
    messages = resp.get_json()["error"]["fields"][field]
    assert messages and "Unknown field." not in messages, messages  # a rule, not old code's
    assert dispatched == []


@pytest.mark.parametrize(
    "fields",
    [
        {"body": "hi", "reply_to": WAMID},
        {"location": {"latitude": 1, "longitude": 2}},
        {"contacts": [{"name": {"formatted_name": "A"}}]},
        {"sticker": {"link": "https://e.com/a.webp"}},
        {"body": "hi", "mark_read": True},
    ],
    ids=["reply", "location", "contacts", "sticker", "mark_read"],
)
def test_twilio_refuses_them_naming_field_and_provider(client, auth, dispatched, fields) -> None:
    resp = _post(client, auth, provider="twilio", **fields)
    assert resp.status_code == 400
    messages = resp.get_json()["error"]["fields"]
    (field,) = [k for k in fields if k != "body"]
    assert "twilio" in " ".join(messages[field])


def test_reply_to_another_tenants_message_is_unknown(client, auth, dispatched) -> None:
    other = make_tenant("other")
    theirs = _inbound(other["tenant_id"], wamid="wamid.b3RoZXI=")
    resp = _post(client, auth, body="hi", reply_to=theirs)
    assert resp.status_code == 400
    assert f"No message {theirs!r}." in resp.get_json()["error"]["fields"]["reply_to"]


def test_reply_to_own_inbound_message_is_stored_with_its_wamid(
    client, auth, tenant, dispatched
) -> None:
    inbound = _inbound(tenant["tenant_id"], wamid="wamid.b3du")
    resp = _post(client, auth, body="hi", reply_to=inbound)
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["reply_to"] == inbound
    with session_scope() as session:
        options = session.get(Message, resp.get_json()["id"]).options
    assert options["target"] == {"id": inbound, "wamid": "wamid.b3du"}


def test_reply_to_a_twilio_message_is_refused(client, auth, tenant, dispatched) -> None:
    inbound = _inbound(tenant["tenant_id"], provider="twilio", wamid="SM" + "a" * 32)
    resp = _post(client, auth, body="hi", reply_to=inbound)
    assert resp.status_code == 400 and "reply_to" in resp.get_json()["error"]["fields"]


def test_reaction_only_to_a_received_message(client, auth, dispatched) -> None:
    sent = _post(client, auth, body="hi").get_json()["id"]
    resp = _post(client, auth, reaction={"message_id": sent, "emoji": "👍"})
    assert resp.status_code == 400
    assert "reaction.message_id" in resp.get_json()["error"]["fields"]


def test_free_form_kinds_keep_to_the_window(client, dispatched) -> None:
    closed = make_tenant("closed", windows=())
    auth = {"Authorization": f"Bearer {closed['api_key']}"}
    resp = _post(client, auth, location={"latitude": 1, "longitude": 2})
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "window_closed"


def test_the_task_takes_the_same_fields(tenant, dispatched) -> None:
    from workers.tasks import send_message

    result = send_message.apply(
        kwargs={
            "tenant_id": tenant["tenant_id"],
            "to": TO,
            "location": {"latitude": 1, "longitude": 2},
        }
    ).get()
    assert result["status"] == "queued", result
    bad = send_message.apply(
        kwargs={"tenant_id": tenant["tenant_id"], "to": TO, "body": "x", "reply_to": "nope"}
    ).get()
    assert "reply_to" in bad["error"]["fields"]


# ------------------------------------------------------------------ read route


def test_read_refuses_outbound_twilio_and_other_tenants(client, auth, tenant, dispatched) -> None:
    outbound = _post(client, auth, body="hi").get_json()["id"]
    resp = client.post(f"/v1/messages/{outbound}/read", headers=auth)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "not_inbound"
    twilio = _inbound(tenant["tenant_id"], provider="twilio", wamid="SM" + "b" * 32)
    resp = client.post(f"/v1/messages/{twilio}/read", headers=auth)
    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "read_receipts_unsupported"
    other = make_tenant("other")
    theirs = _inbound(other["tenant_id"], wamid="wamid.dGhlaXJz")
    assert client.post(f"/v1/messages/{theirs}/read", headers=auth).status_code == 404
    resp = client.post(f"/v1/messages/{theirs}/read", json={"typing": "maybe"}, headers=auth)
    assert resp.status_code == 400


# ------------------------------------------------------------------ inbound


def test_inbound_extras_in_meta_shapes() -> None:
    reply = inbound_extras(
        {"type": "text", "text": {"body": "Blue"}, "context": {"from": "1555", "id": WAMID}}
    )
    assert reply["options"]["context"] == {"from": "1555", "id": WAMID}
    reaction = inbound_extras(
        {"type": "reaction", "reaction": {"message_id": WAMID, "emoji": "😀"}}
    )
    assert reaction == {
        "body": "😀",
        "options": {"reaction": {"message_id": WAMID, "emoji": "😀"}},
    }
    removed = inbound_extras({"type": "reaction", "reaction": {"message_id": WAMID}})
    assert removed["options"]["reaction"]["emoji"] == ""
    location = inbound_extras(
        {"type": "location", "location": {"latitude": 1.5, "longitude": 2, "name": "Shop"}}
    )
    assert location["body"] == "Shop" and location["options"]["location"]["longitude"] == 2
    cards = inbound_extras({"type": "contacts", "contacts": [{"name": {"formatted_name": "A"}}, 3]})
    assert cards["options"]["contacts"] == [{"name": {"formatted_name": "A"}}]
    sticker = inbound_extras(
        {"type": "sticker", "sticker": {"id": "9", "mime_type": "image/webp", "animated": False}}
    )
    assert sticker["options"]["sticker"] == {
        "id": "9",
        "mime_type": "image/webp",
        "animated": False,
    }
    assert inbound_extras({"type": "text", "text": {"body": "x"}}) == {}
    assert inbound_extras({"type": "reaction", "reaction": "odd", "context": []}) == {}
