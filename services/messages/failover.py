"""Channel failover: a WhatsApp message that WhatsApp cannot deliver is sent again as an
SMS through Twilio, once, with the text the caller gave for it (`failover.body`) or its
own body.

What triggers it, decided by the failover sweep (beat, `herald.failover`) on the row
locked in one transaction with the fallback's creation:

* the message ended `failed` or `undelivered` with a provider code SMS can cure
  (`CURABLE`): not on WhatsApp or undeliverable (Meta 131026, Twilio 63003 and 63024),
  outside the 24-hour window (131047, 63016), or held back by Meta's per-user marketing
  limit (131049, 63049); or Herald itself found the window closed when it accepted the
  message (it is then stored `failed`, `window_closed`, instead of refused with 422).
  Any other failure (an invalid number, an opt-out, a rejected
  template, the message's own ttl) would fail on SMS too, or must not be sent late;
* `failover.after_seconds` passed since it was due and it is not `delivered` or `read`:
  the original ends `failed` with code `failover_deadline` first (a `queued` one is
  never sent after that; a `sending` one is left until its call settles), then the
  fallback is made. A `delivered` that arrives later is kept on the original's
  timeline and reported (`message.late_status`), never undone.

Exactly once: the fallback is a new message whose idempotency key is the original's id
(origin `failover`) and whose `failover_of` is unique, inserted in the transaction that
clears the original's `failover_pending`; a crash before the commit leaves both as they
were, for the next sweep. It passes every check a new SMS does (opt-out, quotas, the
pumping guard): a refusal is kept on the original's timeline and reported, and nothing
is sent. The fallback does not fall back again."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from core.errors import HeraldError
from models import Message, MessageEvent, Tenant, session_scope, utcnow
from services.content.schemas import load_message_request
from services.messages.accept import prepare, store
from services.messages.failover_policy import FALLBACK_CHANNEL, FALLBACK_PROVIDER
from services.messages.serialize import message_to_dict
from services.messages.status import apply_status
from services.reporting.events import record_event

log = logging.getLogger(__name__)

ORIGIN = "failover"
DEADLINE = "failover_deadline"
# Provider error codes after which an SMS may still reach the person (see the module's
# docstring; docs/decisions.md says where each comes from).
CURABLE = {
    "meta": frozenset({"131026", "131047", "131049"}),
    "twilio": frozenset({"63003", "63016", "63024", "63049"}),
}
# A pending row in one of these states is settled on the next sweep, deadline or not.
SETTLED = ("failed", "undelivered", "canceled", "delivered", "read")
SWEEP_LIMIT = 200


# Herald's own refusal at acceptance, when the request asked for a fallback: the
# recipient has not written within 24 hours (services/policy/consent.py).
CURABLE_HERE = frozenset({"window_closed"})


def curable(message: Message) -> bool:
    """Whether the message's failure is one an SMS can cure."""
    code = message.provider_error_code
    if not code:
        return message.error_code in CURABLE_HERE
    return code in CURABLE.get(message.provider, frozenset())


def _due(now: datetime) -> Any:
    return and_(
        Message.failover_pending,  # the partial index's own predicate (IS TRUE would miss it)
        or_(
            Message.status.in_(SETTLED),
            and_(Message.failover_at <= now, Message.status != "sending"),
        ),
    )


def due_statement(now: datetime, limit: int) -> Any:
    """The pending failovers due now, oldest deadline first: in the order of
    `ix_messages_failover_pending`, so the planner reads that index (holding only the
    pending rows) and never walks the primary key to save a sort."""
    return select(Message.id).where(_due(now)).order_by(Message.failover_at).limit(limit)


def sweep_failovers(now: datetime | None = None, limit: int = SWEEP_LIMIT) -> list[str]:
    """Settle every pending failover that is due: make its fallback, or drop it. One
    transaction per message, so one refusal or fault stops no other. The fallbacks made."""
    now = now or utcnow()
    with session_scope() as session:
        ids = list(session.scalars(due_statement(now, limit)))
    made: list[str] = []
    for message_id in ids:
        with session_scope() as session:
            fallback = settle(session, message_id, now)
        if fallback:
            made.append(fallback)
    if made:
        log.info("failover: %d fallback(s) made", len(made))
    return made


def settle(session: Session, message_id: str, now: datetime) -> str | None:
    """Decide one pending failover on the locked row; the fallback's id if one was made."""
    message = session.scalar(
        select(Message).where(Message.id == message_id, _due(now)).with_for_update(skip_locked=True)
    )
    if message is None:  # settled meanwhile, or another sweep holds it
        return None
    if message.status in ("failed", "undelivered"):
        if not curable(message):
            message.failover_pending = False
            return None
        reason = message.error_code or message.status
    elif message.status in ("canceled", "delivered", "read"):
        message.failover_pending = False
        return None
    else:  # past the deadline, not delivered: the original ends here, before any SMS
        moved = apply_status(
            session,
            message.id,
            "failed",
            source=ORIGIN,
            error_code=DEADLINE,
            error_message="not delivered by its failover deadline; sent again as an SMS",
            at=now,
        )
        if not moved:
            return None
        session.refresh(message)
        reason = DEADLINE
    return _fall_back(session, message, reason, now)


def _request(message: Message) -> dict[str, Any]:
    spec = (message.options or {}).get("failover") or {}
    payload: dict[str, Any] = {
        "to": message.to_number,
        "channel": FALLBACK_CHANNEL,
        "provider": FALLBACK_PROVIDER,
        "body": spec.get("body") or message.body,
    }
    if message.meta:
        payload["metadata"] = message.meta
    if message.callback_url:
        payload["callback_url"] = message.callback_url
    return payload


def _fall_back(session: Session, message: Message, reason: str, now: datetime) -> str | None:
    tenant = session.get(Tenant, message.tenant_id)
    assert tenant is not None
    message.failover_pending = False
    refusal: HeraldError | None = None
    fallback: dict[str, Any] | None = None
    try:
        payload = _request(message)
        data = load_message_request(payload)
        item = prepare(
            session,
            tenant,
            data,
            idempotency_key=message.id,
            raw=payload,
            origin=ORIGIN,
            test=bool(message.test),  # a test message's SMS goes to the simulator too
        )
        item.failover_of = message.id
        item.log_each = False
        store(session, [item])
        if item.error is not None:
            raise item.error
        fallback = {k: v for k, v in item.answer().items() if k != "events"}
    except HeraldError as exc:
        refusal = exc
    detail: dict[str, Any] = {"failover": reason}
    if fallback is not None:
        message.failover_id = fallback["id"]
        detail["failover_id"] = fallback["id"]
    else:
        assert refusal is not None
        detail["refused"] = refusal.code
    session.add(
        MessageEvent(
            message_id=message.id,
            status=message.status,
            native_status=ORIGIN,
            source=ORIGIN,
            applied=False,
            error_code=refusal.code if refusal is not None else None,
            detail=detail,
            at=now,
        )
    )
    session.flush()
    event: dict[str, Any] = {
        "type": "message.failover",
        "message": message_to_dict(message, events=False),
        "fallback": fallback,
    }
    if refusal is not None:
        event["refusal"] = {"code": refusal.code, "message": refusal.message}
    record_event(session, message, event)
    log.info(
        "failover id=%s reason=%s fallback=%s refused=%s",
        message.id,
        reason,
        fallback["id"] if fallback else None,
        refusal.code if refusal is not None else None,
    )
    return fallback["id"] if fallback else None
