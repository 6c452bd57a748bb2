"""Fixed statements on the hot paths, run on the session's own psycopg connection.

SQLAlchemy builds, caches and post-processes every statement it runs: for the few
statements every message goes through (accept, claim, record, callbacks), that
per-call machinery cost more CPU than the database spent answering them. A
`Statement` is written once, as SQL with `:name` parameters like `text()`, turned
into psycopg's `%(name)s` form at import, and run with `cursor.execute` on the
connection the session holds: the same transaction, committed or rolled back by the
session as usual. psycopg prepares a statement on the server after a few uses of
one connection, so PostgreSQL parses and plans it once too.

Values go in and come out as psycopg adapts them: `timestamp` columns take and give
naive UTC datetimes (`naive_utc`, `aware_utc` convert), JSON goes in as text with a
cast in the SQL and comes out decoded.
"""

from __future__ import annotations

import json
import re
from collections import namedtuple
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def naive_utc(value: datetime | None) -> datetime | None:
    """A time as `timestamp` columns store it (see models.base.UTCDateTime)."""
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


def aware_utc(value: datetime | None) -> datetime | None:
    """A `timestamp` column's value as the models give it: aware UTC."""
    return None if value is None else value.replace(tzinfo=UTC)


def _json_value(value: Any) -> Any:
    """What json.dumps cannot write itself: a time as its `timestamp` column takes it
    (naive UTC), a Decimal as its exact text."""
    if isinstance(value, datetime):
        return naive_utc(value).isoformat()  # type: ignore[union-attr]
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_rows(rows: list[dict[str, Any]]) -> str:
    """Rows as one JSON array for `json_to_recordset` (times naive UTC, decimals exact)."""
    return json.dumps(rows, default=_json_value)


def as_sqlalchemy(
    error: psycopg.Error, connection: psycopg.Connection, dialect: Any, sql: str | None = None
) -> BaseException:
    """`error`, raised on a connection SQLAlchemy does not manage (services/callbacks/inbox.py
    keeps one), as SQLAlchemy raises it: `exc.orig` is the driver's error and
    `connection_invalidated` says whether the connection is gone, so the 503 handler
    and every `except DBAPIError` treat it as any other statement's."""
    gone = dialect.is_disconnect(error, connection, None)
    return sa_exc.DBAPIError.instance(
        sql, None, error, psycopg.Error, connection_invalidated=gone, dialect=dialect
    )


class Statement:
    """One fixed SQL text; `:name` parameters, `::type` casts left alone."""

    __slots__ = ("_row", "sql")

    def __init__(self, sql: str) -> None:
        self.sql = _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))
        # The named-tuple class of its rows, made once: the statement's columns are
        # fixed (psycopg's namedtuple_row rebuilds its row maker on every execute).
        self._row: Any = None

    def _run(self, session: Session, params: Mapping[str, Any] | None, factory: Any) -> Any:
        connection = session.connection()
        cursor = connection.connection.driver_connection.cursor(row_factory=factory)
        try:
            cursor.execute(self.sql, {} if params is None else params)
        except psycopg.Error as exc:
            # Raised as SQLAlchemy would: wrapped in its DBAPIError, a lost connection
            # flagged and invalidated, so `database_unavailable` (a 503, a retry) and
            # every `except DBAPIError` see it as they see any other statement's.
            connection._handle_dbapi_exception(exc, self.sql, params, cursor, None)
        return cursor

    def execute(self, session: Session, params: Mapping[str, Any] | None = None) -> int:
        """Run it; the number of rows it touched."""
        with self._run(session, params, None) as cursor:
            return cursor.rowcount

    def rows(self, session: Session, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Its rows as named tuples."""
        with self._run(session, params, None) as cursor:
            found = cursor.fetchall()
            if not found:
                return []
            row = self._row
            if row is None:
                names = [column.name for column in cursor.description]
                row = self._row = namedtuple("Row", names, rename=True)  # type: ignore[misc]
            return [row._make(values) for values in found]

    def dicts(self, session: Session, params: Mapping[str, Any] | None = None) -> list[dict]:
        """Its rows as dicts (column name: value)."""
        with self._run(session, params, dict_row) as cursor:
            return cursor.fetchall()

    def tuples(self, session: Session, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """Its rows as plain tuples: the cheapest, for rows read by position."""
        with self._run(session, params, None) as cursor:
            return cursor.fetchall()

    def scalars(self, session: Session, params: Mapping[str, Any] | None = None) -> list[Any]:
        """The first column of each row."""
        with self._run(session, params, None) as cursor:
            return [row[0] for row in cursor.fetchall()]


def column_list(names: Sequence[str]) -> str:
    """`"a", "b", ...`: a RETURNING or SELECT list of quoted column names."""
    return ", ".join(f'"{name}"' for name in names)
