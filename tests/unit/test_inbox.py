"""Status callbacks through the webhook inbox: durable when answered, applied in
batches forward-only, duplicates once, a poison row never blocking the others."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from models import Message, MessageEvent, WebhookEvent, WebhookInbox, session_scope
from services.callbacks import applier, inbox
from services.callbacks.receipts import dedup_key
from services.callbacks.twilio import TWILIO_STATUS_KIND, handle_twilio_status
from tests.unit.test_webhooks import events_of, get, new_message, twilio_status


@pytest.fixture
def applier_off() -> Iterator[None]:
    """No applier runs when a callback is committed (as if the process died at once);
    the inbox starts empty."""
    from sqlalchemy import delete

    with session_scope() as session:
        session.execute(delete(WebhookInbox))
    applier.set_applier(lambda: None)
    yield


def pending() -> list[WebhookInbox]:
    with session_scope() as session:
        return list(session.scalars(select(WebhookInbox).order_by(WebhookInbox.id)))


def message(mid: str) -> Message:
    with session_scope() as session:
        row = session.get(Message, mid)
        assert row is not None
        return row


def test_a_callback_is_durable_once_answered_before_any_applier_ran(
    client, auth, dispatched, applier_off
) -> None:
    mid = new_message(client, auth, channel="sms")
    # A SID no other test's message holds: one held elsewhere is applied without copying it.
    sid = "SM" + uuid.uuid4().hex
    assert twilio_status(client, mid, "sent", sid).status_code == 204
    assert twilio_status(client, mid, "delivered", sid).status_code == 204
    # Answered, not yet applied: the callbacks are committed rows of the inbox.
    assert get(client, auth, mid)["status"] == "queued"
    rows = [r for r in pending() if r.ref == mid]
    assert [r.payload["MessageStatus"] for r in rows] == ["sent", "delivered"]
    # Beat's periodic pass (herald.apply_inbox) applies what no live process did.
    from workers.tasks import apply_inbox

    time.sleep(inbox.STALE_SECONDS)
    assert apply_inbox() >= 2
    msg = get(client, auth, mid)
    assert (msg["status"], msg["provider_message_id"]) == ("delivered", sid)
    assert events_of(mid)[1:] == [("sent", "sent", True), ("delivered", "delivered", True)]
    assert not [r for r in pending() if r.ref == mid]


def test_a_retry_of_a_waiting_callback_is_one_inbox_row(
    client, auth, dispatched, applier_off
) -> None:
    mid = new_message(client, auth, channel="sms")
    for _ in range(3):
        assert twilio_status(client, mid, "delivered", "SM" + "b" * 32).status_code == 204
    assert len([r for r in pending() if r.ref == mid]) == 1


SCENARIOS = [
    # callbacks in arrival order -> final status
    (["delivered", "sent", "read"], "read"),
    (["sent", "undelivered", "delivered"], "undelivered"),
    (["delivered", "failed", "sent"], "delivered"),
    (["queued", "sending", "sent", "delivered"], "delivered"),
    (["failed", "delivered"], "failed"),
    (["read", "delivered", "sent", "queued"], "read"),
]


def _state(mid: str) -> tuple:
    m = message(mid)
    return (
        m.status,
        m.provider_message_id,
        m.sent_at is not None,
        m.delivered_at is not None,
        m.read_at is not None,
        m.error_code,
        m.provider_error_code,
        str(m.price) if m.price is not None else None,
        m.from_number,
        [(s, n, a) for s, n, a in events_of(mid)[1:]],
    )


def test_one_batch_of_shuffled_callbacks_moves_each_message_forward_only(
    client, auth, dispatched, applier_off
) -> None:
    batch = [new_message(client, auth, channel="sms") for _ in SCENARIOS]
    alone = [new_message(client, auth, channel="sms") for _ in SCENARIOS]
    posted = []  # (message id, status, sid): each message's callbacks in its order
    for i, (statuses, _) in enumerate(SCENARIOS):
        sid = f"SM{i:032d}"
        posted.append([(batch[i], s, sid) for s in statuses])
    # Messages interleaved at random, each message's own callbacks in their given order.
    order = [i for i, calls in enumerate(posted) for _ in calls]
    random.Random(12).shuffle(order)
    cursor = [0] * len(posted)
    for i in order:
        mid, status, sid = posted[i][cursor[i]]
        cursor[i] += 1
        extra = {"ErrorCode": "30003"} if status in ("undelivered", "failed") else {}
        assert twilio_status(client, mid, status, sid, Price="-0.0075", **extra).status_code == 204
    assert applier.apply_pending() == len(order)  # one batch
    # The same callbacks, each applied on its own by the one-at-a-time path.
    accounts = [message(alone[0]).provider_account_id]
    for i, calls in enumerate(posted):
        for _, status, sid in calls:
            form = {
                "MessageSid": sid + "x",
                "MessageStatus": status,
                "From": "+12025550100",
                "Price": "-0.0075",
                **({"ErrorCode": "30003"} if status in ("undelivered", "failed") else {}),
            }
            with session_scope() as session:
                handle_twilio_status(session, accounts, form, alone[i])
    for i, (_, final) in enumerate(SCENARIOS):
        got = _state(batch[i])
        assert got[0] == final
        expected = _state(alone[i])
        assert got[2:] == expected[2:]
        assert got[1] == f"SM{i:032d}" and expected[1] == f"SM{i:032d}x"


def test_duplicate_callbacks_in_one_batch_give_one_event(
    client, auth, dispatched, applier_off
) -> None:
    mid = new_message(client, auth, channel="sms")
    sid = "SM" + "c" * 32
    assert twilio_status(client, mid, "delivered", sid).status_code == 204
    row = next(r for r in pending() if r.ref == mid)
    # The same callback again in the same batch (e.g. kept twice across an upgrade).
    with session_scope() as session:
        inbox.record(
            session,
            provider="twilio",
            kind=TWILIO_STATUS_KIND,
            dedup_key=row.dedup_key + ":again",
            accounts=row.accounts,
            ref=mid,
            payload=row.payload,
        )
    assert applier.apply_pending() == 2
    assert events_of(mid)[1:] == [("delivered", "delivered", True)]
    # And once more after it was applied: a duplicate, no event.
    assert twilio_status(client, mid, "delivered", sid).status_code == 204
    assert applier.apply_pending() == 1
    assert events_of(mid)[1:] == [("delivered", "delivered", True)]
    with session_scope() as session:
        receipts = session.scalars(
            select(WebhookEvent).where(WebhookEvent.provider_message_id == sid)
        ).all()
        assert [(r.kind, r.message_id) for r in receipts] == [("status", mid)]
        assert receipts[0].dedup_key == dedup_key(
            "twilio", message(mid).provider_account_id, sid, "delivered"
        )


def test_a_poison_row_holds_back_no_other(client, auth, dispatched, applier_off) -> None:
    first = new_message(client, auth, channel="sms")
    second = new_message(client, auth, channel="sms")
    assert twilio_status(client, first, "delivered", "SM" + "d" * 32).status_code == 204
    with session_scope() as session:
        inbox.record(
            session,
            provider="twilio",
            kind=TWILIO_STATUS_KIND,
            dedup_key="twilio:poison",
            accounts=["acc_x"],
            ref=None,
            payload={"MessageSid": 12, "MessageStatus": ["not", "a", "status"]},
        )
    assert twilio_status(client, second, "delivered", "SM" + "e" * 32).status_code == 204
    applier.apply_all()
    assert message(first).status == "delivered"
    assert message(second).status == "delivered"
    (kept,) = pending()
    assert kept.dedup_key == "twilio:poison"
    assert kept.attempts == 1 and kept.last_error
    assert kept.next_attempt_at > kept.received_at  # waits before its next try
    assert applier.apply_all() == 0  # not due: not retried at once
    with session_scope() as session:
        row = session.get(WebhookInbox, kept.id)
        assert row is not None
        row.attempts, row.next_attempt_at = inbox.MAX_ATTEMPTS, row.received_at
    assert applier.apply_all() == 0  # kept for operators, never tried again
    assert pending()[0].last_error == kept.last_error


def test_the_receiving_process_applies_callbacks_by_itself(client, auth, dispatched) -> None:
    applier.set_applier(None)  # production: the process's applier thread
    mid = new_message(client, auth, channel="sms")
    assert twilio_status(client, mid, "delivered", "SM" + "f" * 32).status_code == 204
    deadline = time.monotonic() + 30
    while message(mid).status != "delivered" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert message(mid).status == "delivered"
    with session_scope() as session:
        applied = session.scalars(
            select(MessageEvent.applied).where(
                MessageEvent.message_id == mid, MessageEvent.status == "delivered"
            )
        ).all()
    assert applied == [True]


def test_a_batch_gives_up_a_lock_wait_rather_than_risk_a_deadlock(
    client, auth, dispatched, applier_off, caplog
) -> None:
    import threading

    from models import new_session

    mid = new_message(client, auth, channel="sms")
    assert twilio_status(client, mid, "delivered", "SM" + "g" * 32).status_code == 204
    holder = new_session()  # e.g. a worker recording a batch of sends, holding the row
    holder.execute(select(Message.id).where(Message.id == mid).with_for_update())
    caplog.set_level("WARNING", logger="services.callbacks.applier")
    worker = threading.Thread(target=applier.apply_pending)
    try:
        worker.start()
        deadline = time.monotonic() + 30
        while "applying alone" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        # The batch gave up its wait (lock_timeout, below the deadlock check) and rolled
        # back: the row waits to be applied on its own, one lock at a time.
        assert "applying alone" in caplog.text
        assert message(mid).status == "queued"
    finally:
        holder.rollback()
        holder.close()
        worker.join(timeout=60)
    assert message(mid).status == "delivered"
    assert events_of(mid)[1:] == [("delivered", "delivered", True)]
