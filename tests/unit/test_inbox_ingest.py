"""The status callback's request path: callbacks of one process stored together by one
INSERT on the inbox's own connection, none answered before it committed, a row's fault
its own; driver errors of fixed statements seen as SQLAlchemy's (a lost database is a
503, never a 500); no session opened when the signers are cached; the applier's fixed
statements giving the same times and events as the ORM."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text

from core.errors import database_unavailable
from models import EventDelivery, WebhookInbox, new_session, session_scope
from services.callbacks import applier, inbox
from services.callbacks.twilio import TWILIO_STATUS_KIND
from tests.conftest import terminate_backend
from tests.unit.test_inbox import applier_off, message, pending  # noqa: F401 (a fixture)
from tests.unit.test_webhooks import get, new_message, twilio_status


def row(key: str | None = None, **extra: Any) -> dict[str, Any]:
    key = key or f"twilio:test:{uuid.uuid4().hex}"
    return {
        "provider": "twilio",
        "kind": TWILIO_STATUS_KIND,
        "dedup_key": key,
        "accounts": ["acc_test"],
        "ref": None,
        "payload": {"MessageSid": "SM1", "MessageStatus": "delivered"},
        **extra,
    }


def stored(key: str) -> bool:
    """Whether another connection sees the row (it was committed)."""
    with session_scope() as session:
        found = session.scalar(select(WebhookInbox.id).where(WebhookInbox.dedup_key == key))
        return found is not None


@pytest.fixture
def committer() -> Iterator[inbox.GroupCommit]:
    gc = inbox.GroupCommit()
    yield gc
    gc._close()


def submit_together(
    gc: inbox.GroupCommit, rows: list[dict[str, Any]], after: Callable[[str], Any] = stored
) -> tuple[list[int], list[Any]]:
    """Submit rows[0] and hold its INSERT until the others queued behind it, so they
    form the next group. Returns the size of each INSERT and, per row, what
    `after(dedup_key)` saw the moment its submit returned (or the exception it raised)."""
    sizes: list[int] = []
    gate = threading.Event()
    insert = gc._insert

    def held(rows: list[dict[str, Any]]) -> set[str]:
        sizes.append(len(rows))
        if len(sizes) == 1:
            assert gate.wait(30)
        return insert(rows)

    gc._insert = held  # type: ignore[method-assign]
    results: list[Any] = [None] * len(rows)

    def run(i: int) -> None:
        try:
            new = gc.submit(rows[i])
            results[i] = (new, after(rows[i]["dedup_key"]))
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(0,))]
    threads[0].start()
    deadline = time.monotonic() + 30
    while not sizes and time.monotonic() < deadline:
        time.sleep(0.005)
    for i in range(1, len(rows)):
        threads.append(threading.Thread(target=run, args=(i,)))
        threads[-1].start()
    while len(gc._queue) < len(rows) - 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    gate.set()
    for thread in threads:
        thread.join(60)
    return sizes, results


@pytest.mark.usefixtures("applier_off")
def test_callbacks_arriving_together_share_one_insert_none_answered_before_it(committer) -> None:
    rows = [row() for _ in range(4)]
    sizes, results = submit_together(committer, rows)
    # The first alone; the three that queued meanwhile together, in one statement.
    assert sizes == [1, 3]
    # Each submit returned only once its row was committed (seen by another connection).
    assert results == [(True, True)] * 4


@pytest.mark.usefixtures("applier_off")
def test_a_row_that_cannot_be_stored_fails_alone(committer) -> None:
    good = [row(), row()]
    bad = row("twilio:" + "x" * 300)  # longer than the column: refused by PostgreSQL
    sizes, results = submit_together(committer, [row(), good[0], bad, good[1]])
    assert sizes[:2] == [1, 3]  # the group failed, then its rows were tried one by one
    assert results[1] == results[3] == (True, True)
    assert isinstance(results[2], sa_exc.DataError)  # SQLAlchemy's error: a 4xx/5xx path
    assert not database_unavailable(results[2])


@pytest.mark.usefixtures("applier_off")
def test_the_same_callback_twice_in_one_group_is_new_once(committer) -> None:
    twice = row()
    sizes, results = submit_together(committer, [row(), twice, dict(twice)])
    assert sizes == [1, 2]
    assert sorted(new for new, _ in results[1:]) == [False, True]
    assert len([r for r in pending() if r.dedup_key == twice["dedup_key"]]) == 1


def kill(pid: int) -> None:
    terminate_backend(pid)  # and wait until it is gone, not a guessed 0.1 s


@pytest.mark.usefixtures("applier_off")
def test_a_connection_the_server_dropped_is_replaced_nothing_lost(committer) -> None:
    assert committer.submit(row())
    connection = committer._connection
    assert connection is not None
    kill(connection.info.backend_pid)  # e.g. a restart while the process was idle
    again = row()
    assert committer.submit(again) is True
    assert stored(again["dedup_key"])
    assert committer._connection is not connection


def test_a_lost_database_is_a_503_even_with_the_signers_cached_unless_spooled(
    client, auth, dispatched, monkeypatch
) -> None:
    from core.config import get_settings
    from herald.stack import free_port
    from models import reset_engine
    from services.callbacks import spool
    from tests.unit.test_outage import assert_unavailable

    mid = new_message(client, auth, channel="sms")
    assert twilio_status(client, mid, "sent", "SM" + uuid.uuid4().hex).status_code == 204
    # The signers are cached now and the inbox holds a connection: the database going
    # away is never a 204 for a row not stored: a 202 when the callback is spooled in
    # Redis (services/callbacks/spool.py), else a 503 (here: Redis unusable too).
    monkeypatch.setattr(spool, "keep", lambda *_: False)
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://herald@127.0.0.1:{free_port()}/x")
    get_settings.cache_clear()
    reset_engine()
    try:
        assert_unavailable(twilio_status(client, mid, "delivered", "SM" + "9" * 32))
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        reset_engine()


def test_a_fixed_statement_raises_sqlalchemys_error_when_the_connection_is_lost() -> None:
    from models.fast import Statement

    session = new_session()
    try:
        kill(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
        with pytest.raises(sa_exc.OperationalError) as raised:
            Statement("SELECT 1").rows(session)
        # The 503 handler and the pool know SQLAlchemy's errors, not the driver's.
        assert database_unavailable(raised.value)
        assert raised.value.connection_invalidated
        session.rollback()  # the pool knows the connection is gone: nothing to roll back
    finally:
        session.close()
    with session_scope() as session:  # and hands out a live one again
        assert session.execute(text("SELECT 1")).scalar_one() == 1


def test_a_callback_with_cached_signers_opens_no_session(
    client, auth, dispatched, monkeypatch
) -> None:
    import api.auth
    from services.tenancy.tenants import forget_cached

    mid = new_message(client, auth, channel="sms")
    opened = []
    real = api.auth.new_session
    monkeypatch.setattr(api.auth, "new_session", lambda: opened.append(1) or real())
    sid = "SM" + uuid.uuid4().hex
    forget_cached()
    assert twilio_status(client, mid, "sent", sid).status_code == 204
    assert opened == [1]  # the signers were read through the request's session
    assert twilio_status(client, mid, "delivered", sid).status_code == 204
    assert opened == [1]  # cached: none opened
    assert get(client, auth, mid)["status"] == "delivered"


@pytest.mark.usefixtures("applier_off")
def test_a_batch_applies_the_callbacks_times_exactly(client, auth, dispatched) -> None:
    mid = new_message(client, auth, channel="sms", callback_url="http://127.0.0.1:9/herald-events")
    sid = "SM" + uuid.uuid4().hex
    assert twilio_status(client, mid, "delivered", sid, Price="-0.00750").status_code == 204
    (received,) = [r.received_at for r in pending() if r.ref == mid]
    assert applier.apply_pending() == 1
    msg = message(mid)
    assert msg.delivered_at == msg.sent_at == received  # the callback's own time, to the µs
    assert str(msg.price) == "0.00750"
    answer = get(client, auth, mid)
    with session_scope() as session:
        (event,) = session.scalars(
            select(EventDelivery.payload).where(EventDelivery.message_id == mid)
        ).all()
    # The event owed to the listener shows the message as the API does (UTC times).
    shown = event["message"]
    for name in ("status", "delivered_at", "sent_at", "updated_at", "provider_message_id"):
        assert shown[name] == answer[name], name
