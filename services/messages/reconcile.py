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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from core.config import get_settings
from models import Message, ProviderAccount, session_scope, utcnow
from providers import ErrorKind, ProviderError, error_name, get_provider
from services.callbacks.twilio import TWILIO_STATUS
from services.messages.status import apply_status
from services.tenancy.tenants import credentials

log = logging.getLogger(__name__)

BATCH = 100  # messages selected per query, at least
# A pass (beat, every HERALD_RECONCILE_INTERVAL, 60 s) plans as many fetches as the
# backlog holds (`pass_budget`), bounded by what the rate allows in RUN_SECONDS, and
# spreads them over as many threads as the budget needs (`workers_for`): a fetch takes
# ~0.1-0.5 s at Twilio, so one thread alone made ~100-400 a pass, and a tenant sending
# more than ~144k SMS a day (100 a minute) built a backlog of unpriced messages that
# only grew. Twilio limits an account's concurrent REST requests (error 20429, ~100 by
# default, shared with sends): reconcile keeps to MAX_WORKERS of them and RATE a second,
# and a 429 ends the pass (the rest waits for the next one).
RUN_SECONDS = 45.0
RATE = 20.0  # fetches a second at most (HERALD_RECONCILE_RATE)
MAX_WORKERS = 8
PER_WORKER = 100  # fetches one thread makes in a pass, planned (0.45 s each)
MAX_PER_RUN = int(RATE * RUN_SECONDS)  # the default budget's ceiling
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


def count_stale(older_than: timedelta, cap: int) -> int:
    """How many `stale_twilio_messages` wait, counted up to `cap`."""
    return _twilio_count(older_than, cap, Message.status.in_(("sending", "sent")))


def count_unpriced(older_than: timedelta, cap: int) -> int:
    """How many `unpriced_twilio_messages` wait, counted up to `cap`."""
    return _twilio_count(
        older_than,
        cap,
        Message.status.in_(BILLED),
        Message.price.is_(None),
        Message.price_unit.is_(None),
    )


def _twilio_count(older_than: timedelta, cap: int, *conditions: Any) -> int:
    now = utcnow()
    inner = (
        select(Message.id)
        .where(
            Message.provider == "twilio",
            Message.direction == "outbound",
            Message.provider_message_id.is_not(None),
            Message.test.is_(False),  # a test message's id is the simulator's: never asked
            Message.updated_at < now - older_than,
            Message.created_at > now - MAX_AGE,
            *conditions,
        )
        .limit(cap)
        .subquery()
    )
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(inner)) or 0


def _twilio_ids(older_than: timedelta, limit: int, *conditions: Any) -> list[str]:
    """Ids of outbound Twilio messages with a SID, untouched for `older_than` and younger
    than MAX_AGE, meeting `conditions`, the oldest first (nearest to MAX_AGE, after
    which they are never asked)."""
    now = utcnow()
    with session_scope() as session:
        return list(
            session.scalars(
                select(Message.id)
                .where(
                    Message.provider == "twilio",
                    Message.direction == "outbound",
                    Message.provider_message_id.is_not(None),
                    Message.test.is_(False),  # never asked of Twilio: the simulator's
                    Message.updated_at < now - older_than,
                    Message.created_at > now - MAX_AGE,
                    *conditions,
                )
                # The oldest first, in the order of the partial indexes
                # (ix_messages_twilio_unsettled / _unpriced): the scan stops at `limit`.
                # Sorting by `updated_at` read and sorted the whole backlog each pass;
                # a row just asked is skipped anyway until `older_than` has passed.
                .order_by(Message.created_at)
                .limit(limit)
            )
        )


def fetch_price(message_id: str) -> bool:
    """Fetch one final message's resource for its price; returns whether one was stored.
    Without a price yet it is asked again after the interval, until PRICE_WAIT is over."""
    with session_scope() as session:
        message = session.get(Message, message_id)
        if (
            message is None
            or message.test
            or not message.provider_message_id
            or message.price is not None
        ):
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


def reconcile_rate() -> float:
    """Fetches a second a pass may make (HERALD_RECONCILE_RATE; default RATE)."""
    return get_settings().reconcile_rate


def pass_budget(backlog: int, rate: float = RATE, seconds: float = RUN_SECONDS) -> int:
    """How many fetches a pass plans: the whole backlog (at least a batch), at most what
    `rate` allows in `seconds`. It grows with the backlog, so throughput follows the load
    up to the provider's limit instead of a fixed number a minute."""
    return max(BATCH, min(backlog, int(rate * seconds)))


def workers_for(budget: int) -> int:
    """Threads a pass of `budget` fetches uses: one per PER_WORKER, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, -(-budget // PER_WORKER)))


class _Pacer:
    """At most `rate` starts a second across the pass's threads."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            time.sleep(start - now)


def reconcile_stale(
    older_than: timedelta | None = None,
    limit: int = BATCH,
    max_per_run: int | None = None,
    seconds: float = RUN_SECONDS,
) -> dict[str, int]:
    """One bounded pass: messages whose callbacks never came first, then final ones not
    yet priced; each planned from its backlog (`pass_budget`, or `max_per_run`) and
    fetched by `workers_for` threads at `reconcile_rate()`, until the budget is spent,
    `seconds` have gone or Twilio answers 429 (each touched message leaves the selection
    until the interval passes again, so no batch repeats one)."""
    if older_than is None:
        older_than = timedelta(minutes=get_settings().reconcile_after_minutes)
    rate = reconcile_rate()
    counts = {"fetched": 0, "changed": 0, "errors": 0, "priced": 0}
    deadline = time.monotonic() + seconds
    pacer = _Pacer(rate)
    throttled = threading.Event()
    for select_batch, count_waiting, handle in (
        (stale_twilio_messages, count_stale, _reconcile_one),
        (unpriced_twilio_messages, count_unpriced, _price_one),
    ):
        if throttled.is_set():
            break
        ceiling = int(rate * seconds) if max_per_run is None else max_per_run
        waiting = count_waiting(older_than, max(ceiling, limit) + 1)
        budget = pass_budget(waiting, rate, seconds) if max_per_run is None else max_per_run
        workers = workers_for(budget)
        size = max(limit, workers * 25)

        def one(message_id: str, handle: Any = handle) -> dict[str, int]:
            local = dict.fromkeys(counts, 0)
            if throttled.is_set() or time.monotonic() >= deadline:
                return local
            pacer.wait()
            handle(message_id, local, throttled)
            return local

        seen: set[str] = set()
        with ThreadPoolExecutor(workers, thread_name_prefix="herald-reconcile") as pool:
            while len(seen) < budget and time.monotonic() < deadline:
                want = min(size, budget - len(seen))
                ids = select_batch(older_than, want)
                fresh = [i for i in ids if i not in seen]  # a zero interval re-selects them
                for local in pool.map(one, fresh):
                    for name, value in local.items():
                        counts[name] += value
                seen.update(fresh)
                if len(ids) < want or not fresh or throttled.is_set():
                    break
    if counts["fetched"] or counts["errors"]:
        log.info("reconciled twilio statuses %s", counts)
    return counts


def _price_one(
    message_id: str, counts: dict[str, int], throttled: threading.Event | None = None
) -> None:
    try:
        counts["priced"] += int(fetch_price(message_id))
    except ProviderError as exc:
        counts["errors"] += 1
        if throttled is not None and _rate_limited(exc):
            throttled.set()
        log.warning("price fetch failed id=%s: %s", message_id, exc.message)
        _touch(message_id)
        return
    counts["fetched"] += 1


def _reconcile_one(
    message_id: str, counts: dict[str, int], throttled: threading.Event | None = None
) -> None:
    try:
        changed = reconcile_message(message_id)
    except ProviderError as exc:
        counts["errors"] += 1
        if throttled is not None and _rate_limited(exc):
            throttled.set()
        log.warning("reconcile fetch failed id=%s: %s", message_id, exc.message)
        _touch(message_id)  # asked again after the interval, not every tick
        return
    counts["fetched"] += 1
    counts["changed"] += int(changed)


def _rate_limited(exc: ProviderError) -> bool:
    """Twilio's 429 (20429: too many concurrent requests): the pass stops there."""
    return exc.kind is ErrorKind.RATE_LIMITED or exc.http_status == 429


def reconcile_message(message_id: str) -> bool:
    """Fetch one message's resource and apply it; returns whether its status moved."""
    with session_scope() as session:
        message = session.get(Message, message_id)
        if message is None or message.test or not message.provider_message_id:
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
