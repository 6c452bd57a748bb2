"""Business-scoped user ids (BSUID): telling one from a phone number, Meta's send field
for each, the webhook fields Herald reads, and the sandbox refusing a malformed one."""

from __future__ import annotations

import pytest

from providers.base import OutboundMessage
from providers.meta import build_payload
from sandbox.meta_api import validate
from services.callbacks.meta import _people, _person_of, _sender_ids
from services.content.phones import is_bsuid, looks_like_bsuid, parse_bsuid

BSUID = "US.13491208655302741918"
PARENT = "US.ENT.11815799212886844830"


@pytest.mark.parametrize("good", [BSUID, PARENT, "BR.1502576394655843", "IN.a1B2c3"])
def test_bsuids_are_taken_as_meta_spells_them(good: str) -> None:
    assert looks_like_bsuid(good) and is_bsuid(good) and parse_bsuid(f" {good} ") == good


@pytest.mark.parametrize("bad", ["us.1349", "US.", "US.12-34", "USA.1234", "US." + "1" * 129])
def test_malformed_bsuids_are_refused(bad: str) -> None:
    assert not is_bsuid(bad)
    with pytest.raises(ValueError, match="business-scoped user id"):
        parse_bsuid(bad)


def test_a_phone_number_is_never_a_bsuid() -> None:
    assert not looks_like_bsuid("+12025550143") and not is_bsuid("+12025550143")
    assert not is_bsuid(None) and not is_bsuid("")


def test_a_send_to_a_bsuid_uses_recipient_and_a_number_to() -> None:
    base = {"herald_id": "msg_1", "channel": "whatsapp", "body": "Hi"}
    by_id = build_payload(OutboundMessage(**base, to=BSUID))
    assert by_id["recipient"] == BSUID and "to" not in by_id
    by_phone = build_payload(OutboundMessage(**base, to="+12025550143"))
    assert by_phone["to"] == "12025550143" and "recipient" not in by_phone


def test_inbound_sender_ids_from_a_username_user_without_a_phone() -> None:
    value = {
        "contacts": [{"profile": {"name": "Jane", "username": "jane.doe"}, "user_id": BSUID}],
        "messages": [{"from_user_id": BSUID, "id": "wamid.X", "type": "text"}],
    }
    people = _people(value)
    person = _person_of(value["messages"][0], people)
    assert person == {"user_id": BSUID, "name": "Jane", "username": "jane.doe"}
    assert _sender_ids(value["messages"][0], person) == (None, BSUID)


def test_sender_ids_keep_the_phone_and_drop_a_malformed_bsuid() -> None:
    item = {"from": "12025550143", "from_user_id": "not a bsuid", "id": "wamid.Y"}
    assert _sender_ids(item, {}) == ("+12025550143", None)
    people = _people({"contacts": [{"wa_id": "12025550143", "user_id": "bad"}]})
    assert "user_id" not in people[0]


def test_the_sandbox_refuses_a_malformed_recipient_with_code_100() -> None:
    base = {"messaging_product": "whatsapp", "type": "text", "text": {"body": "Hi"}}
    assert validate({**base, "recipient": BSUID}) is None
    assert validate({**base, "recipient": PARENT}) is None
    problem = validate({**base, "recipient": "us.123"})
    assert problem is not None and problem.startswith("(#100) Param recipient")
    assert validate(base) == "(#100) The parameter to is required."
    # With both, `to` wins (and a bad `recipient` beside a good `to` does not matter).
    assert validate({**base, "to": "12025550143", "recipient": "junk"}) is None


def test_a_malformed_bsuid_as_to_is_a_400_and_an_sms_to_a_bsuid_a_422(client, auth) -> None:
    bad = client.post("/v1/messages", json={"to": "US.12-34", "body": "x"}, headers=auth)
    assert bad.status_code == 400 and "business-scoped user id" in str(bad.get_json())
    sms = client.post(
        "/v1/messages", json={"to": BSUID, "channel": "sms", "body": "x"}, headers=auth
    )
    assert sms.status_code == 422
    assert sms.get_json()["error"]["code"] == "whatsapp_only_recipient"


def test_a_campaign_reaches_bsuids_on_whatsapp_only(client, auth, tenant, dispatched) -> None:
    from sqlalchemy import select

    from models import Contact, Message, session_scope

    with session_scope() as session:
        session.add(Contact(tenant_id=tenant["tenant_id"], wa_user_id=BSUID, external_id="u1"))
        session.add(Contact(tenant_id=tenant["tenant_id"], wa_user_id="BR.77", opted_out=True))
    recipients = [{"contact_id": "u1"}, {"to": PARENT}, {"to": "BR.77"}, {"to": "US.1-2"}]
    resp = client.post(
        "/v1/campaigns",
        json={
            "name": "By BSUID",
            "channel": "whatsapp",
            "template": {"name": "offer", "language": "en_US"},
            "recipients": recipients,
            "rate": 5,
        },
        headers=auth,
    )
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["total"] == 2 and body["counts"]["skipped"] == 1 and body["invalid"] == 1
    with session_scope() as session:
        rows = session.scalars(
            select(Message.to_number).where(Message.campaign_id == body["id"])
        ).all()
    assert sorted(rows) == sorted([BSUID, PARENT])
    sms = client.post(
        "/v1/campaigns",
        json={"name": "S", "channel": "sms", "body": "x", "recipients": [{"contact_id": "u1"}]},
        headers=auth,
    )
    assert sms.status_code == 400 and "whatsapp_only_recipient" in str(sms.get_json())


def test_the_console_shows_and_finds_a_username_user(app, tenant) -> None:
    from models import Contact, Message, session_scope, utcnow
    from tests.unit.test_console import sign_in

    with session_scope() as session:
        session.add(
            Contact(tenant_id=tenant["tenant_id"], wa_user_id=BSUID, wa_username="jane.doe")
        )
        now = utcnow()
        message = Message(
            tenant_id=tenant["tenant_id"],
            direction="inbound",
            channel="whatsapp",
            provider="meta",
            to_number="15550100001",
            from_number=BSUID,
            wa_user_id=BSUID,
            wa_username="jane.doe",
            status="received",
            meta={},
            created_at=now,
            updated_at=now,
        )
        session.add(message)
        session.flush()
        message_id = message.id
    console = app.test_client()
    sign_in(console, tenant["api_key"])
    html = console.get("/console/contacts?q=jane").get_data(as_text=True)
    assert BSUID in html and "@jane.doe" in html and "not shared" in html
    assert BSUID in console.get(f"/console/contacts?q={BSUID[:8]}").get_data(as_text=True)
    page = console.get(f"/console/messages/{message_id}").get_data(as_text=True)
    assert "WhatsApp user" in page and BSUID in page and "@jane.doe" in page


def test_cli_erase_by_bsuid(capsys, tenant) -> None:
    import json

    from herald.cli import main
    from models import Contact, session_scope

    with session_scope() as session:
        session.add(Contact(tenant_id=tenant["tenant_id"], wa_user_id=BSUID, wa_username="x"))
    assert main(["erase", "--user-id", BSUID, "--tenant", tenant["tenant_id"]]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["erased"]["contacts"] == 1 and BSUID not in out
    assert main(["erase", "--user-id", "us.1"]) == 2


def _change(phone_id: str, **value: object) -> dict:
    """A Meta `messages` webhook of one change to `phone_id`, carrying `value`'s lists."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550100001",
                                "phone_number_id": phone_id,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def _system(phone_id: str, wamid: str, system: dict, **sender: str) -> dict:
    message = {"id": wamid, "timestamp": "1780000000", "type": "system", "system": system}
    return _change(phone_id, messages=[{**message, **sender}])


def test_system_webhooks_move_the_identity_once_and_store_no_message(client) -> None:
    import uuid

    from sqlalchemy import select

    from models import Contact, Message, session_scope
    from tests.conftest import META_SECRET, META_TOKEN, make_tenant
    from tests.unit.test_webhooks import meta_post

    phone_id = "1" + str(uuid.uuid4().int)[:14]
    made = make_tenant(
        "sys",
        windows=(),
        meta={"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": META_SECRET},
    )
    old, new = "US.11111111111111111111", "US.22222222222222222222"
    with session_scope() as session:
        session.add(Contact(tenant_id=made["tenant_id"], phone="+12025550143", wa_user_id=old))
    changed_id = {"type": "user_changed_user_id", "user_id": new, "previous_user_id": old}
    payload = _system(phone_id, "wamid.SYS1", {"body": "…", **changed_id}, from_user_id=old)
    first = meta_post(client, payload).get_json()["received"]
    assert first["system"] == 1 and first["messages"] == 0
    again = meta_post(client, payload).get_json()["received"]
    assert again["duplicates"] == 1 and again.get("system", 0) == 0
    changed_number = {
        "type": "user_changed_number",
        "wa_id": "12025550199",
        "user_id": "US.33333333333333333333",
        "previous_user_id": new,
    }
    meta_post(client, _system(phone_id, "wamid.SYS2", changed_number, **{"from": "12025550143"}))
    unknown = {"type": "user_changed_user_id", "user_id": "US.5", "previous_user_id": "US.4"}
    assert meta_post(client, _system(phone_id, "wamid.SYS3", unknown)).status_code == 200
    odd = meta_post(client, _system(phone_id, "wamid.SYS4", {"type": "customer_identity_changed"}))
    assert odd.get_json()["received"]["invalid"] == 1
    with session_scope() as session:
        contacts = session.scalars(
            select(Contact).where(Contact.tenant_id == made["tenant_id"])
        ).all()
        stored = session.scalars(
            select(Message).where(Message.tenant_id == made["tenant_id"])
        ).all()
    assert [(c.phone, c.wa_id, c.wa_user_id) for c in contacts] == [
        ("+12025550199", "+12025550199", "US.33333333333333333333")
    ]
    assert stored == [] and contacts[0].last_inbound_at is None  # no window opened


def test_a_status_never_takes_another_persons_bsuid(client) -> None:
    """One change: A's `failed` (no `recipient_user_id`, no contact: Meta sends none on a
    failure) batched with B's `delivered` and B's contact. A's message and contact must
    not get B's BSUID (the only contact entry), or B's next inbound lands on A."""
    import uuid

    from sqlalchemy import select

    from models import Contact, Message, ProviderAccount, session_scope
    from tests.conftest import META_SECRET, META_TOKEN, make_tenant
    from tests.unit.test_webhooks import meta_post

    phone_id = "1" + str(uuid.uuid4().int)[:14]
    made = make_tenant(
        "two-people",
        windows=(),
        meta={"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": META_SECRET},
    )
    a, b, b_user = "+12025550171", "+12025550172", "US.77777777777777777777"
    wamid_a, wamid_b = f"wamid.{uuid.uuid4().hex}", f"wamid.{uuid.uuid4().hex}"  # the test's own
    ids = {}
    with session_scope() as session:
        account = session.scalars(
            select(ProviderAccount.id).where(
                ProviderAccount.tenant_id == made["tenant_id"], ProviderAccount.provider == "meta"
            )
        ).one()
        for phone, wamid in ((a, wamid_a), (b, wamid_b)):
            session.add(Contact(tenant_id=made["tenant_id"], phone=phone))
            row = Message(
                tenant_id=made["tenant_id"],
                direction="outbound",
                channel="whatsapp",
                provider="meta",
                provider_account_id=account,
                to_number=phone,
                status="sent",
                provider_message_id=wamid,
                body="hi",
                attempts=1,
                meta={},
            )
            session.add(row)
            session.flush()
            ids[phone] = row.id
    failed = {
        "id": wamid_a,
        "status": "failed",
        "timestamp": "1780000000",
        "recipient_id": a[1:],
        "errors": [{"code": 131026, "title": "Message undeliverable"}],
    }
    delivered = {
        "id": wamid_b,
        "status": "delivered",
        "timestamp": "1780000000",
        "recipient_id": b[1:],
        "recipient_user_id": b_user,
    }
    payload = _change(
        phone_id,
        contacts=[{"wa_id": b[1:], "user_id": b_user, "profile": {"name": "B"}}],
        statuses=[failed, delivered],
    )
    assert meta_post(client, payload).status_code == 200
    with session_scope() as session:
        assert session.get(Message, ids[a]).wa_user_id is None
        assert session.get(Message, ids[b]).wa_user_id == b_user
        users = {
            c.phone: c.wa_user_id
            for c in session.query(Contact).filter(Contact.tenant_id == made["tenant_id"])
        }
    assert users == {a: None, b: b_user}


def test_a_bsuid_through_twilio_whatsapp_is_a_422_before_anything_is_stored(
    client, auth, dispatched
) -> None:
    """Twilio addresses WhatsApp users by number only: a BSUID with provider twilio is
    refused at once, not accepted and then failed by Twilio (21211)."""
    from models import Message, session_scope

    user = "US.80808080808080808080"  # this test's own person

    refused = client.post(
        "/v1/messages",
        json={"to": user, "channel": "whatsapp", "provider": "twilio", "body": "x"},
        headers=auth,
    )
    assert refused.status_code == 422, refused.get_json()
    assert refused.get_json()["error"]["code"] == "whatsapp_only_recipient"
    with session_scope() as session:
        assert session.query(Message).filter(Message.wa_user_id == user).count() == 0
    assert dispatched == []
    meta = client.post(
        "/v1/messages",
        json={"to": user, "channel": "whatsapp", "provider": "meta", "body": "x"},
        headers=auth,
    )
    assert meta.status_code in (202, 422), meta.get_json()  # 422: the window, never the id
    if meta.status_code == 422:
        assert meta.get_json()["error"]["code"] != "whatsapp_only_recipient"
