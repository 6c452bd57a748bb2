"""Celery tasks: load ids, call the domain layer, report. No business rules here."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task, shared_task

from core.errors import RETRY_AFTER_SECONDS, HeraldError, InvalidRequest, database_unavailable
from models import Tenant, session_scope
from services.callbacks import meta_orphans
from services.campaigns import campaigns
from services.content.schemas import load_message_request
from services.messages import delivery, expiry, gate, reconcile
from services.messages import sweep as sweeps
from services.messages.dispatch import dispatch_now
from services.messages.service import BULK_QUEUE, SEND_QUEUE, accept_message
from services.reporting import events, rollups

log = logging.getLogger(__name__)


def _retry_if_database_down(task: Task, exc: Exception, max_retries: int | None = None) -> None:
    """Retry `task` shortly when `exc` is the database being unreachable (the attempt did
    nothing); any other error is the caller's to re-raise."""
    if database_unavailable(exc):
        raise task.retry(exc=exc, countdown=RETRY_AFTER_SECONDS, max_retries=max_retries) from exc


# Celery reads `retry(max_retries=None)` as "the task's default", 3: the fourth retry
# raised MaxRetriesExceededError and the row waited for the sweeper. The tasks whose
# retries the domain counts (HERALD_MAX_ATTEMPTS in a message's row, MAX_ATTEMPTS and
# the backoff in an event's) say `max_retries=None` where Celery reads it: on the task.
@shared_task(name="herald.deliver", bind=True, ignore_result=True, max_retries=None)
def deliver_message(self, message_id: str) -> str:  # type: ignore[no-untyped-def]
    """One delivery attempt (tasks queued before batches, and retries); a retry is
    rescheduled with the countdown the domain chose. A throttled or held message is
    parked in its row, not here. With the database unreachable the attempt is retried
    shortly (the sweeper would find the row too, but only HERALD_SWEEP_AFTER_SECONDS
    later)."""
    try:
        outcome = delivery.deliver(message_id)
    except Exception as exc:
        _retry_if_database_down(self, exc)
        raise
    if outcome.action == "retry" and outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.action


@shared_task(name="herald.deliver_batch", bind=True, ignore_result=True)
def deliver_batch(self, message_ids: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """A batch (transactional or campaign), sent concurrently. Parked rows (throttled,
    held) wait in the database for `release_due`; each message whose attempt failed
    and needs a later retry gets its own delivery task with the domain's countdown."""
    try:
        outcomes = delivery.deliver_many(message_ids)
    except Exception as exc:
        _retry_if_database_down(self, exc)
        raise
    queue = (self.request.delivery_info or {}).get("routing_key") or BULK_QUEUE
    for message_id, outcome in zip(message_ids, outcomes, strict=True):
        if outcome.action == "retry" and outcome.retry_in is not None:
            deliver_message.apply_async(args=[message_id], countdown=outcome.retry_in, queue=queue)
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.action] = counts.get(outcome.action, 0) + 1
    return counts


@shared_task(name="herald.release_due", ignore_result=True)
def release_due() -> int:
    """Beat, every second: due scheduled messages, parked messages whose due time came
    (sender budget, hold), and each running campaign's next batch within its rate.
    (No Celery ETA or countdown for waits: the rows wait, not tasks.)"""
    released = sweeps.release_scheduled()
    if released:
        dispatch_now(released, SEND_QUEUE)
    parked = gate.release_parked()
    for queue in (SEND_QUEUE, BULK_QUEUE):
        ids = [mid for mid, campaign in parked if (campaign is None) == (queue == SEND_QUEUE)]
        if ids:
            dispatch_now(ids, queue)
    return len(released) + len(parked) + campaigns.release_due_campaigns()


@shared_task(name="herald.deliver_events", bind=True, ignore_result=True, max_retries=None)
def deliver_events(self, message_id: str) -> None:  # type: ignore[no-untyped-def]
    """POST the message's owed events to the tenant, in order; retry the stuck one later
    (the rows count the attempts and give up after events.MAX_ATTEMPTS, so the task
    retries for as long as they say)."""
    wait = events.deliver_pending_events(message_id)
    if wait is not None:
        raise self.retry(countdown=wait)


@shared_task(name="herald.send_message", bind=True, ignore_result=False)
def send_message(  # type: ignore[no-untyped-def]
    self, tenant_id: Any = None, idempotency_key: str | None = None, **fields: Any
) -> dict[str, Any]:
    """The public task: the same validation and path as POST /v1/messages. Every mistake
    of the caller's, a missing `tenant_id` included, is the returned error object: a
    TypeError from Celery's call would reach the caller as an exception instead."""
    if not isinstance(tenant_id, str) or not tenant_id:
        problem = "Give tenant_id: the id (ten_…) of the tenant sending the message."
        return InvalidRequest(problem, fields={"tenant_id": [problem]}).to_dict()
    try:
        with session_scope() as session:
            tenant = session.get(Tenant, tenant_id)
            if tenant is None:
                return {
                    "error": {"code": "tenant_not_found", "message": f"No tenant {tenant_id!r}."}
                }
            data = load_message_request(fields)
            # Without a key of the caller's, the task id is one: a redelivered task
            # (late ack after a worker died) returns the first message, not a second.
            task_id = self.request.id
            key = idempotency_key or (f"celery:{task_id}" if task_id else None)
            message, _ = accept_message(session, tenant, data, idempotency_key=key, raw=fields)
            result = {"id": message.id, "status": message.status}
        return result
    except HeraldError as exc:
        return exc.to_dict()
    except Exception as exc:
        # Nothing was stored: try again once the database is back (same task id, so the
        # same idempotency key: never two messages), rather than fail the caller's task.
        _retry_if_database_down(self, exc, max_retries=60)
        raise


@shared_task(name="herald.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    """Ring the doorbell again for rows (and owed events) the broker may have lost.
    Re-enqueueing is harmless: the claim dedups."""
    due = sweeps.due_for_sweep()
    for queue in (SEND_QUEUE, BULK_QUEUE):
        ids = [mid for mid, campaign in due if (campaign is None) == (queue == SEND_QUEUE)]
        if ids:
            dispatch_now(ids, queue)
    owed = events.overdue_event_messages()
    if owed:
        dispatch_now(owed, events.EVENTS_QUEUE, events.EVENTS_TASK)
    if due or owed:
        log.info("sweep re-enqueued=%d events=%d", len(due), len(owed))
    return {"requeued": len(due), "events": len(owed)}


@shared_task(name="herald.reconcile", ignore_result=True)
def reconcile_statuses() -> dict[str, int]:
    """Beat, every minute: ask Twilio about messages whose callbacks never came (bounded
    per run), and apply Meta statuses that arrived before their wamid was recorded."""
    counts = reconcile.reconcile_stale()
    counts["orphans"] = meta_orphans.apply_stored_orphans()
    return counts


@shared_task(name="herald.fold_counts", ignore_result=True)
def fold_counts() -> int:
    """Beat, every few seconds: move the message count deltas into the rollups that
    usage, campaign progress and /metrics read (services/reporting/rollups.py)."""
    return rollups.fold_all()


@shared_task(name="herald.sync_templates", ignore_result=True)
def sync_templates() -> dict[str, int]:
    """Beat, daily: every account's WhatsApp templates from Meta and Twilio Content
    (Twilio sends no status webhook: this is how its approvals arrive)."""
    from services.content.template_sync import sync_all

    return sync_all()


@shared_task(name="herald.expire", ignore_result=True)
def expire() -> int:
    """Beat: fail the waiting messages whose ttl has passed (services/messages/expiry.py)."""
    return len(expiry.expire_waiting())


@shared_task(name="herald.failover", ignore_result=True)
def failover() -> int:
    """Beat: WhatsApp messages that failed in a way SMS can cure, or passed their
    deadline undelivered, sent again as SMS (services/messages/failover.py)."""
    from services.messages.failover import sweep_failovers

    return len(sweep_failovers())


@shared_task(name="herald.apply_inbox", ignore_result=True)
def apply_inbox() -> int:
    """Beat: store the callbacks spooled in Redis while the database was unreachable
    (the process that spooled them does within a second of its return; this is for one
    that died first), then apply status callbacks left in the webhook inbox (likewise)."""
    from services.callbacks import applier, inbox, spool

    try:
        spool.drain_all()
    except redis.RedisError as exc:  # the inbox still gets its pass
        log.warning("callback spool not drained: %s", exc)
    return applier.apply_all(older_than=inbox.STALE_SECONDS)


@shared_task(name="herald.simulate", ignore_result=True)
def simulate(message_ids: list[str] | str) -> int:
    """A batch of test messages' simulated statuses (services/messages/simulation.py);
    a single id, as tasks published before batches carry, is a batch of one."""
    from services.messages.simulation import simulate as apply_simulated

    return apply_simulated(message_ids)


@shared_task(name="herald.purge", ignore_result=True)
def purge() -> dict[str, object]:
    """Beat, hourly: content past each tenant's retention goes, the counts stay
    (services/lifecycle/purge.py)."""
    from services.lifecycle.purge import purge_all

    return purge_all(max_seconds=60.0)
