"""The webhook inbox: provider callbacks stored by one INSERT (applied in batches by
applier.py).

A status callback used to be applied in its own request: a lookup, a receipt, the
status UPDATE, its event, each a round trip through the ORM, ~5 ms of API CPU and
~9 round trips per callback. Now the request checks the signature and stores the
callback here (`store`: one INSERT, committed before it returns, shared with the
callbacks the process receives at the same moment; a retry of a callback still
waiting is a conflict, nothing more), so the 2xx answer means durable. An applier
takes the rows in batches (`apply_pending`: DELETE ... RETURNING of rows locked with
SKIP LOCKED, so several appliers share the work) and applies them set-based in the
same transaction that deletes them: a crash loses nothing, the rows come back.
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import datetime
from typing import Any, NamedTuple

import psycopg
from sqlalchemy import Engine, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from core.errors import database_unavailable
from models import WebhookInbox, get_engine, utcnow
from models.fast import Statement, as_sqlalchemy, naive_utc
from services.messages.grouping import GroupRunner, PerProcess, Ticket

log = logging.getLogger(__name__)

BATCH = 500
MAX_ATTEMPTS = 8
# Beat's pass leaves younger rows to the live process that is applying them.
STALE_SECONDS = 2.0
# After a ring the thread waits this long for more rows, so that at low rates a batch
# still carries several callbacks (at high rates rows pile up while a batch runs anyway).
COALESCE_SECONDS = 0.025
LOCK_TIMEOUT_MS = 250
INBOX_TABLE = WebhookInbox.__table__

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


def lock_contention(exc: Exception) -> bool:
    """A lock wait given up, a deadlock or a serialization failure: the database is up,
    this transaction lost a race (psycopg reports these as OperationalError too)."""
    from psycopg import errors

    orig = getattr(exc, "orig", None)
    return isinstance(orig, errors.LockNotAvailable | errors.TransactionRollback)


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
            if len(group) > 1 and (not database_unavailable(exc) or lock_contention(exc)):
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


_committer = PerProcess(GroupCommit)


def store(row: dict[str, Any]) -> bool:
    """Store one callback durably (committed on return), grouped with those this
    process receives at the same time; whether it was new (see `insert_rows`)."""
    return _committer.get().submit(row)


def pending_count(session: Session) -> int:
    """Rows waiting (or kept after failing): for operators and tests."""
    from sqlalchemy import func

    return session.scalar(select(func.count()).select_from(INBOX_TABLE)) or 0
