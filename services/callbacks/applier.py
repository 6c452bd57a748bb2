"""Applying the inbox: rows taken in batches and applied set-based by each provider's
applier, in the transaction that deletes them, woken by a doorbell after each commit.

Who applies: a thread of the process that received the callback, woken after the
commit (`ring`), so a reader sees the effect a few ms later; and beat's periodic pass
(`apply_all`, the `herald.apply_inbox` task) for rows whose process died first. A row
that fails to apply is retried alone, later (backoff), and kept with its error after
MAX_ATTEMPTS (a poison row never blocks the others)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.errors import database_unavailable
from models import new_session, utcnow
from models.fast import Statement, aware_utc, column_list, naive_utc
from services.callbacks.inbox import (
    BATCH,
    COALESCE_SECONDS,
    INBOX_TABLE,
    LOCK_TIMEOUT_MS,
    MAX_ATTEMPTS,
    InboxRow,
    lock_contention,
)

log = logging.getLogger(__name__)


def _handlers() -> dict[str, tuple[Callable[..., list[Any]], Callable[..., Any]]]:
    """kind -> (apply a batch of rows, returning those to apply alone; apply one row)."""
    from services.callbacks import twilio

    def twilio_one(session: Session, row: InboxRow) -> None:
        twilio.handle_twilio_status(
            session, list(row.accounts), row.payload, row.ref, at=row.received_at
        )

    return {twilio.TWILIO_STATUS_KIND: (twilio.apply_twilio_statuses, twilio_one)}


_TAKE = """
    DELETE FROM webhook_inbox WHERE id IN (
        SELECT id FROM webhook_inbox
        WHERE attempts < :max_attempts AND next_attempt_at <= :now {only}
        ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED
    )
    RETURNING {columns}
"""
_TAKES = {
    only: Statement(_TAKE.format(only=sql, columns=column_list(InboxRow._fields)))
    for only, sql in (
        (None, ""),
        ("older", "AND received_at <= :received_before"),
        ("row", "AND id = :row_id"),
    )
}
_LOCK_TIMEOUT = Statement(f"SELECT set_config('lock_timeout', '{LOCK_TIMEOUT_MS}ms', true)")


_by_id = itemgetter(0)


def _take(
    session: Session, limit: int, older_than: float | None = None, row_id: int | None = None
) -> list[InboxRow]:
    """Delete (in this transaction) and return up to `limit` due rows no other applier
    holds, oldest first."""
    now = utcnow()
    params: dict[str, Any] = {
        "max_attempts": MAX_ATTEMPTS,
        "now": naive_utc(now),
        "limit": limit,
    }
    if row_id is not None:
        only: str | None = "row"
        params["row_id"] = row_id
    elif older_than is not None:
        only = "older"
        params["received_before"] = naive_utc(now - timedelta(seconds=older_than))
    else:
        only = None
    # Columns in InboxRow's order; the stored time is naive UTC.
    rows = [InboxRow(*r[:7], aware_utc(r[7]), r[8]) for r in _TAKES[only].tuples(session, params)]
    rows.sort(key=_by_id)
    return rows


def _apply(session: Session, rows: list[InboxRow]) -> None:
    handlers = _handlers()
    alone: list[InboxRow] = []
    i = 0
    while i < len(rows):  # consecutive rows of one kind form a batch: arrival order kept
        j = i
        while j < len(rows) and rows[j].kind == rows[i].kind:
            j += 1
        batch_fn, _ = handlers.get(rows[i].kind, (None, None))
        if batch_fn is None:
            raise LookupError(f"no applier for inbox kind {rows[i].kind!r}")
        alone += batch_fn(session, rows[i:j])
        i = j
    for row in alone:
        handlers[row.kind][1](session, row)


def apply_pending(limit: int = BATCH, older_than: float | None = None) -> int:
    """Apply one batch of due rows; returns how many were taken. A batch that fails is
    rolled back and its rows applied one by one, so one bad row holds back no other."""
    session = new_session()
    try:
        # A batch locks many messages (in id order); a worker recording a batch of sends
        # locks them in its own order. Giving up a wait well before PostgreSQL's deadlock
        # check (1 s) means a would-be deadlock costs this batch (retried row by row, one
        # lock at a time), never the worker's transaction.
        _LOCK_TIMEOUT.execute(session)
        rows = _take(session, limit, older_than)
        if not rows:
            session.rollback()
            return 0
        try:
            _apply(session, rows)
            session.commit()
            return len(rows)
        except Exception as exc:
            session.rollback()
            if database_unavailable(exc) and not lock_contention(exc):
                raise
            log.warning("inbox batch of %d failed (%s): applying alone", len(rows), exc)
    finally:
        session.close()
    for row in rows:
        _apply_alone(row.id)
    return len(rows)


def _apply_alone(row_id: int) -> None:
    session = new_session()
    try:
        rows = _take(session, 1, row_id=row_id)
        if not rows:
            return  # another applier took it since
        _apply(session, rows)
        session.commit()
    except Exception as exc:
        session.rollback()
        if database_unavailable(exc):
            raise
        _failed(session, row_id, exc)
    finally:
        session.close()


def _failed(session: Session, row_id: int, exc: Exception) -> None:
    attempts = session.scalar(select(INBOX_TABLE.c.attempts).where(INBOX_TABLE.c.id == row_id)) or 0
    attempts += 1
    wait = min(3600, 2**attempts)
    session.execute(
        update(INBOX_TABLE)
        .where(INBOX_TABLE.c.id == row_id)
        .values(
            attempts=attempts,
            last_error=f"{type(exc).__name__}: {exc}"[:2000],
            next_attempt_at=utcnow() + timedelta(seconds=wait),
        )
    )
    session.commit()
    if attempts >= MAX_ATTEMPTS:
        log.error("inbox row %s kept after %d failed attempts: %s", row_id, attempts, exc)
    else:
        log.warning("inbox row %s failed (%s): retried in %d s", row_id, exc, wait)


def apply_all(older_than: float | None = None, limit: int = BATCH) -> int:
    """Apply due rows until fewer than a batch remain (beat's pass: `older_than` leaves
    the rows a live process is about to apply to it)."""
    total = 0
    while True:
        taken = apply_pending(limit, older_than)
        total += taken
        if taken < limit:
            return total


# ---------------------------------------------------------------- the doorbell

_applier: Callable[[], None] | None = None
_wake = threading.Event()
_thread: threading.Thread | None = None
_thread_pid = 0
_thread_lock = threading.Lock()


def set_applier(fn: Callable[[], None] | None) -> None:
    """Replace what `ring` does (tests apply inline, or not at all); None: the thread."""
    global _applier
    _applier = fn


def ring() -> None:
    """A row was committed: have it applied soon. Never raises (the row is durable;
    the periodic pass applies it if nothing else does)."""
    try:
        (_applier or _wake_thread)()
    except Exception as exc:
        log.warning("inbox doorbell failed, the periodic pass will apply: %s", exc)


def apply_inline() -> None:
    """An applier that runs in the caller's thread (tests): the effect is visible on return."""
    apply_all()


def _wake_thread() -> None:
    global _thread, _thread_pid
    if _thread is None or _thread_pid != os.getpid() or not _thread.is_alive():
        with _thread_lock:
            if _thread is None or _thread_pid != os.getpid() or not _thread.is_alive():
                _thread = threading.Thread(target=_run, name="herald-inbox", daemon=True)
                _thread_pid = os.getpid()
                _thread.start()
    _wake.set()


def _run() -> None:
    while True:
        _wake.wait()
        time.sleep(COALESCE_SECONDS)
        _wake.clear()  # a ring from now on runs the loop again
        try:
            while apply_pending() >= BATCH:
                pass
        except Exception as exc:
            log.warning("inbox applier: %s; the rows wait for the next pass", exc)
