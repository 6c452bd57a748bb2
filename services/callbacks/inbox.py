"""The webhook inbox: provider callbacks stored by one INSERT, applied in batches.

A status callback used to be applied in its own request: a lookup, a receipt, the
status UPDATE, its event, each a round trip through the ORM, ~5 ms of API CPU and
~9 round trips per callback. Now the request checks the signature and stores the
callback here (`store`: one INSERT, committed before it returns, shared with the
callbacks the process receives at the same moment; a retry of a callback still
waiting is a conflict, nothing more), so the 2xx answer means durable. An applier
takes the rows in batches (`apply_pending`: DELETE ... RETURNING of rows locked with
SKIP LOCKED, so several appliers share the work) and applies them set-based in the
same transaction that deletes them: a crash loses nothing, the rows come back.

Who applies: a thread of the process that received the callback, woken after the
commit (`ring`), so a reader sees the effect a few ms later; and beat's periodic pass
(`apply_all`, the `herald.apply_inbox` task) for rows whose process died first. A row
that fails to apply is retried alone, later (backoff), and kept with its error after
MAX_ATTEMPTS (a poison row never blocks the others).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import Engine, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from core.errors import database_unavailable
from models import WebhookInbox, get_engine, new_session, utcnow
from models.fast import Statement, as_sqlalchemy, aware_utc, column_list, naive_utc
from services.messages.grouping import GroupRunner, Ticket

log = logging.getLogger(__name__)

BATCH = 500
MAX_ATTEMPTS = 8
# Beat's pass leaves younger rows to the live process that is applying them.
STALE_SECONDS = 2.0
# After a ring the thread waits this long for more rows, so that at low rates a batch
# still carries several callbacks (at high rates rows pile up while a batch runs anyway).
COALESCE_SECONDS = 0.025
LOCK_TIMEOUT_MS = 250
_table = WebhookInbox.__table__

# Many callbacks, one statement: their rows travel as one JSON array (one parameter,
# one prepared statement whatever their number), inserted in arrival order. A key
# already waiting is a conflict, nothing more; RETURNING names the keys that were new.
_INSERT = Statement(
    """
    INSERT INTO webhook_inbox
        (provider, kind, dedup_key, accounts, ref, payload, received_at, next_attempt_at)
    SELECT r.provider, r.kind, r.dedup_key, r.accounts, r.ref, r.payload, :now, :now
    FROM ROWS FROM (json_to_recordset(:rows::json) AS (
        provider text, kind text, dedup_key text, accounts json, ref text, payload json
    )) WITH ORDINALITY AS r(provider, kind, dedup_key, accounts, ref, payload, ord)
    ORDER BY r.ord
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING dedup_key
    """
)


class InboxRow(NamedTuple):
    """A row taken from the inbox (a tuple: a batch makes hundreds of them)."""

    id: int
    provider: str
    kind: str
    dedup_key: str
    accounts: list[str]
    ref: str | None
    payload: Any
    received_at: datetime
    attempts: int


def insert_rows(session: Session, rows: list[dict[str, Any]]) -> set[str]:
    """Store callbacks (dicts of provider, kind, dedup_key, accounts, ref, payload) in the
    session's transaction (the caller commits); the dedup keys that were not already
    waiting."""
    if not rows:
        return set()
    params = {"rows": json.dumps(rows), "now": naive_utc(utcnow())}
    return set(_INSERT.scalars(session, params))


def record(
    session: Session,
    *,
    provider: str,
    kind: str,
    dedup_key: str,
    accounts: list[str],
    ref: str | None,
    payload: dict[str, Any],
) -> bool:
    """Store one callback (the caller commits); False if it is already waiting here."""
    row = {
        "provider": provider,
        "kind": kind,
        "dedup_key": dedup_key,
        "accounts": accounts,
        "ref": ref,
        "payload": payload,
    }
    return bool(insert_rows(session, [row]))


# ---------------------------------------------------------------- group commit


class GroupCommit(GroupRunner):
    """Concurrent callbacks of one process stored by one INSERT, committed by it.

    Stored through a session, a callback cost a pool checkout (with its ping), the
    INSERT and a COMMIT: three round trips and SQLAlchemy's machinery for each. Here
    the process keeps one connection of its own in autocommit, so a group is one
    statement, committed when it returns; requests arriving together share it. No
    thread of its own (services/messages/grouping.py): the leader stores every waiting request's
    row with its own (at most `max_rows`). Nothing is answered before the
    statement that stored it returned. A group that fails for a reason other than the
    database being down (or a lost lock race) is retried one row at a time, so a row's
    fault stays its own."""

    def __init__(self, max_rows: int = BATCH) -> None:
        super().__init__()
        self.max_rows = max_rows
        self._connection: psycopg.Connection | None = None  # the leader's alone
        self._engine: Engine | None = None  # the engine it came from

    def submit(self, row: dict[str, Any]) -> bool:  # type: ignore[override]
        """Store `row` (see `insert_rows`) durably; whether it was new. Raises what the
        database raised, as SQLAlchemy does (nothing was stored then)."""
        return bool(super().submit(row).result)

    def _take(self, queue: list[Ticket]) -> int:
        return self.max_rows

    def _run(self, group: list[Ticket]) -> None:
        try:
            new = self._insert([ticket.payload for ticket in group])
        except Exception as exc:
            if len(group) > 1 and (not database_unavailable(exc) or _contention(exc)):
                for ticket in group:
                    self._run([ticket])
                return
            for ticket in group:
                ticket.exc = exc
            return
        for ticket in group:  # the same callback twice in one group: new once
            key = ticket.payload["dedup_key"]
            ticket.result = key in new
            new.discard(key)

    def _insert(self, rows: list[dict[str, Any]]) -> set[str]:
        """One INSERT of `rows`, committed on return; the keys that were new. A connection
        the server dropped while it was idle is replaced once: the INSERT is idempotent,
        and its rows all count as new then (a ring too many is harmless)."""
        params = {"rows": json.dumps(rows), "now": naive_utc(utcnow())}
        for attempt in (1, 2):
            engine = get_engine()
            if self._engine is not engine:  # reset (another database): follow it
                self._close()
            connection = self._connection or self._connect(engine)
            try:
                with connection.cursor() as cursor:
                    cursor.execute(_INSERT.sql, params)
                    new = {row[0] for row in cursor.fetchall()}
                return new if attempt == 1 else {row["dedup_key"] for row in rows}
            except psycopg.Error as error:
                exc = as_sqlalchemy(error, connection, engine.dialect, _INSERT.sql)
                gone = getattr(exc, "connection_invalidated", False)
                if gone:
                    self._close()
                if gone and attempt == 1:
                    continue
                raise exc from error
        raise AssertionError("unreachable")

    def _connect(self, engine: Engine) -> psycopg.Connection:
        """A connection of the engine's pool (so its settings and checks), detached from
        it and kept by this committer, in autocommit."""
        try:
            fairy = engine.raw_connection()
        except psycopg.Error as error:  # the pool does not wrap a failed connect
            raise sa_exc.DBAPIError.instance(
                None, None, error, psycopg.Error, dialect=engine.dialect
            ) from error
        connection = fairy.driver_connection
        fairy.detach()
        assert isinstance(connection, psycopg.Connection)
        connection.autocommit = True
        self._connection, self._engine = connection, engine
        return connection

    def _close(self) -> None:
        connection, self._connection, self._engine = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # already gone: nothing to release
                connection.close()


_committer = GroupCommit()


def store(row: dict[str, Any]) -> bool:
    """Store one callback durably (committed on return), grouped with those this
    process receives at the same time; whether it was new (see `insert_rows`)."""
    return _committer.submit(row)


_inherited: list[GroupCommit] = []


def _after_fork() -> None:
    """A child starts its own committer. The parent's is kept, never used nor closed:
    closing its connection would end the parent's session on the shared socket."""
    global _committer
    _inherited.append(_committer)
    _committer = GroupCommit()


os.register_at_fork(after_in_child=_after_fork)


# ---------------------------------------------------------------- applying


def _handlers() -> dict[str, tuple[Callable[..., list[Any]], Callable[..., Any]]]:
    """kind -> (apply a batch of rows, returning those to apply alone; apply one row)."""
    from services.callbacks import webhooks

    def twilio_one(session: Session, row: InboxRow) -> None:
        webhooks.handle_twilio_status(
            session, list(row.accounts), row.payload, row.ref, at=row.received_at
        )

    return {webhooks.TWILIO_STATUS_KIND: (webhooks.apply_twilio_statuses, twilio_one)}


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
            if database_unavailable(exc) and not _contention(exc):
                raise
            log.warning("inbox batch of %d failed (%s): applying alone", len(rows), exc)
    finally:
        session.close()
    for row in rows:
        _apply_alone(row.id)
    return len(rows)


def _contention(exc: Exception) -> bool:
    """A lock wait given up, a deadlock or a serialization failure: the database is up,
    this transaction lost a race (psycopg reports these as OperationalError too)."""
    from psycopg import errors

    orig = getattr(exc, "orig", None)
    return isinstance(orig, errors.LockNotAvailable | errors.TransactionRollback)


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
    attempts = session.scalar(select(_table.c.attempts).where(_table.c.id == row_id)) or 0
    attempts += 1
    wait = min(3600, 2**attempts)
    session.execute(
        update(_table)
        .where(_table.c.id == row_id)
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


def pending_count(session: Session) -> int:
    """Rows waiting (or kept after failing): for operators and tests."""
    from sqlalchemy import func

    return session.scalar(select(func.count()).select_from(_table)) or 0


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
