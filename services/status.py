"""The message status machine: forward only, terminal states final.

Every change is a conditional UPDATE whose WHERE clause lists the states the
move is allowed from, so two webhooks racing on one message cannot both win and
a late `sent` can never overwrite `delivered`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.orm import Session

from models import Message, MessageEvent, utcnow
from services.events import record_status_event

PROGRESS = ("scheduled", "queued", "sending", "sent", "delivered", "read")
RANK = {s: i for i, s in enumerate(PROGRESS)}
TERMINAL = frozenset({"failed", "undelivered", "canceled"})
OUTBOUND = frozenset(PROGRESS) | TERMINAL


def can_move(current: str, new: str) -> bool:
    """Whether `current` → `new` is a legal move.

    Failures are believed until the message is known delivered: a provider
    saying `undelivered` after `delivered` is kept as an event only.
    """
    if current in TERMINAL or current == new:
        return False
    if new == "canceled":
        return current in ("scheduled", "queued")
    if new in TERMINAL:
        return RANK[current] < RANK["delivered"]
    return RANK.get(new, -1) > RANK[current]


def allowed_from(new: str) -> list[str]:
    return [s for s in OUTBOUND if s not in TERMINAL and can_move(s, new)]


def apply_status(
    session: Session,
    message_id: str,
    new: str,
    *,
    source: str,
    native_status: str | None = None,
    at: datetime | None = None,
    error_code: str | None = None,
    provider_code: str | None = None,
    error_message: str | None = None,
    detail: dict[str, Any] | None = None,
    provider_message_id: str | None = None,
    price: Decimal | None = None,
    price_unit: str | None = None,
    from_number: str | None = None,
    listening: bool | None = None,
) -> bool:
    """Move the message to `new` if that is forward, and record the event either way.

    Returns whether the status changed. Provider id and price are filled in even
    when the status does not move (a `sent` callback may be the first to carry
    the SID when it beats the worker's own commit). `listening`: whether anyone
    takes events for this message, when the caller already asked (a batch);
    None asks here.
    """
    at = at or utcnow()
    values: dict[str, Any] = {"status": new, "updated_at": utcnow()}
    if new == "sent":
        values["sent_at"] = func.coalesce(Message.sent_at, at)
    if new in ("delivered", "read"):
        values["delivered_at"] = func.coalesce(Message.delivered_at, at)
        values["sent_at"] = func.coalesce(Message.sent_at, at)
    if new == "read":
        values["read_at"] = at
    if new in TERMINAL - {"canceled"}:
        values["error_code"] = error_code or new
        values["error_message"] = error_message
        values["provider_error_code"] = provider_code
    if new in TERMINAL or RANK.get(new, 0) >= RANK["sent"]:
        values["lease_until"] = None
    extra: dict[str, Any] = {}
    if provider_message_id:
        extra["provider_message_id"] = func.coalesce(
            Message.provider_message_id, provider_message_id
        )
    if price is not None:
        extra["price"] = price
        extra["price_unit"] = price_unit
    if from_number:
        extra["from_number"] = func.coalesce(Message.from_number, from_number)
    # One round trip when the move applies (the usual case): the facts ride along.
    result = session.execute(
        update(Message)
        .where(Message.id == message_id, Message.status.in_(allowed_from(new)))
        .values(**values, **extra)
        .execution_options(synchronize_session=False)
    )
    applied = result.rowcount == 1
    if applied:
        if listening is None or listening:
            record_status_event(session, message_id)
    elif extra:
        session.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(**extra)
            .execution_options(synchronize_session=False)
        )
    session.add(
        MessageEvent(
            message_id=message_id,
            status=new,
            native_status=native_status,
            source=source,
            applied=applied,
            error_code=provider_code or error_code,
            detail=detail,
            at=at,
        )
    )
    return applied
