"""Engine and sessions, one engine per process.

SQLite (the development default) is made safe for several processes writing at
once: WAL journal, a busy timeout, and `BEGIN IMMEDIATE` so a transaction takes
the write lock up front instead of failing with "database is locked" when it
upgrades from reading to writing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from herald.config import get_settings

# Seconds; see _make_engine. libpq's connect_timeout is whole seconds, at least 2.
DB_CONNECT_ARGS = {"connect_timeout": 2, "tcp_user_timeout": 10_000}
DB_POOL_TIMEOUT = 5

_lock = threading.Lock()
_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # let the "begin" hook issue BEGIN
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # Worker threads each hold a connection during a send; size the pool for them.
    # A dead database must fail a request fast (a 503), never hang it: libpq gives up
    # connecting after connect_timeout, a connection whose packets go unanswered is
    # dropped after tcp_user_timeout, and a request waits at most pool_timeout for a
    # free connection. pool_pre_ping replaces connections a restart left dead.
    return create_engine(
        url,
        pool_size=20,
        max_overflow=20,
        pool_pre_ping=True,
        pool_timeout=DB_POOL_TIMEOUT,
        connect_args=DB_CONNECT_ARGS,
    )


def get_engine() -> Engine:
    global _engine, _factory
    with _lock:
        if _engine is None:
            _engine = _make_engine(get_settings().database_url)
            _factory = sessionmaker(_engine, expire_on_commit=False)
        return _engine


def new_session() -> Session:
    get_engine()
    assert _factory is not None
    return _factory()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any error."""
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def reset_engine() -> None:
    """Forget the engine (after fork, or when tests change DATABASE_URL)."""
    global _engine, _factory
    if _engine is not None:
        _engine.dispose(close=False)
    _engine = None
    _factory = None


os.register_at_fork(after_in_child=reset_engine)
