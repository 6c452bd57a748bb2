"""Herald against a sandbox that is no kinder than Twilio and Meta: lost Twilio callbacks
reconciled from the Message resource, errors that only arrive by webhook."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import select

from models import Contact, Message, session_scope
from tests.conftest import WINDOW_OPEN, make_tenant
from tests.integration.conftest import wait_for
from tests.integration.test_provider_kinds import send


def _message(mid: str) -> Message:
    with session_scope() as session:
        return session.get(Message, mid)


def test_lost_twilio_callbacks_are_reconciled_with_status_and_price(
    live, client, auth, dispatched
) -> None:
    from services.reconcile import reconcile_stale

    # Twilio does not retry a callback Herald answered with a 5xx: it is simply gone.
    live.config(callbacks={"enabled": False})
    message, _ = send(client, auth, live, channel="sms", body="hi")
    assert message.status == "sent" and message.price is None
    time.sleep(0.3)  # the message reaches `delivered` at Twilio meanwhile
    assert reconcile_stale(older_than=timedelta(0)) == {"fetched": 1, "changed": 1, "errors": 0}
    after = _message(message.id)
    assert after.status == "delivered"
    assert (after.price, after.price_unit) == (Decimal("0.00790"), "USD")  # only in the resource
    # Nothing stale is left to ask about.
    assert reconcile_stale(older_than=timedelta(0))["fetched"] == 0


def test_reconciled_failure_keeps_twilio_error_code(live, client, auth, dispatched) -> None:
    from services.reconcile import reconcile_stale

    live.config(callbacks={"enabled": False})
    message, _ = send(client, auth, live, channel="sms", body="hi", to="+12015550107")
    time.sleep(0.3)
    reconcile_stale(older_than=timedelta(0))
    after = _message(message.id)
    assert (after.status, after.provider_error_code, after.error_code) == (
        "failed",
        "30008",
        "unknown_error",
    )


def test_a_recent_message_is_not_fetched(live, client, auth, dispatched) -> None:
    from services.reconcile import reconcile_stale

    live.config(callbacks={"enabled": False})
    send(client, auth, live, channel="sms", body="hi")
    assert reconcile_stale()["fetched"] == 0  # HERALD_RECONCILE_AFTER_MINUTES not yet past


def test_meta_131050_by_webhook_opts_out_end_to_end(live, client, dispatched) -> None:
    to = "+12015550150"
    tenant = make_tenant(windows=(*WINDOW_OPEN, to))
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    message, _ = send(client, auth, live, to=to, body="new offer")
    assert message.status == "sent"  # Meta took it; the failure comes later, without our id
    wait_for(lambda: _message(message.id).status == "failed", what="failed status webhook")
    assert _message(message.id).provider_error_code == "131050"
    with session_scope() as session:
        contact = session.scalars(
            select(Contact).where(Contact.tenant_id == tenant["tenant_id"], Contact.phone == to)
        ).one()
        assert contact.opted_out


def test_twilio_window_closed_arrives_in_a_failed_callback(live, client, dispatched) -> None:
    to = "+12015550116"
    tenant = make_tenant(windows=(*WINDOW_OPEN, to))
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    message, _ = send(client, auth, live, to=to, body="hi", provider="twilio")
    assert message.status == "sent"
    wait_for(lambda: _message(message.id).status == "failed", what="failed callback")
    after = _message(message.id)
    assert (after.provider_error_code, after.error_code) == ("63016", "window_closed")
