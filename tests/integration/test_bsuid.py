"""WhatsApp business-scoped user ids (BSUID) and usernames, end to end against the
sandbox: a user with a username who shares no phone number writes, is answered by BSUID
and by contact, has statuses that name them by BSUID alone applied, opts out with STOP,
and changes BSUID and number without becoming a second contact."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from models import Contact, Message, session_scope
from services.messages.delivery import deliver
from tests.conftest import META_SECRET, META_TOKEN, make_tenant
from tests.integration.conftest import wait_for

TEMPLATE = {"name": "order_update", "language": "en_US", "variables": ["123"]}


def _own_number(live: Any) -> tuple[dict[str, str], dict[str, str]]:
    phone_id = "1" + str(uuid.uuid4().int)[:14]
    meta = {"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": META_SECRET}
    live.control.post("/_sandbox/accounts", json={"provider": "meta", **meta}).raise_for_status()
    tenant = {**make_tenant("bsuid", windows=(), meta=meta), "phone_id": phone_id}
    return tenant, {"Authorization": f"Bearer {tenant['api_key']}"}


def _user(live: Any, tenant: dict[str, str], **fields: Any) -> dict[str, Any]:
    resp = live.control.post("/_sandbox/users", json={"account": tenant["phone_id"], **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()


def _inbound(live: Any, tenant: dict[str, str], body: str, **sender: Any) -> dict[str, Any]:
    answer = live.control.post(
        "/_sandbox/inbound",
        json={"provider": "meta", "to": tenant["phone_id"], "body": body, **sender},
    ).json()
    assert answer["status_code"] == 200 and answer["ok"], answer
    return answer


def _contacts(tenant_id: str) -> list[Contact]:
    with session_scope() as session:
        return list(session.scalars(select(Contact).where(Contact.tenant_id == tenant_id)))


def _status(message_id: str) -> str:
    with session_scope() as session:
        return session.get(Message, message_id).status


def test_a_username_user_without_a_phone_is_answered_opted_out_and_tracked(live, client) -> None:
    tenant, auth = _own_number(live)
    user = _user(live, tenant, username="jane.doe", profile_name="Jane")
    assert user["phone"] is None and user["user_id"].startswith("US.")
    bsuid = user["user_id"]

    answer = _inbound(live, tenant, "Is my order ready?", from_user_id=bsuid)
    item = answer["payload"]["entry"][0]["changes"][0]["value"]
    assert "from" not in item["messages"][0] and "wa_id" not in item["contacts"][0]  # as Meta
    wamid = answer["message_id"]

    with session_scope() as session:
        inbound = session.scalars(select(Message).where(Message.provider_message_id == wamid)).one()
        assert inbound.tenant_id == tenant["tenant_id"]  # routed to the tenant
        assert (inbound.from_number, inbound.wa_user_id, inbound.wa_username) == (
            bsuid,
            bsuid,
            "jane.doe",
        )
    (contact,) = _contacts(tenant["tenant_id"])
    assert (contact.phone, contact.wa_user_id, contact.wa_username) == (None, bsuid, "jane.doe")
    shown = client.get(f"/v1/contacts/{contact.id}", headers=auth).get_json()
    assert (shown["wa_user_id"], shown["wa_username"], shown["window_open"]) == (
        bsuid,
        "jane.doe",
        True,
    )

    # Answered within the window, addressed by BSUID: sent as Meta's `recipient`.
    reply = client.post("/v1/messages", json={"to": bsuid, "body": "Yes!"}, headers=auth)
    assert reply.status_code == 202, reply.get_json()
    assert reply.get_json()["wa_user_id"] == bsuid
    reply_id = reply.get_json()["id"]
    deliver(reply_id)
    (sent,) = live.sends(herald_id=reply_id)
    assert sent["request"]["recipient"] == bsuid and "to" not in sent["request"]
    # Its statuses name the user by BSUID alone (no recipient_id): applied all the same.
    wait_for(lambda: _status(reply_id) == "read", what="statuses applied")
    statuses = [
        s
        for c in live.control.get("/_sandbox/callbacks", params={"provider": "meta"}).json()[
            "callbacks"
        ]
        for s in _statuses(c)
        if s.get("biz_opaque_callback_data") == reply_id
    ]
    assert statuses and all(
        "recipient_id" not in s and s["recipient_user_id"] == bsuid for s in statuses
    )
    shown = client.get(f"/v1/messages/{reply_id}", headers=auth).get_json()
    assert (shown["wa_user_id"], shown["wa_username"]) == (bsuid, "jane.doe")  # from `read`

    # Answered through the contact too.
    by_contact = client.post(
        "/v1/messages", json={"contact_id": contact.id, "body": "And again"}, headers=auth
    )
    assert by_contact.status_code == 202, by_contact.get_json()
    assert by_contact.get_json()["to"] == bsuid
    # An SMS cannot reach a BSUID: a clear refusal.
    sms = client.post(
        "/v1/messages", json={"to": bsuid, "channel": "sms", "body": "x"}, headers=auth
    )
    assert sms.status_code == 422 and sms.get_json()["error"]["code"] == "whatsapp_only_recipient"

    # STOP from the username user opts the person out.
    _inbound(live, tenant, "STOP", from_user_id=bsuid)
    refused = client.post("/v1/messages", json={"to": bsuid, "template": TEMPLATE}, headers=auth)
    assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "opted_out"
    assert len(_contacts(tenant["tenant_id"])) == 1


def _statuses(callback: dict[str, Any]) -> list[dict[str, Any]]:
    payload = callback.get("payload") or {}
    return [
        s
        for entry in payload.get("entry", [])
        for change in entry.get("changes", [])
        for s in change.get("value", {}).get("statuses", [])
    ]


def test_bsuid_and_number_changes_move_the_person_not_fork_it(live, client) -> None:
    tenant, auth = _own_number(live)
    phone = "+12025550143"
    _inbound(live, tenant, "Hello", **{"from": phone})
    (contact,) = _contacts(tenant["tenant_id"])
    first_bsuid = contact.wa_user_id
    assert contact.phone == phone and first_bsuid and first_bsuid.startswith("US.")

    changed = live.control.post(
        "/_sandbox/users/change",
        json={"account": tenant["phone_id"], "type": "user_changed_user_id", "phone": phone},
    ).json()
    assert changed["ok"], changed
    system = changed["payload"]["entry"][0]["changes"][0]["value"]["messages"][0]["system"]
    assert system["previous_user_id"] == first_bsuid
    (contact,) = _contacts(tenant["tenant_id"])
    assert contact.wa_user_id == system["user_id"] != first_bsuid
    # The new BSUID writes (with the number now hidden): still the same person.
    _inbound(live, tenant, "still me", from_user_id=system["user_id"])
    assert len(_contacts(tenant["tenant_id"])) == 1

    new_phone = "+12025550188"
    changed = live.control.post(
        "/_sandbox/users/change",
        json={
            "account": tenant["phone_id"],
            "type": "user_changed_number",
            "user_id": system["user_id"],
            "new_phone": new_phone,
        },
    ).json()
    assert changed["ok"], changed
    system = changed["payload"]["entry"][0]["changes"][0]["value"]["messages"][0]["system"]
    (contact,) = _contacts(tenant["tenant_id"])  # moved, not forked
    assert (contact.phone, contact.wa_user_id) == (new_phone, system["user_id"])
    assert contact.last_inbound_at is not None
    # No message row for a system message, and the window stays the person's.
    with session_scope() as session:
        rows = session.scalars(
            select(Message).where(
                Message.tenant_id == tenant["tenant_id"], Message.direction == "inbound"
            )
        ).all()
        assert len(rows) == 2
    assert (
        client.post("/v1/messages", json={"to": new_phone, "body": "hi"}, headers=auth).status_code
        == 202
    )


def test_erasure_by_bsuid_erases_the_username_user(live, client) -> None:
    tenant, auth = _own_number(live)
    user = _user(live, tenant, username="gone.soon")
    answer = _inbound(live, tenant, "please forget me", from_user_id=user["user_id"])
    resp = client.post("/v1/erasures", json={"user_id": user["user_id"]}, headers=auth)
    assert resp.status_code in (200, 201, 202), resp.get_json()
    assert _contacts(tenant["tenant_id"]) == []
    with session_scope() as session:
        row = session.scalars(
            select(Message).where(Message.provider_message_id == answer["message_id"])
        ).one()
        assert (row.body, row.wa_user_id, row.wa_username) == (None, None, None)
        assert user["user_id"] not in (row.from_number or "")
    bad = client.post("/v1/erasures", json={"user_id": "us.1"}, headers=auth)
    assert bad.status_code == 400


def test_a_phone_contact_that_hides_its_number_stays_the_same_person(live, client) -> None:
    tenant, auth = _own_number(live)
    phone = "+12025550143"
    made = client.post("/v1/contacts", json={"phone": phone, "id": "crm-7"}, headers=auth)
    assert made.status_code == 201, made.get_json()
    sent = client.post("/v1/messages", json={"to": phone, "template": TEMPLATE}, headers=auth)
    assert sent.status_code == 202, sent.get_json()
    deliver(sent.get_json()["id"])
    # Its statuses name the BSUID (`recipient_user_id`): the contact learns it.
    wait_for(lambda: _contacts(tenant["tenant_id"])[0].wa_user_id is not None, what="BSUID learnt")
    (contact,) = _contacts(tenant["tenant_id"])
    bsuid = contact.wa_user_id
    # The user adopts a username and hides the number: Meta sends the BSUID alone.
    answer = _inbound(live, tenant, "hi", **{"from": phone, "username": "sam", "hide_phone": True})
    assert "from" not in answer["payload"]["entry"][0]["changes"][0]["value"]["messages"][0]
    (contact,) = _contacts(tenant["tenant_id"])  # one person, its window open
    assert (contact.external_id, contact.phone, contact.wa_user_id) == ("crm-7", phone, bsuid)
    assert contact.wa_username == "sam" and contact.last_inbound_at is not None
    free = client.post("/v1/messages", json={"to": phone, "body": "Hello Sam"}, headers=auth)
    assert free.status_code == 202, free.get_json()
    _inbound(live, tenant, "STOP", from_user_id=bsuid)
    refused = client.post("/v1/messages", json={"to": phone, "template": TEMPLATE}, headers=auth)
    assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "opted_out"


def test_events_out_name_the_bsuid_and_username(live, client) -> None:
    from services.reporting.events import deliver_pending_events
    from tests.integration.test_events_out import Receiver

    tenant, auth = _own_number(live)
    user = _user(live, tenant, username="ev.user")
    _inbound(live, tenant, "hello", from_user_id=user["user_id"])
    receiver = Receiver()
    try:
        resp = client.post(
            "/v1/messages",
            json={"to": user["user_id"], "body": "hi", "callback_url": receiver.url},
            headers=auth,
        )
        mid = resp.get_json()["id"]
        deliver(mid)
        wait_for(lambda: _status(mid) == "read", what="read")
        deliver_pending_events(mid)
        events = [e["message"] for e, _sig, _raw in receiver.events]
        assert events and all(e["wa_user_id"] == user["user_id"] for e in events)
        assert events[-1]["status"] == "read" and events[-1]["wa_username"] == "ev.user"
    finally:
        receiver.server.shutdown()


def test_an_authentication_template_to_a_bsuid_fails_as_meta_refuses_it(live, client) -> None:
    tenant, auth = _own_number(live)
    user = _user(live, tenant, username="otp.user")
    resp = client.post(
        "/v1/messages",
        json={"to": user["user_id"], "template": {"name": "otp_login", "language": "en_US"}},
        headers=auth,
    )
    assert resp.status_code == 202, resp.get_json()
    deliver(resp.get_json()["id"])
    shown = client.get(f"/v1/messages/{resp.get_json()['id']}", headers=auth).get_json()
    assert shown["status"] == "failed"
    assert shown["error"]["provider_code"] == "131062"
    assert shown["error"]["code"] == "bsuid_not_supported"


def test_the_sandbox_phone_writes_as_a_username_user(live, app) -> None:
    from tests.unit.test_console import _csrf, sign_in

    tenant, _ = _own_number(live)
    user = _user(live, tenant, username="phone.user")
    console = app.test_client()
    sign_in(console, tenant["api_key"])
    token = _csrf(console, "/console/")
    path = f"/console/phone/{user['user_id']}/reply"
    resp = console.post(path, data={"csrf_token": token, "action": "reply", "body": "Hi there"})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    thread = console.get(f"/console/phone/{user['user_id']}/thread").get_data(as_text=True)
    assert "Hi there" in thread and 'class="badge ok">open<' in thread
    (contact,) = _contacts(tenant["tenant_id"])
    assert (contact.phone, contact.wa_user_id) == (None, user["user_id"])
    sms = console.post(
        path, data={"csrf_token": token, "action": "reply", "body": "x", "channel": "sms"}
    )
    assert sms.status_code == 400
