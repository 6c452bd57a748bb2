"""Concurrent API requests of one process sharing the accept path's work and its COMMIT.

The first request to arrive leads, takes every request waiting, stores them together
(accept.py `store`) on the committer's own connection, commits, and wakes each with its
own result; meanwhile the next group gathers. Nothing is answered before the COMMIT that
made it durable."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from core.errors import (
    database_unavailable,
)
from models import Tenant, get_engine
from services.messages.accept import Item, prepare, store
from services.messages.grouping import GroupRunner, PerProcess, Ticket

log = logging.getLogger(__name__)


class GroupCommit(GroupRunner):
    """Concurrent requests of one process store their items together, under one COMMIT
    (services/messages/grouping.py): the leader stores every waiting request's items with its
    own (at most `max_items`) and commits. A group that fails for a reason other than
    the database being down is retried one request at a time, so a request's fault
    stays its own.

    The committer keeps one connection of the engine's pool for itself, and one Session
    bound to it: one leader at a time uses them (the lead is handed over under the
    lock). Checking a connection out of the pool for each group cost a ping (a round
    trip), the pool's checkout and reset, and a Session's set-up: more CPU than the
    group's own statements. A connection the server dropped (PostgreSQL restarted) is
    replaced, and the group run again on the new one, when it failed before its COMMIT
    was sent: nothing of it was committed then. Failing at COMMIT, or on a new
    connection, the group's requests get the error (a 503)."""

    def __init__(self, max_items: int = 2000) -> None:
        super().__init__()
        self.max_items = max_items
        self._connection: Connection | None = None  # the leader's alone
        self._engine: Engine | None = None  # the engine it came from
        self._session: Session | None = None  # bound to _connection

    def submit(self, items: list[Item]) -> None:  # type: ignore[override]
        """Store `items` (their outcomes set) once committed; raises what the database raised."""
        super().submit(items)

    def _take(self, queue: list[Ticket]) -> int:
        taken, count = 0, 0
        for ticket in queue:
            if taken and count + len(ticket.payload) > self.max_items:
                break
            taken, count = taken + 1, count + len(ticket.payload)
        return taken

    def _run(self, group: list[Ticket]) -> None:
        try:
            self._store([item for ticket in group for item in ticket.payload])
        except BaseException as exc:
            if len(group) > 1 and isinstance(exc, Exception) and not database_unavailable(exc):
                for ticket in group:
                    self._run([ticket])
                return
            for ticket in group:
                ticket.exc = exc

    def _store(self, items: list[Item]) -> None:
        """`store` and COMMIT on the committer's connection; a connection found dead
        before the COMMIT is replaced once, and the items stored on the new one."""
        retried = False
        while True:
            if self._engine is not get_engine():  # reset (another database): follow it
                self._close()
            session = self._session or self._open()
            session.info.clear()  # nothing of an earlier group's
            if self._connection is not None and self._connection.in_transaction():
                self._connection.rollback()  # never: the Session would join it, not commit
            committing = False
            try:
                store(session, items)
                committing = True
                session.commit()
            except BaseException as exc:
                gone = self._failed(session)
                if not gone or committing or retried or not isinstance(exc, Exception):
                    raise
                retried = True
                log.warning("accept: database connection lost; storing again on a new one")
                continue
            session.close()  # the identity map emptied; the connection stays ours
            return

    def _open(self) -> Session:
        engine = get_engine()
        connection = engine.connect()  # the pool's checkout and ping, once
        self._connection, self._engine = connection, engine
        self._session = Session(bind=connection, expire_on_commit=False)
        return self._session

    def _failed(self, session: Session) -> bool:
        """Roll back after a failed group; whether the connection is gone (then dropped)."""
        connection = self._connection
        try:
            session.rollback()
            session.expunge_all()
            session.info.clear()
        except Exception:  # a connection that cannot even roll back is gone
            self._close()
            return True
        if connection is None or connection.invalidated or connection.closed:
            self._close()
            return True
        return False

    def _close(self) -> None:
        connection, session = self._connection, self._session
        self._connection, self._engine, self._session = None, None, None
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()
        if connection is not None:
            with contextlib.suppress(Exception):  # already gone: nothing to release
                connection.close()


_committer = PerProcess(GroupCommit)


def committer() -> GroupCommit:
    return _committer.get()


def accept_one(
    session: Session,
    tenant: Tenant,
    payload: Any,
    data: dict[str, Any],
    key: str | None,
    test: bool = False,
) -> Item:
    """`POST /v1/messages`: prepared here, stored by the group commit. Raises the
    message's error; otherwise the item is created (202) or a replay (200). `test`: a
    test key's message."""
    item = prepare(session, tenant, data, idempotency_key=key, raw=payload, test=test)
    if session.in_transaction():  # read on a cache miss: its connection goes back to the
        session.close()  # pool while the group commits (closing an unused one costs)
    committer().submit([item])
    if item.error is not None:
        raise item.error
    return item
