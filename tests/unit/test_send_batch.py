"""The send path's batch rules: throttled rows parked with a due time (no task comes
back with a countdown), the beat's release, the sweeper leaving parked rows alone,
and the set-based record keeping the status machine forward only."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select, update

from models import Message, MessageEvent, session_scope, utcnow
from providers import SendResult
from services.delivery import (
    due_for_sweep,
    record_sent_batch,
    release_parked,
    send_gate,
    send_gates,
)
from tests.conftest import TWILIO_SID, TWILIO_TOKEN, make_tenant

TO = "+12025550143"


def _tenant(sms_from: str, mps: int) -> dict:  # type: ignore[type-arg]
    tenant = make_tenant(
        "batch",
        twilio={
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "sms_from": sms_from,
            "mps": mps,
        },
    )
    return {"Authorization": f"Bearer {tenant['api_key']}"}


def _post(client, auth, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        client.post(
            "/v1/messages",
            json={"to": f"+1202555{i:04d}", "body": f"m{i}", "channel": "sms"},
            headers=auth,
        ).get_json()["id"]
        for i in range(n)
    ]


def _row(message_id: str) -> Message:
    with session_scope() as session:
        row = session.get(Message, message_id)
        assert row is not None
        return row


def _make_due(message_id: str) -> None:
    with session_scope() as session:
        session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(not_before=utcnow() - timedelta(seconds=1))
        )


def test_throttled_rows_are_parked_with_their_slot_and_no_task_spins(
    client, dispatched, monkeypatch
) -> None:
    from workers import tasks

    auth = _tenant("+12025550171", mps=1)
    first, *waiting = _post(client, auth, 3)
    assert send_gate(first) == 0.0  # the one-second budget
    requeued: list = []
    monkeypatch.setattr(
        tasks.deliver_message, "apply_async", lambda *a, **kw: requeued.append((a, kw))
    )
    assert tasks.deliver_batch.run(waiting) == {"throttled": 2}
    assert requeued == []  # the rows wait, not tasks with countdowns
    rows = [_row(mid) for mid in waiting]
    assert all(r.status == "queued" and r.attempts == 0 for r in rows)
    assert all(r.slot_reserved for r in rows)
    now = utcnow()
    due = sorted(r.not_before for r in rows)
    assert now < due[0] < due[1]  # one slot each, one second apart at 1 msg/s
    # Rung again before its time, a parked row is left as it is: no second slot taken.
    assert all(wait > 0 for wait in send_gates(waiting).values())
    assert [_row(mid).not_before for mid in waiting] == [r.not_before for r in rows]


def test_the_beat_releases_due_rows_and_their_reserved_slot_is_used(client, dispatched) -> None:
    auth = _tenant("+12025550172", mps=1)
    first, second, third = _post(client, auth, 3)
    assert send_gates([first, second, third])[first] == 0.0
    _make_due(second)
    released = release_parked()
    assert (second, None) in released and all(mid != third for mid, _ in released)
    row = _row(second)
    assert row.not_before is None and row.slot_reserved and row.status == "queued"
    # Its slot was reserved when it was parked: it goes now, though the sender's budget
    # is spent for the next two seconds (the third row holds the next slot).
    assert send_gate(second) == 0.0
    assert send_gate(third) > 0


def test_the_sweeper_leaves_parked_rows_to_the_beat(client, dispatched) -> None:
    auth = _tenant("+12025550173", mps=1)
    first, second = _post(client, auth, 2)
    send_gates([first, second])
    long_ago = utcnow() - timedelta(hours=1)
    with session_scope() as session:
        session.execute(
            update(Message).where(Message.id.in_([first, second])).values(updated_at=long_ago)
        )
    swept = {mid for mid, _ in due_for_sweep(limit=100_000)}
    assert first in swept and second not in swept  # parked: not due yet
    with session_scope() as session:  # due long ago, and the beat never released it
        session.execute(
            update(Message)
            .where(Message.id == second)
            .values(not_before=long_ago, updated_at=long_ago)
        )
    assert second in {mid for mid, _ in due_for_sweep(limit=100_000)}


def test_a_batch_record_never_moves_a_row_back(client, dispatched) -> None:
    auth = _tenant("+12025550174", mps=100)
    delivered, sending = _post(client, auth, 2)
    with session_scope() as session:
        session.execute(  # a callback moved it to delivered before the worker recorded
            update(Message).where(Message.id == delivered).values(status="delivered")
        )
        session.execute(update(Message).where(Message.id == sending).values(status="sending"))
    # SIDs no other test's message holds (the provider id is unique per provider).
    sid_a, sid_b = "SM" + uuid.uuid4().hex, "SM" + uuid.uuid4().hex
    with session_scope() as session:
        rows = [session.get(Message, mid) for mid in (delivered, sending)]
        accepted = [
            (rows[0], SendResult(sid_a, "queued", sender="+12025550174")),
            (rows[1], SendResult(sid_b, "queued", sender="+12025550174")),
        ]
        moved = record_sent_batch(session, accepted, heard=set())  # type: ignore[arg-type]
    assert moved == {sending}
    kept, sent = _row(delivered), _row(sending)
    assert kept.status == "delivered" and kept.provider_message_id == sid_a
    assert sent.status == "sent" and sent.sent_at is not None and sent.lease_until is None
    assert sent.from_number == "+12025550174"
    with session_scope() as session:
        events = {
            e.message_id: e.applied
            for e in session.scalars(
                select(MessageEvent).where(
                    MessageEvent.message_id.in_([delivered, sending]),
                    MessageEvent.status == "sent",
                )
            )
        }
    assert events == {delivered: False, sending: True}


def test_a_single_delivery_task_of_an_older_queue_parks_too(client, dispatched) -> None:
    """`herald.deliver` (one id, from queues filled before batches) is still understood,
    and a throttled message it meets is parked, not retried with a countdown."""
    from workers import tasks

    auth = _tenant("+12025550175", mps=1)
    first, second = _post(client, auth, 2)
    assert send_gate(first) == 0.0
    assert tasks.deliver_message.run(second) == "throttled"  # no Retry raised
    row = _row(second)
    assert row.status == "queued" and row.slot_reserved and row.not_before is not None
