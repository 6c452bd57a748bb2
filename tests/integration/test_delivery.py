"""Delivery through the real provider clients against the sandbox: claim, send,
record, retry classes, and callbacks settling ambiguous sends."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import select, update

from models import Message, MessageEvent, session_scope, utcnow
from services.messages.delivery import deliver
from tests.integration.conftest import wait_for

TO = "+12025550143"


def create(client, auth, **fields) -> str:  # type: ignore[no-untyped-def]
    resp = client.post(
        "/v1/messages", json={"to": TO, "body": "Your order #123 is ready", **fields}, headers=auth
    )
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def load(message_id: str) -> Message:
    with session_scope() as session:
        message = session.get(Message, message_id)
        assert message is not None
        return message


def expire_lease(message_id: str) -> None:
    with session_scope() as session:
        session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )


def test_meta_text_is_sent_and_delivered_by_callbacks(live, client, auth, dispatched) -> None:
    mid = create(client, auth)
    assert deliver(mid).action == "sent"
    msg = load(mid)
    assert msg.status in ("sent", "delivered", "read")
    assert msg.provider_message_id.startswith("wamid.")
    (send,) = live.sends(herald_id=mid)
    assert send["request"]["type"] == "text"
    assert send["request"]["biz_opaque_callback_data"] == mid
    wait_for(lambda: load(mid).status == "read", what="read callback")
    assert load(mid).delivered_at is not None


def test_twilio_sms_carries_status_callback_with_herald_id(live, client, auth, dispatched) -> None:
    mid = create(client, auth, channel="sms")
    assert deliver(mid).action == "sent"
    msg = load(mid)
    assert msg.provider_message_id.startswith("SM") and len(msg.provider_message_id) == 34
    (send,) = live.sends(herald_id=mid)
    assert send["request"]["StatusCallback"].endswith(f"/webhooks/twilio/status?message_id={mid}")
    assert send["request"]["From"] == "+12025550100"
    wait_for(lambda: load(mid).status == "delivered", what="delivered callback")


def test_redelivered_task_does_not_send_twice(live, client, auth, dispatched) -> None:
    mid = create(client, auth)
    assert deliver(mid).action == "sent"
    assert deliver(mid).action == "skipped"
    expire_lease(mid)  # even with an expired lease: the row is past `sending`
    assert deliver(mid).action == "skipped"
    assert len(live.sends(herald_id=mid)) == 1


def test_permanent_error_fails_with_code(live, client, auth, dispatched) -> None:
    mid = create(client, auth, channel="sms", to="+15005550001")
    assert deliver(mid).action == "failed"
    msg = load(mid)
    assert msg.status == "failed"
    assert (msg.error_code, msg.provider_error_code) == ("invalid_number", "21211")
    assert deliver(mid).action == "skipped"


def test_rate_limited_retries_after_backoff(live, client, auth, dispatched) -> None:
    # 131056: one recipient paced, not the whole sender (that holds it: see breaker).
    live.fault(provider="meta", status=400, code=131056, count=1, retry_after=1)
    mid = create(client, auth)
    outcome = deliver(mid)
    assert outcome.action == "retry" and outcome.retry_in >= 1
    assert deliver(mid).action == "skipped"  # lease held until the retry is due
    expire_lease(mid)
    assert deliver(mid).action == "sent"
    assert len(live.sends(herald_id=mid, accepted="true")) == 1
    assert load(mid).attempts == 2


def test_ambiguous_500_is_settled_by_the_callback_not_resent(
    live, client, auth, dispatched
) -> None:
    # The provider took the message but answered 500: resending would duplicate it.
    live.fault(provider="twilio", status=500, code=20500, count=1, mode="accept_then_error")
    mid = create(client, auth, channel="sms")
    assert deliver(mid).action == "retry"
    wait_for(lambda: load(mid).status in ("sent", "delivered"), what="callback settling it")
    expire_lease(mid)
    assert deliver(mid).action == "skipped"
    assert len(live.sends(herald_id=mid, accepted="true")) == 1
    assert load(mid).provider_message_id.startswith("SM")


def test_ambiguous_without_callback_is_resent_after_settling(
    live, client, auth, dispatched
) -> None:
    live.fault(provider="meta", status=500, code=131000, count=1)  # rejected, nothing recorded
    mid = create(client, auth)
    assert deliver(mid).action == "retry"
    expire_lease(mid)
    assert deliver(mid).action == "sent"
    assert len(live.sends(herald_id=mid, accepted="true")) == 1


def test_retries_are_bounded(live, client, auth, dispatched, monkeypatch) -> None:
    from core.config import get_settings

    monkeypatch.setenv("HERALD_MAX_ATTEMPTS", "2")
    get_settings.cache_clear()
    try:
        live.fault(provider="meta", status=400, code=131056, count=5)  # rate-limited
        mid = create(client, auth)
        assert deliver(mid).action == "retry"
        expire_lease(mid)
        assert deliver(mid).action == "failed"
        msg = load(mid)
        assert msg.status == "failed" and msg.attempts == 2
        assert (msg.error_code, msg.provider_error_code) == ("retries_exhausted", "131056")
        # An ambiguous last attempt settles first (a callback may prove it sent), then
        # the next claim gives up.
        live.control.delete("/_sandbox/faults")
        live.fault(provider="meta", status=503, code=131016, count=5)
        other = create(client, auth)
        assert deliver(other).action == "retry"
        expire_lease(other)
        assert deliver(other).action == "retry"
        expire_lease(other)
        assert deliver(other).action == "skipped"
        msg = load(other)
        assert (msg.status, msg.error_code, msg.attempts) == ("failed", "retries_exhausted", 3)
    finally:
        monkeypatch.delenv("HERALD_MAX_ATTEMPTS")
        get_settings.cache_clear()


def test_lost_twilio_answer_is_reconciled_not_resent(live, client, auth, dispatched) -> None:
    # Twilio took the message, answered 500, and no callback comes (callbacks off):
    # before resending, Herald finds it at Twilio and adopts its SID.
    live.config(callbacks={"enabled": False})
    live.fault(provider="twilio", status=500, code=20500, count=1, mode="accept_then_error")
    mid = create(client, auth, channel="sms", body=f"reconcile me {mid_suffix()}")
    assert deliver(mid).action == "retry"
    expire_lease(mid)
    assert deliver(mid).action == "sent"
    (accepted,) = live.sends(herald_id=mid, accepted="true")
    msg = load(mid)
    assert msg.provider_message_id == accepted["provider_message_id"]
    with session_scope() as session:
        details = session.scalars(
            select(MessageEvent.detail).where(
                MessageEvent.message_id == mid, MessageEvent.status == "sent"
            )
        ).all()
    assert {"reconciled": True} in details


def test_reconcile_ignores_a_sid_owned_by_another_message(live, client, auth, dispatched) -> None:
    live.config(callbacks={"enabled": False})
    body = f"same text {mid_suffix()}"
    first = create(client, auth, channel="sms", body=body)
    assert deliver(first).action == "sent"
    live.fault(provider="twilio", status=503, code=20503, count=1)  # rejected, nothing taken
    second = create(client, auth, channel="sms", body=body)
    assert deliver(second).action == "retry"
    expire_lease(second)
    assert deliver(second).action == "sent"
    assert load(second).provider_message_id != load(first).provider_message_id
    assert len(live.sends(herald_id=second, accepted="true")) == 1


def mid_suffix() -> str:
    import uuid

    return uuid.uuid4().hex[:8]


def test_reversed_and_duplicated_callbacks_end_in_the_right_state(
    live, client, auth, dispatched
) -> None:
    live.config(
        callbacks={
            "order": "reverse",
            "duplicate": True,
            "skip_delivered_rate": 0,
            "batch_window": 0,
        }
    )
    mid = create(client, auth)  # WhatsApp via Meta: read, delivered, sent, each twice
    assert deliver(mid).action == "sent"

    def callbacks_for_message() -> list:
        logged = live.control.get("/_sandbox/callbacks").json()["callbacks"]
        return [c for c in logged if c.get("herald_id") == mid]

    wait_for(lambda: len(callbacks_for_message()) >= 6, what="six callbacks")
    wait_for(lambda: live.control.get("/_sandbox/callbacks").json()["pending"] == 0, what="drain")
    assert load(mid).status == "read"
    with session_scope() as session:
        applied = session.scalars(
            select(MessageEvent.status).where(
                MessageEvent.message_id == mid,
                MessageEvent.source == "meta",
                MessageEvent.applied.is_(True),
            )
        ).all()
        recorded = session.scalars(
            select(MessageEvent.status).where(
                MessageEvent.message_id == mid, MessageEvent.source == "meta"
            )
        ).all()
    assert applied == ["read"]  # delivered and sent came late: recorded, not applied
    assert sorted(recorded) == ["delivered", "read", "sent"]  # duplicates recorded once


def test_logs_mask_numbers_and_never_show_tokens(live, client, auth, dispatched, caplog) -> None:
    import logging

    from tests.conftest import META_TOKEN, TWILIO_TOKEN

    caplog.set_level(logging.DEBUG)
    for fields in ({}, {"channel": "sms"}, {"to": "+15005550001", "channel": "sms"}):
        deliver(create(client, auth, **fields))
    from core.logs import MaskingFilter

    masking = MaskingFilter()
    lines = []
    for record in caplog.records:
        masking.filter(record)
        lines.append(record.getMessage())
    logged = "\n".join(lines)
    assert "message sent" in logged and "+1******0143" in logged
    assert "12025550143" not in logged
    assert TWILIO_TOKEN not in logged and META_TOKEN not in logged


def bulk_tenant(name: str, sms_from: str) -> tuple[dict[str, str], dict[str, str]]:
    """A tenant whose Twilio SMS sender allows 100 msg/s, and its auth header."""
    from tests.conftest import TWILIO_SID, TWILIO_TOKEN, make_tenant

    tenant = make_tenant(
        name,
        twilio={
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "sms_from": sms_from,
            "mps": 100,
        },
    )
    return tenant, {"Authorization": f"Bearer {tenant['api_key']}"}


def test_a_campaign_batch_is_sent_concurrently_in_one_task(live, client, dispatched) -> None:
    from services.campaigns.campaigns import release_due_campaigns
    from workers.tasks import deliver_batch

    _, auth = bulk_tenant("bulk", "+12025550144")
    live.config(latency_ms={"twilio": 200})
    resp = client.post(
        "/v1/campaigns",
        headers=auth,
        json={
            "name": "batch",
            "channel": "sms",
            "body": "hi",
            "rate": 100,
            "recipients": [{"to": f"+120255503{n:02d}"} for n in range(16)],
        },
    )
    cid = resp.get_json()["id"]
    release_due_campaigns()
    ours = [b for b in dispatched.batches if all(load(i).campaign_id == cid for i in b)]
    assert sum(len(b) for b in ours) == 16
    for batch in ours:
        assert deliver_batch.run(batch) == {"sent": len(batch)}
    received = sorted(s["received_at"] for s in live.sends(accepted="true"))
    assert len(received) == 16
    # Sent one by one, 200 ms apart at least; concurrently, many arrive together.
    assert sum(1 for t in received if t - received[0] < 0.15) >= 8, received


def test_a_batch_claims_and_records_in_one_transaction_each(live, client, dispatched) -> None:
    """The batch path's rules are the single path's: a row another attempt holds, a
    recipient who opted out since, a permanent provider error and a redelivered batch
    each end as they would alone; and the database work is per batch, not per row."""
    from sqlalchemy import event

    from models import Contact, ProviderAccount
    from models.db import get_engine
    from services.messages.delivery import deliver_many

    tenant, auth = bulk_tenant("batchrules", "+12025550145")
    ids = [
        create(client, auth, channel="sms", to=f"+120255504{n:02d}", body=f"batch {n}")
        for n in range(12)
    ]
    held, stopped = ids[0], ids[1]
    stopped_to = load(stopped).to_number
    with session_scope() as session:
        session.execute(
            update(Message)
            .where(Message.id == held)
            .values(status="sending", lease_until=utcnow() + timedelta(minutes=5))
        )
        session.add(Contact(tenant_id=tenant["tenant_id"], phone=stopped_to, opted_out=True))
        assert session.scalar(
            select(ProviderAccount.id).where(ProviderAccount.tenant_id == tenant["tenant_id"])
        )
    live.fault(provider="twilio", status=400, code=21211, count=1)  # one invalid number

    commits: list[str] = []
    here = threading.current_thread().name

    def listener(_conn) -> None:  # type: ignore[no-untyped-def]
        # Only this batch's commits: the in-process API commits callbacks meanwhile.
        name = threading.current_thread().name
        if name == here or name.startswith("herald-batch"):
            commits.append(name)

    event.listen(get_engine(), "commit", listener)
    try:
        outcomes = deliver_many(ids)
    finally:
        event.remove(get_engine(), "commit", listener)

    actions = [o.action for o in outcomes]
    assert actions[0] == "skipped" and load(held).status == "sending"
    # Refused at the claim, as the single path does: nothing sent, the record says why.
    assert actions[1] == "skipped"
    assert (load(stopped).status, load(stopped).error_code) == ("failed", "opted_out")
    assert sorted(actions[2:]) == ["failed"] + ["sent"] * 9
    (invalid,) = [load(i) for i, a in zip(ids, actions, strict=True) if a == "failed"]
    assert (invalid.status, invalid.error_code) == ("failed", "invalid_number")
    # Gate, claim, record (+ the failed row's own): not one transaction per recipient.
    assert len(commits) <= 4, len(commits)

    again = deliver_many(ids)  # the batch task redelivered after a lost ack
    assert {o.action for o in again} == {"skipped"}
    for mid in ids[2:]:
        assert len(live.sends(herald_id=mid)) == 1
    assert live.sends(herald_id=stopped) == [] and live.sends(herald_id=held) == []


def test_a_batch_starts_each_claimed_send_at_once(live, client, dispatched, monkeypatch) -> None:
    """A batch wider than its threads is claimed a chunk at a time, and each chunk's
    calls all start before the next claim: no claimed row waits for a thread while its
    lease runs out (it would be swept, claimed and sent again elsewhere)."""
    import services.messages.delivery as delivery

    _, auth = bulk_tenant("chunks", "+12025550146")
    ids = [
        create(client, auth, channel="sms", to=f"+120255505{n:02d}", body=f"chunk {n}")
        for n in range(delivery.BATCH_THREADS + 8)
    ]
    live.config(latency_ms={"twilio": 100})
    trace: list[tuple[str, list[str]]] = []
    lock = threading.Lock()
    real_claim, real_send = delivery.claim_many, delivery.send_claimed

    def claim(message_ids: list[str], *known):  # type: ignore[no-untyped-def]
        claims = real_claim(message_ids, *known)
        with lock:
            trace.append(("claim", [m.id for m, _ in claims]))
        return claims

    def send(message, account):  # type: ignore[no-untyped-def]
        with lock:
            trace.append(("start", [message.id]))
        return real_send(message, account)

    monkeypatch.setattr(delivery, "claim_many", claim)
    monkeypatch.setattr(delivery, "send_claimed", send)
    assert {o.action for o in delivery.deliver_many(ids)} == {"sent"}

    claims = [i for i, (kind, _) in enumerate(trace) if kind == "claim"]
    assert len(claims) == 2  # as wide as the batch threads, then the rest
    for n, at in enumerate(claims):
        chunk = trace[at][1]
        assert len(chunk) <= delivery.BATCH_THREADS
        until = claims[n + 1] if n + 1 < len(claims) else len(trace)
        started = {mid for kind, mids in trace[at:until] if kind == "start" for mid in mids}
        assert started == set(chunk)
    assert all(len(live.sends(herald_id=mid)) == 1 for mid in ids)
