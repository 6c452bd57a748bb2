"""Asking Twilio about messages whose callbacks never came.

Twilio retries a status callback only when the connection fails, never after an
HTTP error answer, so a callback Herald rolled back (or never got) is gone. A
message left in `sending`/`sent` with nothing heard for
HERALD_RECONCILE_AFTER_MINUTES is fetched (`GET /Messages/{sid}.json`) and its
status, error code and price applied; the price is only ever in that resource.
A message that reached a billed final status by callback is fetched once too, for its
price alone.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from core.config import get_settings
from models import Message, ProviderAccount, session_scope, utcnow
from providers import ProviderError, error_name, get_provider
from services.callbacks.twilio import TWILIO_STATUS
from services.messages.status import apply_status
from services.tenancy.tenants import credentials

log = logging.getLogger(__name__)

BATCH = 100  # messages selected per query
# A run keeps taking batches while the backlog fills them, up to this many fetches or
# this long (under the beat's 60 s interval), so reconcile and pricing keep pace with
# the traffic instead of a fixed 100 a minute.
MAX_PER_RUN = 3000
RUN_SECONDS = 45.0
MAX_AGE = timedelta(hours=72)  # past this, Twilio's answer will not change any more
# Twilio bills these final statuses (`failed` never left Twilio and costs nothing).
BILLED = ("delivered", "read", "undelivered")
# Twilio fills a message's price in shortly after it is final; an answer still without
# one this long after sending is taken as final (price stays unknown, not asked again).
PRICE_WAIT = timedelta(hours=1)


def stale_twilio_messages(older_than: timedelta, limit: int = BATCH) -> list[str]:
    """Ids of Twilio messages in `sending`/`sent`, with a SID, untouched for `older_than`."""
    return _twilio_ids(older_than, limit, Message.status.in_(("sending", "sent")))


def unpriced_twilio_messages(older_than: timedelta, limit: int = BATCH) -> list[str]:
    """Ids of Twilio messages that reached a billed final status by callback (which never
    carries the price) and whose price was never fetched (`price_unit` still empty)."""
    return _twilio_ids(
        older_than,
        limit,
        Message.status.in_(BILLED),
        Message.price.is_(None),
        Message.price_unit.is_(None),
    )


def _twilio_ids(older_than: timedelta, limit: int, *conditions: Any) -> list[str]:
    """Ids of outbound Twilio messages with a SID, untouched for `older_than` and younger
    than MAX_AGE, meeting `conditions`, the least recently touched first."""
    now = utcnow()
    with session_scope() as session:
        return list(
            session.scalars(
                select(Message.id)
                .where(
                    Message.provider == "twilio",
                    Message.direction == "outbound",
                    Message.provider_message_id.is_not(None),
                    Message.updated_at < now - older_than,
                    Message.created_at > now - MAX_AGE,
                    *conditions,
                )
                # Oldest touched first among the candidates the partial indexes
                # (ix_messages_twilio_unsettled / _unpriced) hold for the last MAX_AGE.
                .order_by(Message.updated_at)
                .limit(limit)
            )
        )


def fetch_price(message_id: str) -> bool:
    """Fetch one final message's resource for its price; returns whether one was stored.
    Without a price yet it is asked again after the interval, until PRICE_WAIT is over."""
    with session_scope() as session:
        message = session.get(Message, message_id)
        if message is None or not message.provider_message_id or message.price is not None:
            return False
        account = session.get(ProviderAccount, message.provider_account_id)
        if account is None:
            return False
        creds = credentials(account)
        sid, sent_at = message.provider_message_id, message.sent_at or message.created_at
    fetched = get_provider("twilio").fetch_status(creds, sid)  # type: ignore[attr-defined]
    values: dict[str, object] = {"updated_at": utcnow()}
    if fetched.price is not None:
        values.update(price=fetched.price, price_unit=(fetched.price_unit or "")[:8] or None)
    elif sent_at < utcnow() - PRICE_WAIT:
        values["price_unit"] = (fetched.price_unit or "-")[:8]  # asked enough: unpriced
    with session_scope() as session:
        session.execute(
            update(Message)
            .where(Message.id == message_id, Message.price.is_(None))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    return fetched.price is not None


def reconcile_stale(
    older_than: timedelta | None = None,
    limit: int = BATCH,
    max_per_run: int = MAX_PER_RUN,
    seconds: float = RUN_SECONDS,
) -> dict[str, int]:
    """One bounded pass: batches of `limit` while the backlog fills them, until
    `max_per_run` fetches or `seconds` have gone (each touched message leaves the
    selection until the interval passes again, so no batch repeats one)."""
    if older_than is None:
        older_than = timedelta(minutes=get_settings().reconcile_after_minutes)
    counts = {"fetched": 0, "changed": 0, "errors": 0, "priced": 0}
    deadline = time.monotonic() + seconds
    for select_batch, handle in (
        (unpriced_twilio_messages, _price_one),
        (stale_twilio_messages, _reconcile_one),
    ):
        seen: set[str] = set()
        while len(seen) < max_per_run and time.monotonic() < deadline:
            ids = select_batch(older_than, min(limit, max_per_run - len(seen)))
            fresh = [i for i in ids if i not in seen]  # a zero interval re-selects them
            for message_id in fresh:
                handle(message_id, counts)
            seen.update(fresh)
            if len(ids) < limit or not fresh:
                break
    if counts["fetched"] or counts["errors"]:
        log.info("reconciled twilio statuses %s", counts)
    return counts


def _price_one(message_id: str, counts: dict[str, int]) -> None:
    try:
        counts["priced"] += int(fetch_price(message_id))
    except ProviderError as exc:
        counts["errors"] += 1
        log.warning("price fetch failed id=%s: %s", message_id, exc.message)
        _touch(message_id)
        return
    counts["fetched"] += 1


def _reconcile_one(message_id: str, counts: dict[str, int]) -> None:
    try:
        changed = reconcile_message(message_id)
    except ProviderError as exc:
        counts["errors"] += 1
        log.warning("reconcile fetch failed id=%s: %s", message_id, exc.message)
        _touch(message_id)  # asked again after the interval, not every tick
        return
    counts["fetched"] += 1
    counts["changed"] += int(changed)


def reconcile_message(message_id: str) -> bool:
    """Fetch one message's resource and apply it; returns whether its status moved."""
    with session_scope() as session:
        message = session.get(Message, message_id)
        if message is None or not message.provider_message_id:
            return False
        account = session.get(ProviderAccount, message.provider_account_id)
        if account is None:
            return False
        creds = credentials(account)
        sid, current, price = message.provider_message_id, message.status, message.price
    fetched = get_provider("twilio").fetch_status(creds, sid)  # type: ignore[attr-defined]
    mapped = TWILIO_STATUS.get(fetched.native_status)
    news = mapped not in (None, current) or (fetched.price is not None and fetched.price != price)
    with session_scope() as session:
        changed = False
        if news:  # an unchanged answer is not another event in the history
            changed = apply_status(
                session,
                message_id,
                mapped or current,
                source="reconcile",
                native_status=fetched.native_status,
                error_code=error_name("twilio", fetched.error_code),
                provider_code=fetched.error_code,
                error_message=fetched.error_message,
                detail={"reconciled": True},
                price=fetched.price,
                price_unit=fetched.price_unit,
            )
        if not changed:
            _touch(message_id, session)
    return changed


def _touch(message_id: str, session=None) -> None:  # type: ignore[no-untyped-def]
    stmt = (
        update(Message)
        .where(Message.id == message_id)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if session is not None:
        session.execute(stmt)
        return
    with session_scope() as own:
        own.execute(stmt)
