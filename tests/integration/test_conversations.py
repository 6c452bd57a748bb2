"""Conversations on WhatsApp through Meta, end to end against the sandbox (no provider
mocks): replies both ways, reactions, locations, contact cards, stickers, a document's
file name, read receipts with the typing indicator, and marking read after a reply."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from models import Message, session_scope
from services.messages.delivery import deliver
from tests.conftest import META_PHONE_ID, META_SECRET, META_TOKEN, TWILIO_SID, make_tenant
from tests.integration.conftest import wait_for

CUSTOMER = "+12025550143"
SENT = ("sent", "delivered", "read")  # callbacks may already have moved it on


def _own_number(live, **settings: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A tenant with a Meta phone number id of its own (inbound routes to it alone)."""
    phone_id = "1" + str(uuid.uuid4().int)[:14]
    meta = {"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": META_SECRET}
    live.control.post("/_sandbox/accounts", json={"provider": "meta", **meta}).raise_for_status()
    tenant = make_tenant(
        "conv",
        twilio={"account_sid": TWILIO_SID, "auth_token": "t", "whatsapp_from": "+14155238886"},
        meta={**meta, "display_phone_number": "+12025550111", **settings},
    )
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    return {**tenant, "phone_id": phone_id, "auth": auth}


def _inbound(live, phone_id: str, **fields: Any) -> str:  # type: ignore[no-untyped-def]
    """The customer writes (through the sandbox's signed webhook); returns the wamid."""
    answer = live.control.post(
        "/_sandbox/inbound",
        json={"provider": "meta", "from": CUSTOMER, "to": phone_id, **fields},
    ).json()
    assert answer["ok"], answer
    return answer["message_id"]


def _by_wamid(wamid: str) -> Message | None:
    with session_scope() as session:
        return session.query(Message).filter(Message.provider_message_id == wamid).first()


def _send(client, auth, live, **fields):  # type: ignore[no-untyped-def]
    resp = client.post("/v1/messages", json={"to": CUSTOMER, **fields}, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    mid = resp.get_json()["id"]
    deliver(mid)
    with session_scope() as session:
        message = session.get(Message, mid)
    sends = live.sends(herald_id=mid)
    return message, (sends[-1] if sends else None)


def test_reply_to_an_inbound_message_carries_its_wamid(live, client, dispatched) -> None:
    t = _own_number(live)
    wamid = _inbound(live, t["phone_id"], body="Is my order ready?")
    inbound = wait_for(lambda: _by_wamid(wamid), what="inbound stored")
    message, sent = _send(client, t["auth"], live, body="Yes, ready!", reply_to=inbound.id)
    assert message.status in SENT, message.error_message
    assert sent["request"]["context"] == {"message_id": wamid}
    shown = client.get(f"/v1/messages/{message.id}", headers=t["auth"]).get_json()
    assert shown["reply_to"] == inbound.id


def test_reply_to_a_raw_wamid(live, client, auth, dispatched) -> None:
    raw = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"
    message, sent = _send(client, auth, live, body="About that", reply_to=raw)
    assert message.status in SENT  # Meta accepts an unknown context id
    assert sent["request"]["context"] == {"message_id": raw}


def test_reply_to_a_message_not_yet_sent_resolves_at_send_time(live, client, auth, dispatched):
    first = client.post("/v1/messages", json={"to": CUSTOMER, "body": "One"}, headers=auth)
    first_id = first.get_json()["id"]
    second = client.post(
        "/v1/messages", json={"to": CUSTOMER, "body": "Two", "reply_to": first_id}, headers=auth
    )
    assert second.status_code == 202, second.get_json()
    deliver(first_id)
    deliver(second.get_json()["id"])
    wamid = live.sends(herald_id=first_id)[-1]["provider_message_id"]
    request = live.sends(herald_id=second.get_json()["id"])[-1]["request"]
    assert request["context"] == {"message_id": wamid}


def test_inbound_reply_is_linked_to_the_message_it_answers(live, client, dispatched) -> None:
    t = _own_number(live)
    _inbound(live, t["phone_id"], body="hi")  # opens the window
    ours, sent = _send(client, t["auth"], live, body="Which colour?")
    wamid = _inbound(
        live, t["phone_id"], body="Blue", context_message_id=sent["provider_message_id"]
    )
    reply = wait_for(lambda: _by_wamid(wamid), what="reply stored")
    shown = client.get(f"/v1/messages/{reply.id}", headers=t["auth"]).get_json()
    assert shown["reply_to"] == ours.id
    assert shown["context"]["id"] == sent["provider_message_id"]


def test_inbound_reaction_location_contacts_sticker_are_kept(live, client, dispatched) -> None:
    t = _own_number(live)
    _inbound(live, t["phone_id"], body="hi")
    ours, sent = _send(client, t["auth"], live, body="Your car is ready")
    card = {"name": {"formatted_name": "Ana Lima"}, "phones": [{"phone": "+5511999999999"}]}
    kinds = {
        "reaction": {"reaction": {"message_id": sent["provider_message_id"], "emoji": "👍"}},
        "location": {"location": {"latitude": -23.5, "longitude": -46.6, "name": "Shop"}},
        "contacts": {"contacts": [card]},
        "sticker": {"sticker": True},
    }
    shown = {}
    for kind, fields in kinds.items():
        wamid = _inbound(live, t["phone_id"], **fields)
        row = wait_for(lambda w=wamid: _by_wamid(w), what=f"{kind} stored")
        shown[kind] = client.get(f"/v1/messages/{row.id}", headers=t["auth"]).get_json()
    assert shown["reaction"]["reaction"]["emoji"] == "👍"
    assert shown["reaction"]["reaction"]["target"] == ours.id
    assert shown["reaction"]["body"] == "👍"
    assert shown["location"]["location"]["latitude"] == -23.5
    assert shown["location"]["body"] == "Shop"
    assert shown["contacts"]["contacts"][0]["name"]["formatted_name"] == "Ana Lima"
    assert shown["sticker"]["sticker"]["mime_type"] == "image/webp"


def test_reaction_to_an_inbound_message(live, client, dispatched) -> None:
    t = _own_number(live)
    wamid = _inbound(live, t["phone_id"], body="Thanks!")
    inbound = wait_for(lambda: _by_wamid(wamid), what="inbound stored")
    message, sent = _send(
        client, t["auth"], live, reaction={"message_id": inbound.id, "emoji": "❤️"}
    )
    assert message.status in SENT
    assert sent["request"]["type"] == "reaction"
    assert sent["request"]["reaction"] == {"message_id": wamid, "emoji": "❤️"}
    assert "context" not in sent["request"]
    # Removing it: an empty emoji, the target given as reply_to.
    _, sent = _send(client, t["auth"], live, reaction={"emoji": ""}, reply_to=inbound.id)
    assert sent["request"]["reaction"] == {"message_id": wamid, "emoji": ""}


def test_reaction_to_a_message_never_received_fails_by_webhook(live, client, auth, dispatched):
    raw = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"
    message, sent = _send(client, auth, live, reaction={"message_id": raw, "emoji": "👍"})
    assert sent["status_code"] == 200  # Meta takes it, then reports 131009

    def failed():  # type: ignore[no-untyped-def]
        with session_scope() as session:
            row = session.get(Message, message.id)
            return row if row.status == "failed" else None

    row = wait_for(failed, what="reaction failed")
    assert row.provider_error_code == "131009"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"location": {"latitude": 38.7, "longitude": -9.1, "name": "HQ", "address": "Rua 1"}},
            {
                "type": "location",
                "location": {"latitude": 38.7, "longitude": -9.1, "name": "HQ", "address": "Rua 1"},
            },
        ),
        (
            {"contacts": [{"name": {"formatted_name": "Support", "first_name": "Support"}}]},
            {
                "type": "contacts",
                "contacts": [{"name": {"formatted_name": "Support", "first_name": "Support"}}],
            },
        ),
        (
            {"sticker": {"link": "https://example.com/thumbs-up.webp"}},
            {"type": "sticker", "sticker": {"link": "https://example.com/thumbs-up.webp"}},
        ),
        (
            {
                "media_url": "https://example.com/files/inv-1.pdf",
                "body": "Your invoice",
                "filename": "Invoice 1.pdf",
            },
            {
                "type": "document",
                "document": {
                    "link": "https://example.com/files/inv-1.pdf",
                    "caption": "Your invoice",
                    "filename": "Invoice 1.pdf",
                },
            },
        ),
    ],
    ids=["location", "contacts", "sticker", "document-filename"],
)
def test_outbound_kinds_reach_meta_in_its_shape(live, client, auth, dispatched, fields, expected):
    message, sent = _send(client, auth, live, **fields)
    assert message.status in SENT, message.error_message
    assert sent["status_code"] == 200
    for key, value in expected.items():
        assert sent["request"][key] == value


def test_mark_read_with_typing_reaches_meta(live, client, dispatched) -> None:
    t = _own_number(live)
    wamid = _inbound(live, t["phone_id"], body="Hello?")
    inbound = wait_for(lambda: _by_wamid(wamid), what="inbound stored")
    resp = client.post(f"/v1/messages/{inbound.id}/read", json={"typing": True}, headers=t["auth"])
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["read_at"]
    reads = live.control.get("/_sandbox/reads", params={"message_id": wamid}).json()["reads"]
    assert reads == [
        {
            "at": reads[0]["at"],
            "account": t["phone_id"],
            "message_id": wamid,
            "typing": True,
            "ok": True,
        }
    ]


def test_mark_read_of_a_message_meta_does_not_know_is_refused(live, client, dispatched) -> None:
    t = _own_number(live)
    wamid = _inbound(live, t["phone_id"], body="Hello?")
    inbound = wait_for(lambda: _by_wamid(wamid), what="inbound stored")
    with session_scope() as session:  # a wamid this number never received
        session.get(Message, inbound.id).provider_message_id = "wamid.bm90LWtub3du"
    resp = client.post(f"/v1/messages/{inbound.id}/read", headers=t["auth"])
    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "provider_refused"


def test_auto_mark_read_after_a_reply(live, client, dispatched) -> None:
    t = _own_number(live, auto_mark_read="true")
    wamid = _inbound(live, t["phone_id"], body="Any news?")
    wait_for(lambda: _by_wamid(wamid), what="inbound stored")
    assert live.control.get("/_sandbox/reads").json()["reads"] == []
    message, _ = _send(client, t["auth"], live, body="On its way")
    assert message.status in SENT
    reads = live.control.get("/_sandbox/reads", params={"message_id": wamid}).json()["reads"]
    assert [r["ok"] for r in reads] == [True]
    assert _by_wamid(wamid).read_at is not None


def test_mark_read_on_the_reply_itself(live, client, dispatched) -> None:
    t = _own_number(live)
    wamid = _inbound(live, t["phone_id"], body="Any news?")
    inbound = wait_for(lambda: _by_wamid(wamid), what="inbound stored")
    _send(client, t["auth"], live, body="Soon", reply_to=inbound.id, mark_read=True)
    reads = live.control.get("/_sandbox/reads", params={"message_id": wamid}).json()["reads"]
    assert [r["ok"] for r in reads] == [True]


def _graph(live, payload: dict[str, Any]) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(
        f"{live.sandbox.url}/v22.0/{META_PHONE_ID}/messages",
        json=payload,
        headers={"Authorization": f"Bearer {META_TOKEN}"},
    )


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"type": "reaction", "reaction": {"message_id": "wamid.eA==", "emoji": "ok"}}, 131009),
        ({"type": "location", "location": {"latitude": 91, "longitude": 0}}, 100),
        ({"type": "contacts", "contacts": [{"name": {"first_name": "A"}}]}, 131008),
        ({"type": "sticker", "sticker": {"link": "https://e.com/s.webp", "caption": "x"}}, 100),
        ({"type": "text", "text": {"body": "x"}, "context": {"message_id": 5}}, 100),
        ({"type": "image", "image": {"link": "https://e.com/a.jpg", "filename": "a.jpg"}}, 100),
    ],
    ids=["emoji", "latitude", "formatted_name", "sticker-caption", "context", "filename"],
)
def test_sandbox_refuses_what_meta_refuses(live, payload, code) -> None:
    resp = _graph(live, {"messaging_product": "whatsapp", "to": "12025550143", **payload})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == code and error["fbtrace_id"]


def test_sandbox_read_receipt_of_an_unknown_wamid_is_an_error(live) -> None:
    resp = _graph(
        live, {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.eHl6"}
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == 100
    resp = _graph(live, {"messaging_product": "whatsapp", "status": "read"})
    assert resp.json()["error"]["code"] == 131008
