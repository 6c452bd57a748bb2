"""Engine and sessions, one engine per process."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from herald.config import get_settings

_lock = threading.Lock()
_engine: Engine | None = None
_factory: sessionmaker[Session] | None = None


def _make_engine(url: str) -> Engine:
    # Worker threads each hold a connection during a send; size the pool for them.
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


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
