"""WhatsApp ids that differ from the number dialled (Brazil's ninth digit, Mexico's 521,
Argentina's 549), and Meta errors that come outside `statuses`, against the sandbox."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from models import Contact, Message, WebhookEvent, session_scope
from services.messages.delivery import deliver
from tests.conftest import META_SECRET, META_TOKEN, make_tenant

# (dialled, the WhatsApp id Meta answers and writes from)
CASES = [
    ("+5592981723241", "+559281723241"),  # Brazil, area 92: id without the ninth digit
    ("+525512345678", "+5215512345678"),  # Mexico: id keeps the old mobile 1
    ("+541158749895", "+5491158749895"),  # Argentina: id has the mobile 9
]
TEMPLATE = {"name": "order_update", "language": "es", "variables": ["123"]}


def _own_number(live: Any) -> tuple[dict[str, str], dict[str, str]]:
    """A tenant with a Meta phone number id of its own (shared ids route nowhere)."""
    phone_id = "1" + str(uuid.uuid4().int)[:14]
    meta = {"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": META_SECRET}
    live.control.post("/_sandbox/accounts", json={"provider": "meta", **meta}).raise_for_status()
    tenant = {**make_tenant("waid", windows=(), meta=meta), "phone_id": phone_id}
    return tenant, {"Authorization": f"Bearer {tenant['api_key']}"}


def _inbound(live: Any, tenant: dict[str, str], sender: str, body: str) -> None:
    answer = live.control.post(
        "/_sandbox/inbound",
        json={"provider": "meta", "from": sender, "to": tenant["phone_id"], "body": body},
    ).json()
    assert answer["status_code"] == 200 and answer["ok"], answer


def _post(client: Any, auth: dict[str, str], to: str, **fields: Any) -> Any:
    return client.post("/v1/messages", json={"to": to, **fields}, headers=auth)


@pytest.mark.parametrize(("dialled", "wa_id"), CASES)
def test_meta_wa_id_is_kept_on_message_and_contact(live, client, dialled, wa_id) -> None:
    tenant, auth = _own_number(live)
    assert client.post("/v1/contacts", json={"phone": dialled}, headers=auth).status_code == 201
    resp = _post(client, auth, dialled, template=TEMPLATE)
    assert resp.status_code == 202, resp.get_json()
    deliver(resp.get_json()["id"])
    with session_scope() as session:
        message = session.get(Message, resp.get_json()["id"])
        assert (message.status, message.wa_id) == ("sent", wa_id)
        contact = session.scalars(
            select(Contact).where(Contact.tenant_id == tenant["tenant_id"])
        ).one()
        assert (contact.phone, contact.wa_id) == (dialled, wa_id)


@pytest.mark.parametrize(("dialled", "wa_id"), CASES)
def test_inbound_from_the_wa_id_opens_the_window_and_stop_opts_out(
    live, client, dialled, wa_id
) -> None:
    tenant, auth = _own_number(live)
    assert client.post("/v1/contacts", json={"phone": dialled}, headers=auth).status_code == 201
    assert _post(client, auth, dialled, body="hi").get_json()["error"]["code"] == "window_closed"
    _inbound(live, tenant, dialled, "Hola")  # the sandbox, like Meta, writes from the wa_id
    with session_scope() as session:
        got = session.scalars(
            select(Message).where(
                Message.tenant_id == tenant["tenant_id"], Message.direction == "inbound"
            )
        ).one()
        assert got.from_number == wa_id
        contacts = session.scalars(
            select(Contact).where(Contact.tenant_id == tenant["tenant_id"])
        ).all()
        assert [(c.phone, c.wa_id) for c in contacts] == [(dialled, wa_id)]  # one person
    assert _post(client, auth, dialled, body="hi").status_code == 202  # window open
    _inbound(live, tenant, dialled, "STOP")
    refused = _post(client, auth, dialled, template=TEMPLATE)
    assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "opted_out"


def test_a_contact_added_after_its_wa_id_wrote_is_the_same_contact(live, client) -> None:
    dialled, wa_id = CASES[0]
    tenant, auth = _own_number(live)
    _inbound(live, tenant, dialled, "Oi")  # arrives from the wa_id: contact created in that form
    resp = client.post("/v1/contacts", json={"phone": dialled, "id": "c-1"}, headers=auth)
    assert resp.status_code in (200, 201), resp.get_json()
    with session_scope() as session:
        contacts = session.scalars(
            select(Contact).where(Contact.tenant_id == tenant["tenant_id"])
        ).all()
        assert [(c.phone, c.wa_id, c.external_id) for c in contacts] == [(dialled, wa_id, "c-1")]
    assert _post(client, auth, dialled, body="Oi!").status_code == 202  # its window is open


# ------------------------------------------------------------ errors outside `statuses`


def _error_rows(tenant_id: str) -> list[WebhookEvent]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(WebhookEvent)
                .where(WebhookEvent.tenant_id == tenant_id, WebhookEvent.kind == "error")
                .order_by(WebhookEvent.id)
            )
        )


def test_inbound_message_with_errors_is_stored_with_them(live, client) -> None:
    tenant, auth = _own_number(live)
    answer = live.control.post(
        "/_sandbox/inbound",
        json={
            "provider": "meta",
            "from": "+12025550163",
            "to": tenant["phone_id"],
            "unsupported": "poll",
        },
    ).json()
    assert answer["status_code"] == 200 and answer["ok"], answer
    with session_scope() as session:
        got = session.scalars(select(Message).where(Message.tenant_id == tenant["tenant_id"])).one()
        assert (got.direction, got.status, got.provider_error_code) == (
            "inbound",
            "received",
            "131051",
        )
        assert got.events[-1].error_code == "131051"
    rows = _error_rows(tenant["tenant_id"])
    assert [r.payload["error"]["code"] for r in rows] == [131051]
    assert rows[0].message_id == got.id
    # The customer wrote, whatever the type: the window is open.
    assert _post(client, auth, "+12025550163", body="Sorry, we can't read that").status_code == 202


def test_change_level_errors_are_recorded_not_500(live, client) -> None:
    tenant, _ = _own_number(live)
    for _ in range(2):  # Meta's retry of the same delivery is recorded once
        answer = live.control.post(
            "/_sandbox/inbound",
            json={"provider": "meta", "to": tenant["phone_id"], "change_error": 131042},
        ).json()
        assert answer["status_code"] == 200 and answer["ok"], answer
    rows = _error_rows(tenant["tenant_id"])
    assert [(r.payload["source"], r.payload["error"]["code"]) for r in rows] == [("change", 131042)]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "herald_provider_webhook_errors" in metrics


# ------------------------------------------------------------ Twilio price after callbacks


def test_twilio_price_is_fetched_for_messages_final_by_callback(live, client) -> None:
    from datetime import timedelta
    from decimal import Decimal

    from services.messages import reconcile
    from tests.integration.conftest import wait_for

    tenant = make_tenant("price")
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    resp = _post(client, auth, "+12025550143", channel="sms", body="hi")
    assert resp.status_code == 202
    mid = resp.get_json()["id"]
    deliver(mid)

    def delivered() -> bool:
        with session_scope() as session:
            return session.get(Message, mid).status == "delivered"

    wait_for(delivered, what="delivered callback")  # the callback carries no price
    with session_scope() as session:
        assert session.get(Message, mid).price is None
    # Earlier tests' messages are in the database too (and unknown to the reset sandbox).
    reconcile.reconcile_stale(older_than=timedelta(0), limit=100_000)
    with session_scope() as session:
        message = session.get(Message, mid)
        assert (message.price, message.price_unit, message.status) == (
            Decimal("0.00790"),
            "USD",
            "delivered",
        )
    assert mid not in reconcile.unpriced_twilio_messages(timedelta(0))  # asked once


def test_wa_id_comes_from_the_status_when_the_send_answer_was_lost(live, client) -> None:
    from tests.integration.conftest import wait_for

    dialled, wa_id = CASES[0]
    _, auth = _own_number(live)
    live.fault(provider="meta", status=503, code=131016, count=1, mode="accept_then_error")
    resp = _post(client, auth, dialled, template=TEMPLATE)
    mid = resp.get_json()["id"]
    assert deliver(mid).action == "retry"  # Meta took it; Herald never saw the answer

    def recorded() -> Message | None:
        with session_scope() as session:
            message = session.get(Message, mid)
            return message if message.provider_message_id else None

    message = wait_for(recorded, what="status webhook with the wamid")
    assert message.wa_id == wa_id  # the status's recipient_id
