"""Herald against a sandbox that is no kinder than Twilio and Meta: lost Twilio callbacks
reconciled from the Message resource, errors that only arrive by webhook."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from models import Contact, Message, MessageEvent, session_scope
from services.messages.delivery import deliver
from tests.conftest import (
    META_PHONE_ID,
    META_SECRET,
    META_TOKEN,
    TWILIO_SID,
    TWILIO_TOKEN,
    WINDOW_OPEN,
    make_tenant,
)
from tests.integration.conftest import wait_for
from tests.integration.test_provider_kinds import send


def _message(mid: str) -> Message:
    with session_scope() as session:
        return session.get(Message, mid)


def test_lost_twilio_callbacks_are_reconciled_with_status_and_price(
    live, client, auth, dispatched
) -> None:
    from services.messages.reconcile import reconcile_stale, stale_twilio_messages

    # Twilio does not retry a callback Herald answered with a 5xx: it is simply gone.
    live.config(callbacks={"enabled": False})
    message, _ = send(client, auth, live, channel="sms", body="hi")
    assert message.status == "sent" and message.price is None
    time.sleep(0.3)  # the message reaches `delivered` at Twilio meanwhile
    assert reconcile_stale(older_than=timedelta(0))["changed"] >= 1
    after = _message(message.id)
    assert after.status == "delivered"
    assert (after.price, after.price_unit) == (Decimal("0.00790"), "USD")  # only in the resource
    assert message.id not in stale_twilio_messages(timedelta(0))  # nothing left to ask


def test_reconciled_failure_keeps_twilio_error_code(live, client, auth, dispatched) -> None:
    from services.messages.reconcile import reconcile_stale

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
    from services.messages.reconcile import reconcile_stale

    live.config(callbacks={"enabled": False})
    send(client, auth, live, channel="sms", body="hi")
    assert reconcile_stale()["fetched"] == 0  # HERALD_RECONCILE_AFTER_MINUTES not yet past


def test_meta_131050_by_webhook_opts_out_end_to_end(live, client, dispatched) -> None:
    from services.callbacks.meta_orphans import apply_stored_orphans

    to = "+12015550150"
    tenant = make_tenant(windows=(*WINDOW_OPEN, to))
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    message, _ = send(client, auth, live, to=to, body="new offer")
    assert message.status == "sent"  # Meta took it; the failure comes later, without our id
    # The periodic pass covers the webhook and the worker's record committing at once.
    wait_for(
        lambda: apply_stored_orphans() >= 0 and _message(message.id).status == "failed",
        what="failed status webhook",
    )
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


# ------------------------------------------------------------------ errors as documented


def _create(client, auth, **fields) -> str:  # type: ignore[no-untyped-def]
    resp = client.post("/v1/messages", json={"to": "+12025550143", **fields}, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def _last_event(mid: str) -> MessageEvent:
    with session_scope() as session:
        return session.scalars(
            select(MessageEvent).where(MessageEvent.message_id == mid).order_by(MessageEvent.id)
        ).all()[-1]


def test_twilio_21611_queue_full_holds_the_sender(live, client, dispatched) -> None:
    tenant = make_tenant(
        twilio={
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "sms_from": "+15005550008",  # Twilio's test sender whose queue is full
        }
    )
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    mid = _create(client, auth, channel="sms", body="hi")
    outcome = deliver(mid)
    assert outcome.action == "held" and outcome.retry_in is None  # the sweeper rings again
    assert _message(mid).status == "queued"  # not failed: it goes once the queue drains
    assert (_last_event(mid).error_code, _last_event(mid).source) == ("21611", "breaker")


def test_twilio_retry_after_header_is_kept(live, client, auth, dispatched) -> None:
    live.fault(provider="twilio", status=429, code=20429, retry_after=42)
    outcome = deliver(_create(client, auth, channel="sms", body="hi"))
    assert (outcome.action, outcome.retry_in) == ("retry", 42.5)


@pytest.mark.parametrize(
    ("fault", "action", "code"),
    [
        ({"status": 429, "code": 20429, "retry_after": 30}, "retry", "20429"),
        ({"status": 400, "code": 21211}, "failed", "21211"),
    ],
)
def test_twilio_problem_details_errors_are_classified(
    live, client, auth, dispatched, fault, action, code
) -> None:
    live.fault(provider="twilio", problem=True, **fault)
    mid = _create(client, auth, channel="sms", body="hi")
    outcome = deliver(mid)
    assert outcome.action == action
    if action == "retry":
        assert outcome.retry_in == 30.5  # its hint, not a settle for an "ambiguous" answer
    assert _last_event(mid).error_code == code


@pytest.mark.parametrize("code", [1, 2])
def test_meta_temporary_errors_are_retried_at_once(live, client, auth, dispatched, code) -> None:
    live.fault(provider="meta", status=503 if code == 2 else 500, code=code)
    mid = _create(client, auth, body="hi")
    assert deliver(mid).action == "sent"  # retried in the call, not left to settle
    assert len(live.sends(herald_id=mid)) == 2


@pytest.mark.parametrize("code", [4, 17, 341, 131056])
def test_meta_throttling_waits_and_retries(live, client, auth, dispatched, code) -> None:
    live.fault(provider="meta", status=400, code=code, message="slow")
    mid = _create(client, auth, body="hi")
    outcome = deliver(mid)
    assert outcome.action == "retry" and outcome.retry_in >= 5.5
    assert _message(mid).status == "sending"
    assert _last_event(mid).detail["kind"] == "rate_limited"


@pytest.mark.parametrize(("code", "status", "hold"), [(80007, 400, 60), (368, 403, 900)])
def test_meta_account_limits_and_blocks_hold_the_sender(
    live, client, auth, dispatched, code, status, hold
) -> None:
    live.fault(provider="meta", status=status, code=code, message="slow")
    mid = _create(client, auth, body="hi")
    assert deliver(mid).action == "held"  # waits, queued: nothing failed
    message = _message(mid)
    assert (message.status, message.attempts) == ("queued", 0)
    event = _last_event(mid)
    assert (event.source, event.error_code) == ("breaker", str(code))
    assert hold - 1 <= event.detail["held_for"] <= hold


def test_meta_error_subcode_details_and_trace_id_are_kept(live, client, dispatched) -> None:
    tenant = make_tenant(
        meta={
            "phone_number_id": "109999999999999",  # the token's, but no such number
            "access_token": META_TOKEN,
            "app_secret": "s",
            "display_phone_number": "+12025550111",
        }
    )
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    mid = _create(client, auth, body="hi")
    assert deliver(mid).action == "failed"
    detail = _last_event(mid).detail
    assert detail["error_subcode"] == 33 and detail["fbtrace_id"]
    live.fault(provider="meta", status=400, code=131026, message="not a WhatsApp user")
    mid = _create(client, {"Authorization": f"Bearer {make_tenant()['api_key']}"}, body="x")
    deliver(mid)
    assert _last_event(mid).detail["error_details"] == "not a WhatsApp user"


# ------------------------------------------------------------------ the sender's breaker


def test_expired_meta_token_holds_the_sender_until_credentials_change(
    live, client, dispatched, monkeypatch
) -> None:
    from core.config import get_settings
    from services.tenancy.tenants import encrypt_json, find_account

    meta = {
        "phone_number_id": META_PHONE_ID,
        "access_token": "expired-token",
        "app_secret": META_SECRET,
        "display_phone_number": "+12025550111",
    }
    tenant = make_tenant(meta=meta)
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    first, second = _create(client, auth, body="1"), _create(client, auth, body="2")
    assert deliver(first).action == "held"  # Meta 190: no message is at fault
    assert (_message(first).status, _message(first).attempts) == ("queued", 0)
    assert (_last_event(first).source, _last_event(first).error_code) == ("breaker", "190")

    assert deliver(second).action == "skipped"  # held at the gate: the provider is not asked
    assert live.sends(herald_id=second) == [] and _message(second).status == "queued"
    assert _last_event(second).detail["held"] == "credentials"
    deliver(second)  # rung again while held: one event per hold, not one per doorbell
    with session_scope() as session:
        held_events = session.scalars(
            select(MessageEvent).where(
                MessageEvent.message_id == second, MessageEvent.source == "breaker"
            )
        ).all()
    assert len(held_events) == 1
    metrics = client.get("/metrics").get_data(as_text=True)  # open: no tenant identifiers
    assert META_PHONE_ID not in metrics
    assert 'herald_sender_hold_seconds{provider="meta",reason="credentials"}' in metrics
    monkeypatch.setenv("HERALD_METRICS_TOKEN", "scrape-me-0123456789")
    get_settings.cache_clear()
    try:
        metrics = client.get(
            "/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"}
        ).get_data(as_text=True)
    finally:
        monkeypatch.delenv("HERALD_METRICS_TOKEN")
        get_settings.cache_clear()
    assert 'herald_sender_hold_seconds{account="' + META_PHONE_ID in metrics
    assert 'reason="credentials"' in metrics

    with session_scope() as session:  # the tenant stores a fresh token
        account = find_account(session, tenant["tenant_id"], "meta")
        account.secrets_enc = encrypt_json({"access_token": META_TOKEN, "app_secret": META_SECRET})
    assert deliver(first).action == "sent" and deliver(second).action == "sent"


def test_throughput_signal_holds_the_sender_for_the_hint(live, client, auth, dispatched) -> None:
    live.fault(provider="meta", status=400, code=130429, retry_after=3)
    first, second = _create(client, auth, body="1"), _create(client, auth, body="2")
    outcome = deliver(first)
    assert outcome.action == "held" and outcome.retry_in == 3.5  # a short hold: come back then
    waiting = deliver(second)
    assert waiting.action == "throttled" and 0 < waiting.retry_in <= 3
    assert live.sends(herald_id=second) == []  # one call met the limit, not every message


def test_meta_service_unavailable_settles_before_a_resend(live, client, auth, dispatched) -> None:
    # 131016 may follow an acceptance (the chaos harness does exactly that): never resent
    # in the call, only after callbacks had their chance.
    live.fault(provider="meta", status=503, code=131016, mode="accept_then_error")
    mid = _create(client, auth, body="hi")
    assert deliver(mid).action == "retry"
    assert len(live.sends(herald_id=mid)) == 1
