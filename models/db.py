"""Engine and sessions, one engine per process."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from core.config import get_settings

# Seconds; see _make_engine. libpq's connect_timeout is whole seconds, at least 2.
DB_CONNECT_ARGS = {"connect_timeout": 2, "tcp_user_timeout": 10_000}
DB_POOL_TIMEOUT = 5

_lock = threading.Lock()
_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None


def _make_engine(url: str) -> Engine:
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
