"""Regressions found in review: each test fails on the code before its fix."""

from __future__ import annotations

import logging
import sys

from sqlalchemy import update

from models import Contact, Message, session_scope
from providers import OutboundMessage
from services.messages.delivery import deliver
from services.messages.record import reconcile
from tests.integration.test_delivery import create, expire_lease, load


def test_known_provider_id_is_never_sent_again(live, client, auth, dispatched) -> None:
    live.config(callbacks={"enabled": False})
    live.fault(provider="twilio", status=500, code=20500, count=1, mode="accept_then_error")
    mid = create(client, auth, channel="sms")
    assert deliver(mid).action == "retry"
    (accepted,) = live.sends(herald_id=mid, accepted="true")
    # Twilio's `queued`/`sending` callback names the SID without moving the status.
    with session_scope() as session:
        session.execute(
            update(Message)
            .where(Message.id == mid)
            .values(provider_message_id=accepted["provider_message_id"])
        )
    expire_lease(mid)
    assert deliver(mid).action == "sent"
    assert len(live.sends(herald_id=mid, accepted="true")) == 1
    assert load(mid).status == "sent"


def test_reconcile_never_guesses_for_templates(live, client, auth, dispatched) -> None:
    class Tattletale:
        def find_sent(self, *args):  # type: ignore[no-untyped-def]
            raise AssertionError("looked up a template message")

    mid = create(client, auth, channel="sms")
    # A second attempt after one the provider may have taken, and a body: everything
    # that would make reconcile look the message up, but for the template.
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == mid).values(attempts=2))
    outbound = OutboundMessage(
        herald_id=mid,
        channel="sms",
        to="+12025550143",
        body="Your order is ready",
        template={"content_sid": "HX" + "a" * 32},
    )
    assert reconcile(Tattletale(), None, load(mid), outbound) is None  # type: ignore[arg-type]


def test_stop_after_acceptance_stops_the_send(live, client, auth, tenant, dispatched) -> None:
    mid = create(client, auth, channel="sms", to="+12025550181")
    with session_scope() as session:
        session.add(Contact(tenant_id=tenant["tenant_id"], phone="+12025550181", opted_out=True))
    assert deliver(mid).action == "skipped"
    msg = load(mid)
    assert (msg.status, msg.error_code) == ("failed", "opted_out")
    assert live.sends(herald_id=mid) == []


def test_redelivered_public_task_creates_one_message(tenant, dispatched) -> None:
    from workers.tasks import send_message

    kwargs = {"tenant_id": tenant["tenant_id"], "to": "+12025550143", "channel": "sms", "body": "x"}
    first = send_message.apply(kwargs=kwargs, task_id="redelivered-task-1").get()
    again = send_message.apply(kwargs=kwargs, task_id="redelivered-task-1").get()
    other = send_message.apply(kwargs=kwargs, task_id="another-task").get()
    assert first["id"] == again["id"] != other["id"]


def test_tracebacks_are_masked() -> None:
    from core.logs import MaskingFilter

    try:
        raise ValueError("INSERT failed [parameters: ('+12025550143', 'hi')]")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    MaskingFilter().filter(record)
    assert "12025550143" not in record.exc_text and "+1******0143" in record.exc_text
