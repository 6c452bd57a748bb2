"""models/fast.py's statements fail as SQLAlchemy's do: wrapped in its DBAPIError, and a
lost connection recognised as one (the API's 503, the workers' retry)."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa

from core.errors import database_unavailable
from models import new_session
from models.fast import Statement
from tests.conftest import terminate_backend


def test_a_refused_statement_is_a_dbapi_error_and_not_an_outage() -> None:
    session = new_session()
    try:
        with pytest.raises(sa.DBAPIError) as raised:
            Statement("SELECT CAST(:x AS integer)").scalars(session, {"x": "nope"})
        assert not database_unavailable(raised.value)
        session.rollback()
        assert Statement("SELECT :x::integer + 1").scalars(session, {"x": 1}) == [2]
    finally:
        session.close()


def test_a_lost_connection_is_an_outage_and_is_not_reused() -> None:
    session = new_session()
    try:
        pid = Statement("SELECT pg_backend_pid()").scalars(session)[0]
        terminate_backend(pid)  # gone, not merely signalled: the next statement must fail
        with pytest.raises(sa.DBAPIError) as raised:
            Statement("SELECT 1 + :x").scalars(session, {"x": 1})
        assert raised.value.connection_invalidated
        assert database_unavailable(raised.value)
    finally:
        session.close()
    session = new_session()  # the pool handed out a live connection again
    try:
        assert Statement("SELECT 1 + :x").scalars(session, {"x": 1}) == [2]
    finally:
        session.close()


def test_the_drivers_own_connection_errors_are_an_outage_and_its_data_errors_are_not() -> None:
    """A path on psycopg that did not wrap its error still answers 503, never 500, when
    the connection is what failed; bad data stays a bug."""
    import psycopg

    assert database_unavailable(psycopg.OperationalError("server closed the connection"))
    assert database_unavailable(psycopg.InterfaceError("the connection is closed"))
    assert not database_unavailable(psycopg.errors.InvalidTextRepresentation("nope"))
    assert not database_unavailable(ValueError("nope"))
