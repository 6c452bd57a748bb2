"""Erasing a person (services/privacy/): the doors (tenant API, admin API, CLI), bad input,
unknown ids, idempotence, and the opt-out that outlives the contact row."""

from __future__ import annotations

import json
import random
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from core.config import get_settings
from models import Contact, Message, Suppression, session_scope, utcnow
from services.privacy.suppression import number_hash, suppress
from tests.conftest import META_SECRET, META_TOKEN
from tests.conftest import make_tenant as _make_tenant
from tests.unit.test_policy import inbound


def make_tenant(*args, **kwargs) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A test tenant the operator lets text Brazil too (the SMS pumping guard,
    services/policy/destinations.py): the people erased here have Brazilian numbers."""
    from sqlalchemy import update as _update

    from models import Tenant as _Tenant
    from models import session_scope as _scope

    made = _make_tenant(*args, **kwargs)
    with _scope() as session:
        session.execute(
            _update(_Tenant)
            .where(_Tenant.id == made["tenant_id"])
            .values(sms_countries=["US", "BR"])
        )
    return made


def _number() -> str:
    """A Brazilian mobile of this test alone (+55 11 9xxxx-xxxx): its WhatsApp id
    differs (no ninth digit), so both forms are exercised."""
    return "+55119" + str(random.randint(6, 9)) + "".join(random.choices("0123456789", k=7))


def _sms_campaign(client, auth, name: str, *numbers: str) -> dict:  # type: ignore[no-untyped-def]
    """Create an SMS campaign to these numbers; its JSON."""
    campaign = {
        "name": name,
        "channel": "sms",
        "body": "Spring sale",
        "rate": 5,
        "recipients": [{"to": n} for n in numbers],
    }
    made = client.post("/v1/campaigns", json=campaign, headers=auth)
    assert made.status_code == 201, made.get_json()
    return made.get_json()


@pytest.fixture
def tenant() -> dict[str, str]:
    """A business with its own WhatsApp number, so inbound messages reach it alone."""
    phone_id = "1" + str(uuid.uuid4().int)[:14]
    made = make_tenant(
        "erase",
        windows=(),
        meta={"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": META_SECRET},
    )
    return {**made, "phone_id": phone_id}


@pytest.fixture
def auth(tenant: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant['api_key']}"}


TEMPLATE = {"name": "order_update", "language": "en_US", "variables": ["1"]}


def _send(client, auth, to: str, **fields):  # type: ignore[no-untyped-def]
    return client.post("/v1/messages", json={"to": to, **fields}, headers=auth)


def _rows(tenant_id: str, number: str) -> tuple[int, int]:
    """(contacts, messages) of the tenant still naming the number."""
    with session_scope() as session:
        contacts = session.scalar(
            select(func.count())
            .select_from(Contact)
            .where(Contact.tenant_id == tenant_id, Contact.phone == number)
        )
        messages = session.scalar(
            select(func.count())
            .select_from(Message)
            .where(
                Message.tenant_id == tenant_id,
                (Message.to_number == number) | (Message.from_number == number),
            )
        )
        return contacts or 0, messages or 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "phone"),
        ({"phone": "+12025550143", "wa_id": "12025550143"}, "phone"),
        ({"phone": "12345"}, "phone"),
        ({"phone": "+1 call me"}, "phone"),
        ({"phone": 12025550143}, "phone"),
        ({"wa_id": "12ab"}, "wa_id"),
        ({"wa_id": ""}, "wa_id"),
        ({"phone": "+12025550143", "tenant_id": "ten_x"}, "tenant_id"),
        ({"phone": "+12025550143", "extra": 1}, "extra"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(client, auth, body, field) -> None:
    resp = client.post("/v1/erasures", json=body, headers=auth)
    assert resp.status_code == 400, resp.get_json()
    assert field in resp.get_json()["error"]["fields"]


def test_not_json_or_not_an_object_is_a_400(client, auth) -> None:
    assert client.post("/v1/erasures", json=["+12025550143"], headers=auth).status_code == 400
    resp = client.post("/v1/erasures", data="{", content_type="application/json", headers=auth)
    assert resp.status_code == 400


def test_erasure_needs_a_key(client) -> None:
    assert client.post("/v1/erasures", json={"phone": "+12025550143"}).status_code == 401
    assert client.delete("/v1/contacts/con_x").status_code == 401


def test_unknown_or_another_tenants_contact_is_404(client, auth) -> None:
    assert client.delete("/v1/contacts/con_nope", headers=auth).status_code == 404
    other = make_tenant("other", windows=())
    other_auth = {"Authorization": f"Bearer {other['api_key']}"}
    number = _number()
    made = client.post("/v1/contacts", json={"phone": number, "id": "u-1"}, headers=other_auth)
    assert made.status_code == 201
    for contact_id in ("u-1", made.get_json()["herald_id"]):
        resp = client.delete(f"/v1/contacts/{contact_id}", headers=auth)
        assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    assert _rows(other["tenant_id"], number) == (1, 0)  # untouched


def test_delete_contact_erases_and_is_idempotent(client, auth, tenant, dispatched) -> None:
    number = _number()
    assert client.post("/v1/contacts", json={"phone": number, "id": "crm-7"}, headers=auth)
    assert _send(client, auth, number, template=TEMPLATE).status_code == 202
    resp = client.delete("/v1/contacts/crm-7", headers=auth)
    assert resp.status_code == 200, resp.get_json()
    done = resp.get_json()
    assert done["erased"]["contacts"] == 1 and done["erased"]["messages"] == 1
    assert done["canceled_messages"] == 1  # it was still queued
    assert done["tenants"] == [tenant["tenant_id"]]
    assert _rows(tenant["tenant_id"], number) == (0, 0)
    assert client.delete("/v1/contacts/crm-7", headers=auth).status_code == 404
    again = client.post("/v1/erasures", json={"phone": number}, headers=auth)
    assert again.status_code == 200
    assert set(again.get_json()["erased"].values()) == {0}


def test_an_erased_person_who_opted_out_is_never_messaged_again(
    client, auth, tenant, dispatched
) -> None:
    number = _number()
    inbound(client, tenant, number, "STOP")  # Meta writes from the WhatsApp id form
    assert _send(client, auth, number, template=TEMPLATE).get_json()["error"]["code"] == (
        "opted_out"
    )
    done = client.post("/v1/erasures", json={"phone": number}, headers=auth).get_json()
    assert done["erased"]["contacts"] == 1 and done["suppressions"] >= 2
    with session_scope() as session:
        assert (
            session.scalars(select(Contact).where(Contact.tenant_id == tenant["tenant_id"])).all()
            == []
        )
        hashes = session.scalars(
            select(Suppression.number_hash).where(Suppression.tenant_id == tenant["tenant_id"])
        ).all()
    assert number_hash(tenant["tenant_id"], number) in hashes
    assert all(number.lstrip("+") not in h for h in hashes)
    wa_id = number[:5] + number[6:]  # the form without the ninth digit
    for to, channel in ((number, "whatsapp"), (wa_id, "whatsapp"), (number, "sms")):
        refused = _send(client, auth, to, template=TEMPLATE, channel=channel)
        if channel == "sms":
            refused = _send(client, auth, to, body="hello", channel="sms")
        answer = (refused.status_code, refused.get_json()["error"]["code"])
        # (the WhatsApp id form may not be a valid number to dial: then a 400)
        assert answer == (422, "opted_out") or (
            to == wa_id and answer == (400, "invalid_fields")
        ), (to, channel, refused.get_json())
    # A new contact row for the number (created by the tenant) does not undo the promise.
    assert client.post("/v1/contacts", json={"phone": number}, headers=auth).status_code == 201
    assert _send(client, auth, number, body="hi", channel="sms").status_code == 422
    # Another tenant never had this person's opt-out: its sends go.
    other = make_tenant("other", windows=())
    other_auth = {"Authorization": f"Bearer {other['api_key']}"}
    assert _send(client, other_auth, number, body="hi", channel="sms").status_code == 202


def test_start_from_an_erased_number_lifts_its_suppression(
    client, auth, tenant, dispatched
) -> None:
    number = _number()
    inbound(client, tenant, number, "STOP")
    assert client.post("/v1/erasures", json={"phone": number}, headers=auth).status_code == 200
    inbound(client, tenant, number, "hello again")  # not a keyword: still suppressed
    assert _send(client, auth, number, body="hi", channel="sms").status_code == 422
    inbound(client, tenant, number, "START")
    assert _send(client, auth, number, body="welcome back", channel="sms").status_code == 202


def test_a_send_already_queued_to_a_suppressed_number_fails_at_claim(
    client, auth, tenant, dispatched
) -> None:
    from services.messages.delivery import deliver

    number = _number()
    mid = _send(client, auth, number, body="hi", channel="sms").get_json()["id"]
    with session_scope() as session:
        suppress(session, tenant["tenant_id"], [number])
    deliver(mid)
    got = client.get(f"/v1/messages/{mid}", headers=auth).get_json()
    assert got["status"] == "failed" and got["error"]["code"] == "opted_out"


def test_a_campaign_skips_an_erased_person_who_opted_out(client, auth, tenant, dispatched) -> None:
    """Counted `skipped` at creation like any opt-out (in either WhatsApp form of the
    number), not written to fail at the claim."""
    number, other = _number(), _number()
    with session_scope() as session:
        suppress(session, tenant["tenant_id"], [number])
    wa_id = number[:5] + number[6:]  # the form without the ninth digit
    body = _sms_campaign(client, auth, "after erasure", number, other)
    assert body["counts"]["skipped"] == 1 and body["total"] == 1, body
    with session_scope() as session:
        written = session.scalars(
            select(Message.to_number).where(Message.campaign_id == body["id"])
        ).all()
    assert written == [other] and wa_id not in written


def test_tenant_erasure_leaves_other_tenants_alone(client, auth, tenant, dispatched) -> None:
    number = _number()
    other = make_tenant("other", windows=())
    other_auth = {"Authorization": f"Bearer {other['api_key']}"}
    for headers in (auth, other_auth):
        assert client.post("/v1/contacts", json={"phone": number}, headers=headers)
        assert _send(client, headers, number, body="hi", channel="sms").status_code == 202
    done = client.post("/v1/erasures", json={"wa_id": number.lstrip("+")}, headers=auth)
    assert done.status_code == 200 and done.get_json()["tenants"] == [tenant["tenant_id"]]
    assert _rows(tenant["tenant_id"], number) == (0, 0)
    assert _rows(other["tenant_id"], number) == (1, 1)


def test_admin_erasure_reaches_every_tenant_or_one(client, admin, dispatched) -> None:
    number = _number()
    tenants = [make_tenant(f"t{i}", windows=()) for i in range(3)]
    for made in tenants:
        headers = {"Authorization": f"Bearer {made['api_key']}"}
        assert client.post("/v1/contacts", json={"phone": number}, headers=headers)
    one = client.post(
        "/admin/v1/erasures",
        json={"phone": number, "tenant_id": tenants[0]["tenant_id"]},
        headers=admin,
    )
    assert one.status_code == 200 and one.get_json()["erased"]["contacts"] == 1
    assert [_rows(t["tenant_id"], number)[0] for t in tenants] == [0, 1, 1]
    every = client.post("/admin/v1/erasures", json={"phone": number}, headers=admin)
    assert every.status_code == 200 and every.get_json()["erased"]["contacts"] == 2
    assert sorted(every.get_json()["tenants"]) == sorted(t["tenant_id"] for t in tenants[1:])
    assert [_rows(t["tenant_id"], number)[0] for t in tenants] == [0, 0, 0]
    unknown = client.post(
        "/admin/v1/erasures", json={"phone": number, "tenant_id": "ten_nope"}, headers=admin
    )
    assert unknown.status_code == 404
    assert client.post("/admin/v1/erasures", json={"phone": "x"}, headers=admin).status_code == 400
    assert client.post("/admin/v1/erasures", json={"phone": number}).status_code == 401


def test_admin_erasure_is_off_without_a_token(client) -> None:
    assert client.post("/admin/v1/erasures", json={"phone": "+12025550143"}).status_code == 404


def test_cli_erase(capsys, client, dispatched) -> None:
    from herald.cli import main

    number = _number()
    made = make_tenant("cli", windows=())
    headers = {"Authorization": f"Bearer {made['api_key']}"}
    assert client.post("/v1/contacts", json={"phone": number, "name": "Ana"}, headers=headers)
    assert main(["erase", "--phone", number, "--tenant", made["tenant_id"]]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["erased"]["contacts"] == 1
    assert number not in out and number.lstrip("+") not in out
    assert main(["erase", "--wa-id", number.lstrip("+")]) == 0
    assert json.loads(capsys.readouterr().out)["erased"]["contacts"] == 0
    assert main(["erase", "--phone", "not a number"]) == 2
    assert "phone" in capsys.readouterr().err
    assert main(["erase", "--phone", number, "--tenant", "ten_nope"]) == 2


def test_pending_callbacks_and_campaign_rows(client, auth, tenant, dispatched) -> None:
    """A callback still in the inbox naming the person goes, unless another tenant's
    account signed it too; a campaign row is redacted and the campaign still counts it."""
    from models import WebhookInbox

    number, other_number = _number(), _number()
    with session_scope() as session:
        accounts = (
            session.execute(
                text("SELECT id FROM provider_accounts WHERE tenant_id = :t"),
                {"t": tenant["tenant_id"]},
            )
            .scalars()
            .all()
        )
        for n, signers in ((1, accounts), (2, [*accounts, "acc_of_another_tenant"])):
            session.add(
                WebhookInbox(
                    provider="twilio",
                    kind="status",
                    dedup_key=f"erase-test:{uuid.uuid4()}:{n}",
                    accounts=signers,
                    payload={"To": number, "MessageStatus": "delivered"},
                    next_attempt_at=utcnow() + timedelta(hours=1),  # not applied meanwhile
                )
            )
    made = _sms_campaign(client, auth, "spring", number, other_number)
    done = client.post("/v1/erasures", json={"phone": number}, headers=auth).get_json()
    assert done["erased"]["webhook_inbox"] == 1 and done["erased"]["messages"] == 1
    with session_scope() as session:
        left = (
            session.execute(
                text("SELECT accounts::text FROM webhook_inbox WHERE payload::text LIKE :n"),
                {"n": f"%{number.lstrip('+')}%"},
            )
            .scalars()
            .all()
        )
    assert len(left) == 1 and "acc_of_another_tenant" in left[0]
    shown = client.get(f"/v1/campaigns/{made['id']}", headers=auth)
    assert shown.status_code == 200 and shown.get_json()["total"] == 2
    assert _rows(tenant["tenant_id"], number) == (0, 0)
    assert _rows(tenant["tenant_id"], other_number) == (0, 1)
    listed = client.get("/v1/messages?limit=10", headers=auth)
    assert listed.status_code == 200
    assert {m["to"][:7] for m in listed.get_json()["data"]} == {"erased:", other_number[:7]}


def test_suppressions_survive_a_rotation_of_the_secret_key(
    client, auth, tenant, dispatched, monkeypatch
) -> None:
    """`herald secrets rotate` then dropping the old key: the hashes still match (their
    key is stored encrypted and re-encrypted, not derived from HERALD_SECRET_KEY)."""
    from cryptography.fernet import Fernet

    from services.privacy import suppression
    from services.tenancy.secrets import rotate_stored_secrets

    def use(current: str, previous: str | None) -> None:
        monkeypatch.setenv("HERALD_SECRET_KEY", current)
        if previous is None:
            monkeypatch.delenv("HERALD_SECRET_KEY_PREVIOUS", raising=False)
        else:
            monkeypatch.setenv("HERALD_SECRET_KEY_PREVIOUS", previous)
        get_settings.cache_clear()
        suppression._keyed.clear()  # as a process started after the change

    number = _number()
    inbound(client, tenant, number, "STOP")
    assert client.post("/v1/erasures", json={"phone": number}, headers=auth).status_code == 200
    old, new = get_settings().secret_key, Fernet.generate_key().decode()
    assert old is not None
    try:
        use(new, old)
        with session_scope() as session:
            assert rotate_stored_secrets(session)[1] == []
        use(new, None)  # the old key is gone
        refused = _send(client, auth, number, body="hi", channel="sms")
        assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "opted_out"
    finally:
        use(old, new)
        with session_scope() as session:
            rotate_stored_secrets(session)
        monkeypatch.undo()
        get_settings.cache_clear()
        suppression._keyed.clear()


def test_an_unreadable_suppression_key_is_a_503_not_a_500(client, auth, monkeypatch) -> None:
    """HERALD_SECRET_KEY changed without HERALD_SECRET_KEY_PREVIOUS: opt-outs cannot be
    checked, so nothing is accepted, and the answer says why."""
    from cryptography.fernet import Fernet

    from services.privacy import suppression

    number = _number()
    assert _send(client, auth, number, body="hi", channel="sms").status_code == 202  # key made
    monkeypatch.setenv("HERALD_SECRET_KEY", Fernet.generate_key().decode())
    monkeypatch.delenv("HERALD_SECRET_KEY_PREVIOUS", raising=False)
    get_settings.cache_clear()
    suppression._keyed.clear()
    try:
        resp = _send(client, auth, number, body="hi", channel="sms")
        assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "secret_key_mismatch"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        suppression._keyed.clear()
