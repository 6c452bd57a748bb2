"""Events out: status changes POSTed, signed, to the tenant's callback URL.

A status change writes an EventDelivery row in its own transaction; after the
commit a task delivers the message's pending events strictly in order. One event
failing holds back the later ones of the same message (ordering per message is
the promise) until it succeeds or is given up after MAX_ATTEMPTS; events of other
messages are independent.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import threading
import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from marshmallow import fields, validate
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.config import get_settings
from core.shapes import Shape
from models import EventDelivery, Message, Tenant, session_scope, utcnow
from services.messages.dispatch import enqueue_after_commit
from services.messages.serialize import MessageView, message_to_dict
from services.policy.limits import get_redis, key
from services.tenancy.secrets import decrypt_json

log = logging.getLogger(__name__)

EVENTS_QUEUE = "herald.events"
EVENTS_TASK = "herald.deliver_events"
MAX_ATTEMPTS = 10
_http_lock = threading.Lock()
_http: httpx.Client | None = None


class MessageStatusEventView(Shape):
    """What Herald POSTs to the callback URL when a message's status changes, signed in
    `X-Herald-Signature` (`sign`); the payload is stored with the event and `_post`
    adds its id."""

    id = fields.String(metadata={"description": "evt_…: the same on every retry, to dedupe"})
    type = fields.String(validate=validate.OneOf(["message.status"]))
    message = fields.Nested(MessageView, metadata={"description": "without its events"})


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


def _client() -> httpx.Client:
    global _http
    with _http_lock:
        if _http is None:
            _http = httpx.Client(timeout=10, headers={"User-Agent": "Herald-Events/1"})
        return _http


def deliver_pending_events(message_id: str) -> float | None:
    """Send the message's due events in order. Returns seconds until a retry is due, or None."""
    lock = None
    redis = get_redis()
    if redis is not None:
        lock = redis.lock(key("events", message_id), timeout=60, blocking_timeout=0)
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
        error = _post(event_id, url, payload, secrets[tenant_id])
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
            event.next_attempt_at = now + timedelta(seconds=wait)
            return wait
    return None


def refusal(url: str) -> str | None:
    """Why Herald will not POST to `url`, if it will not: tenants choose callback URLs,
    and a worker must not be made to call into Herald's own network (SSRF)."""
    if get_settings().allow_private_callbacks:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL"
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return "host does not resolve"
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            return f"refused: {parts.hostname} resolves to a non-public address"
    return None


def _post(event_id: int, url: str, payload: dict[str, Any], secret: str) -> str | None:
    refused = refusal(url)
    if refused:
        return refused
    body = json.dumps({"id": f"evt_{event_id}", **payload}, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "X-Herald-Signature": sign(secret, body)}
    try:
        response = _client().post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"


def overdue_event_messages(limit: int = 500) -> list[str]:
    """Messages with events due (their task may have been lost): for the sweeper."""
    with session_scope() as session:
        return list(
            session.scalars(
                select(EventDelivery.message_id)
                .where(EventDelivery.status == "pending", EventDelivery.next_attempt_at < utcnow())
                .group_by(EventDelivery.message_id)
                .limit(limit)
            )
        )


def webhook_secret(tenant: Tenant) -> str:
    return decrypt_json(tenant.webhook_secret_enc)["secret"] if tenant.webhook_secret_enc else ""
