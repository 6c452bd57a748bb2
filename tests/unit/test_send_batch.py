"""The send path's batch rules: throttled rows parked with a due time (no task comes
back with a countdown), the beat's release, the sweeper leaving parked rows alone,
and the set-based record keeping the status machine forward only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import inspect, select, text, update

from models import EventDelivery, Message, MessageEvent, ProviderAccount, session_scope, utcnow
from providers import SendResult
from services.messages.claim import claim_for_sending
from services.messages.gate import release_parked, send_gate, send_gates
from services.messages.record import record_sent_batch
from services.messages.sweep import due_for_sweep
from services.reporting.events import record_status_event
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


def _rich_message(tenant_id: str, account_id: str, callback_url: str | None = None) -> str:
    """A queued row with every kind of column filled: times, JSON, a price."""
    now = utcnow()
    message = Message(
        tenant_id=tenant_id,
        direction="outbound",
        channel="sms",
        provider="twilio",
        provider_account_id=account_id,
        to_number="+12025550176",
        body="rich",
        media_urls=["https://example.com/a.png"],
        options={"sender": {"id": "snd_1", "kind": "number"}, "note": "é"},
        status="queued",
        meta={"order": 7, "nested": {"a": [1, 2]}},
        callback_url=callback_url,
        send_at=now - timedelta(minutes=1),
        expires_at=now + timedelta(hours=1),
        price=Decimal("0.00750"),
        price_unit="USD",
        recipient_zones="America/New_York",
        created_at=now - timedelta(minutes=2),
        updated_at=now - timedelta(minutes=2),
    )
    with session_scope() as session:
        session.add(message)
    return message.id


def _account_of(tenant_id: str) -> str:
    with session_scope() as session:
        account = session.scalar(
            select(ProviderAccount.id).where(
                ProviderAccount.tenant_id == tenant_id, ProviderAccount.provider == "twilio"
            )
        )
    assert account is not None
    return account


def test_a_claimed_message_is_the_row_as_the_orm_loads_it(dispatched) -> None:
    """The claim builds its Message objects from the UPDATE's rows itself: each must
    hold what the ORM would load (aware UTC times, decoded JSON, the Decimal price),
    detached, as the send path and the record read them."""
    tenant = make_tenant("claimed")
    mid = _rich_message(tenant["tenant_id"], _account_of(tenant["tenant_id"]))
    claimed = claim_for_sending(mid)
    assert claimed is not None
    message, account = claimed
    assert account.provider == "twilio"
    state = inspect(message)
    assert state.detached and not state.modified
    with session_scope() as session:
        loaded = session.get(Message, mid)
        assert loaded is not None
        for column in Message.__mapper__.column_attrs:
            mine, orm = getattr(message, column.key), getattr(loaded, column.key)
            assert mine == orm and type(mine) is type(orm), column.key
            if isinstance(orm, datetime):
                assert mine.tzinfo is UTC, column.key
    assert message.status == "sending" and message.attempts == 1
    assert message.meta == {"order": 7, "nested": {"a": [1, 2]}}
    assert message.options["sender"]["id"] == "snd_1"


def test_a_batch_owes_the_same_event_as_the_single_path(dispatched) -> None:
    """The batch path's owed event (one read, one INSERT) is the one `apply_status`'s
    `record_status_event` writes for the same row: same URL, same payload."""
    from services.messages.claim import owe_events as _owe_events

    tenant = make_tenant("owed")
    mid = _rich_message(
        tenant["tenant_id"], _account_of(tenant["tenant_id"]), "https://example.com/hook"
    )
    with session_scope() as session:
        record_status_event(session, mid)
        session.flush()
        _owe_events(session, [mid])
    with session_scope() as session:
        single, batch = session.scalars(
            select(EventDelivery).where(EventDelivery.message_id == mid).order_by(EventDelivery.id)
        ).all()
        assert (batch.tenant_id, batch.url) == (single.tenant_id, single.url)
        assert (batch.status, batch.attempts) == (single.status, single.attempts) == ("pending", 0)
        assert batch.payload == single.payload
        assert batch.payload["message"]["expires_at"].endswith("Z")
        raw = (
            session.execute(
                text(
                    "SELECT payload::text FROM event_deliveries WHERE message_id = :m ORDER BY id"
                ),
                {"m": mid},
            )
            .scalars()
            .all()
        )
    assert raw[0] == raw[1]  # the stored JSON text too, byte for byte
    assert batch.next_attempt_at <= utcnow()


def test_batch_slots_wake_the_gathering_batch_once_its_chunk_is_free() -> None:
    """A batch waiting for a chunk of threads gets it only when the whole chunk is
    free, and giving back more than was taken is refused."""
    import threading

    import pytest

    from services.messages.delivery import _Slots

    slots = _Slots(64)
    slots.take(50)
    taken = threading.Event()

    def gather() -> None:
        slots.take(50)
        taken.set()

    waiter = threading.Thread(target=gather)
    waiter.start()
    for _ in range(3000):  # until the waiter waits for its chunk
        if slots._wanted == 50:
            break
        threading.Event().wait(0.01)
    assert slots._wanted == 50
    for _ in range(35):  # 14 + 35 = 49 free: still short of the chunk
        slots.give()
    assert not taken.is_set() and slots.free == 49
    slots.give()
    assert taken.wait(5)
    waiter.join()
    assert slots.free == 0
    slots.give(64)
    with pytest.raises(ValueError):
        slots.give()
