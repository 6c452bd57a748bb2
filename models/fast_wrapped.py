"""`models.fast.Statement` whose driver errors come out as SQLAlchemy's.

A fixed statement runs on psycopg directly, so a lost connection raises
`psycopg.OperationalError`, which neither `services.errors.database_unavailable`
(the 503 every route owes a database outage) nor the pool (which must drop a dead
connection) recognises: they know SQLAlchemy's wrapped errors. This subclass wraps
the driver's error as SQLAlchemy would have, invalidating the connection when the
error says it is gone, so a caller's error handling is the same for both kinds of
statement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from models import fast


def as_sqlalchemy(
    error: psycopg.Error, connection: psycopg.Connection, dialect: Any, sql: str | None = None
) -> BaseException:
    """`error`, raised on a connection SQLAlchemy does not manage, as SQLAlchemy raises
    it: `exc.orig` is the driver's error, `connection_invalidated` says whether the
    connection is gone."""
    gone = dialect.is_disconnect(error, connection, None)
    return sa_exc.DBAPIError.instance(
        sql, None, error, psycopg.Error, connection_invalidated=gone, dialect=dialect
    )


def wrapped(session: Session, error: psycopg.Error, sql: str | None = None) -> BaseException:
    """`error` as SQLAlchemy raises it (`exc.orig` is the driver's error); the session's
    connection is invalidated first if the error means it is gone."""
    connection = session.connection()
    exc = as_sqlalchemy(error, connection.connection.dbapi_connection, connection.dialect, sql)
    if getattr(exc, "connection_invalidated", False):
        connection.invalidate(error)
    return exc


class Statement(fast.Statement):
    """A fixed statement (see models.fast) raising SQLAlchemy's errors."""

    __slots__ = ()

    def _run(self, session: Session, params: Mapping[str, Any] | None, factory: Any) -> Any:
        try:
            return super()._run(session, params, factory)
        except psycopg.Error as error:
            raise wrapped(session, error, self.sql) from error
