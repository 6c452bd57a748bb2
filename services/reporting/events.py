"""Events out: status changes POSTed, signed, to the tenant's callback URL.

A status change writes an EventDelivery row in its own transaction; after the
commit a task delivers the message's pending events strictly in order. One event
failing holds back the later ones of the same message (ordering per message is
the promise) until it succeeds or is given up after MAX_ATTEMPTS; events of other
messages are independent.

Deliveries run on their own worker (the `herald.events` queue, never consumed by the
workers that send), each bounded by a wall-clock deadline and pinned to the address
its SSRF check judged (outbound.py), and each takes a slot under its tenant's and its
host's caps behind its host's breaker (fairness.py): a tenant's slow or dead receiver
costs that tenant's events time, not other tenants' sends or events.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from datetime import timedelta
from typing import Any

from marshmallow import fields, validate
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.config import get_settings
from core.shapes import Shape
from models import EventDelivery, Message, Tenant, session_scope, utcnow
from services.messages.dispatch import enqueue_after_commit
from services.messages.serialize import MessageView, message_to_dict
from services.policy.limits import get_redis, key
from services.reporting import fairness, outbound
from services.tenancy.secrets import decrypt_json

log = logging.getLogger(__name__)

EVENTS_QUEUE = "herald.events"
EVENTS_TASK = "herald.deliver_events"
MAX_ATTEMPTS = 10
# How long one task may own a message's events (the Redis lock). A task stops taking
# the next event once a whole delivery deadline would no longer fit in it.
LOCK_SECONDS = 60


class MessageStatusEventView(Shape):
    """What Herald POSTs to the callback URL when a message's status changes, signed in
    `X-Herald-Signature` (`sign`); the payload is stored with the event and `_post`
    adds its id."""

    id = fields.String(metadata={"description": "evt_…: the same on every retry, to dedupe"})
    type = fields.String(validate=validate.OneOf(["message.status"]))
    message = fields.Nested(MessageView, metadata={"description": "without its events"})


class MessageFailoverEventView(Shape):
    """What Herald POSTs when a WhatsApp message falls back to SMS
    (services/messages/failover.py): `message.failover` once the fallback exists (or was
    refused: `fallback` null, `refusal` why), and `message.late_status` when the
    original reports `delivered` or `read` after its fallback left."""

    class Meta:
        optional = ("fallback", "refusal", "status", "native_status")

    id = fields.String(metadata={"description": "evt_…: the same on every retry, to dedupe"})
    type = fields.String(validate=validate.OneOf(["message.failover", "message.late_status"]))
    message = fields.Nested(MessageView, metadata={"description": "the WhatsApp original"})
    fallback = fields.Nested(
        MessageView, allow_none=True, metadata={"description": "the SMS sent in its place"}
    )
    refusal = fields.Dict(
        metadata={"description": "why no fallback was sent: `code` and `message`"}
    )
    status = fields.String(metadata={"description": "late_status: the status reported late"})
    native_status = fields.String(allow_none=True)


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`: the timestamp is signed too, so a
    receiver can refuse replays older than a few minutes."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def _callback_url():  # type: ignore[no-untyped-def]
    """Where a message's events go: its own URL, else its tenant's (join Tenant)."""
    return func.coalesce(Message.callback_url, Tenant.callback_url)


def listening(session: Session, message_ids: list[str]) -> set[str]:
    """Which of these messages have someone to tell."""
    if not message_ids:
        return set()
    url = _callback_url()
    return set(
        session.scalars(
            select(Message.id)
            .join(Tenant, Tenant.id == Message.tenant_id)
            .where(Message.id.in_(message_ids), url.is_not(None), url != "")
        )
    )


def record_status_event(session: Session, message_id: str) -> None:
    """Owe the tenant an event for the message's new status, if anyone listens.

    Who listens is one query; the message is loaded for the payload only then, since
    most sends (campaigns above all) have no listener."""
    url = session.scalar(
        select(_callback_url())
        .join(Tenant, Tenant.id == Message.tenant_id)
        .where(Message.id == message_id)
    )
    if not url:
        return
    message = session.get(Message, message_id)
    if message is None:
        return
    session.refresh(message)
    session.add(
        EventDelivery(
            message_id=message.id,
            tenant_id=message.tenant_id,
            url=url,
            payload={"type": "message.status", "message": message_to_dict(message, events=False)},
        )
    )
    enqueue_after_commit(session, [message.id], EVENTS_QUEUE, task=EVENTS_TASK)


def record_event(session: Session, message: Message, payload: dict[str, Any]) -> bool:
    """Owe the tenant an event of another type than `message.status` (failover's), in
    the same order per message as status events; whether anyone listens."""
    url = message.callback_url or session.scalar(
        select(Tenant.callback_url).where(Tenant.id == message.tenant_id)
    )
    if not url:
        return False
    session.add(
        EventDelivery(message_id=message.id, tenant_id=message.tenant_id, url=url, payload=payload)
    )
    enqueue_after_commit(session, [message.id], EVENTS_QUEUE, task=EVENTS_TASK)
    return True


def deliver_pending_events(message_id: str) -> float | None:
    """Send the message's due events in order. Returns seconds until a retry is due, or None."""
    lock = None
    redis = get_redis()
    if redis is not None:
        lock = redis.lock(key("events", message_id), timeout=LOCK_SECONDS, blocking_timeout=0)
        try:
            if not lock.acquire():
                return 2.0  # another worker is delivering this message's events
        except Exception:
            lock = None  # Redis down: deliver anyway; receivers dedupe by event id
    try:
        return _deliver_in_order(message_id)
    finally:
        if lock is not None:
            with contextlib.suppress(Exception):  # expired or Redis gone: nothing to free
                lock.release()


def _deliver_in_order(message_id: str) -> float | None:
    # Read in one short transaction and POST outside any: a slow tenant URL must not
    # hold a database connection and its row locks for the length of a timeout.
    started = time.monotonic()
    budget = LOCK_SECONDS - get_settings().events_deadline_seconds - 5
    with session_scope() as session:
        pending = [
            (e.id, e.url, e.payload, e.next_attempt_at, e.tenant_id)
            for e in session.scalars(
                select(EventDelivery)
                .where(EventDelivery.message_id == message_id, EventDelivery.status == "pending")
                .order_by(EventDelivery.id)
            )
        ]
        secrets = {
            tenant_id: webhook_secret(session.get(Tenant, tenant_id))
            for tenant_id in {p[4] for p in pending}
        }
    for event_id, url, payload, next_attempt_at, tenant_id in pending:
        now = utcnow()
        if next_attempt_at > now:
            return (next_attempt_at - now).total_seconds()
        if time.monotonic() - started > budget:
            return 0.1  # the lock would lapse mid-delivery: go on in a fresh task
        admission = fairness.admit(tenant_id, url)
        if admission.wait is not None:
            # Not attempted, so not counted; the row says when, so the sweeper waits too.
            _defer(event_id, admission.wait)
            log.debug("event %s deferred %.1fs: %s", event_id, admission.wait, admission.reason)
            return admission.wait
        assert admission.slot is not None
        try:
            error = _post(event_id, url, payload, secrets[tenant_id])
        finally:
            admission.slot.release()
        if error is None or not error.startswith(("refused", "not an http")):
            fairness.record(url, ok=error is None)
        with session_scope() as session:
            event = session.get(EventDelivery, event_id)
            assert event is not None
            event.attempts += 1
            if error is None:
                event.status, event.delivered_at, event.last_error = "delivered", utcnow(), None
                continue
            event.last_error = error
            if event.attempts >= MAX_ATTEMPTS or error.startswith(("refused", "not an http")):
                event.status = "failed"
                log.warning(
                    "event %s given up after %d attempts: %s", event_id, event.attempts, error
                )
                continue
            # Capped below the broker visibility timeout, as every countdown is (celeryconfig).
            wait = min(900.0, random.uniform(1, 2 ** min(event.attempts, 12)))
            event.next_attempt_at = utcnow() + timedelta(seconds=wait)
            return wait
    return None


def _defer(event_id: int, seconds: float) -> None:
    with session_scope() as session:
        session.execute(
            update(EventDelivery)
            .where(EventDelivery.id == event_id)
            .values(next_attempt_at=utcnow() + timedelta(seconds=seconds))
        )


def refusal(url: str) -> str | None:
    """Why Herald will not POST to `url`, if it will not: tenants choose callback URLs,
    and a worker must not be made to call into Herald's own network (SSRF). Deliveries
    judge the addresses they connect to themselves (outbound.post); this is the same
    judgement for a URL alone."""
    settings = get_settings()
    try:
        outbound.resolve_target(
            url,
            allow_private=settings.allow_private_callbacks,
            timeout=settings.events_deadline_seconds,
        )
    except outbound.Refused as exc:
        return str(exc)
    except outbound.DeliveryFailed as exc:
        return str(exc)
    return None


def _post(event_id: int, url: str, payload: dict[str, Any], secret: str) -> str | None:
    """POST one event; None when the receiver took it, else the error kept on its row."""
    settings = get_settings()
    body = json.dumps({"id": f"evt_{event_id}", **payload}, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "X-Herald-Signature": sign(secret, body)}
    try:
        status = outbound.post(
            url,
            body,
            headers,
            deadline_seconds=settings.events_deadline_seconds,
            allow_private=settings.allow_private_callbacks,
        )
    except (outbound.Refused, outbound.DeliveryFailed) as exc:
        return str(exc)
    return None if 200 <= status < 300 else f"HTTP {status}"


def overdue_event_messages(limit: int = 500) -> list[str]:
    """Messages with events due a while ago (their task may have been lost): for the
    sweeper. Events just due belong to the task already scheduled for them; ringing
    again at once would start a second chain of retries for the same message."""
    grace = timedelta(seconds=get_settings().sweep_after_seconds)
    with session_scope() as session:
        return list(
            session.scalars(
                select(EventDelivery.message_id)
                .where(
                    EventDelivery.status == "pending",
                    EventDelivery.next_attempt_at < utcnow() - grace,
                )
                .group_by(EventDelivery.message_id)
                .limit(limit)
            )
        )


def webhook_secret(tenant: Tenant) -> str:
    return decrypt_json(tenant.webhook_secret_enc)["secret"] if tenant.webhook_secret_enc else ""
