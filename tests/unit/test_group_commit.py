"""services.messages.group_commit.GroupCommit: concurrent requests of one process share one
store and one COMMIT; each gets its own outcome; a request whose rows the database refuses
fails alone; one key in one group is one message."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from models import Message, Tenant, new_session, session_scope
from services.messages import accept, group_commit
from tests.conftest import make_tenant, terminate_backend

TO = "+12025550143"


def _tenant() -> Tenant:
    info = make_tenant("group")
    with session_scope() as session:
        tenant = session.get(Tenant, info["tenant_id"])
        session.expunge(tenant)
    return tenant


def _item(tenant: Tenant, body: str, key: str | None = None) -> accept.Item:
    session = new_session()
    try:
        data = {"to": TO, "channel": "sms", "body": body}
        return accept.prepare(session, tenant, data, idempotency_key=key, raw=data)
    finally:
        session.close()


class Held:
    """Holds the first group in `store` until `count` more requests wait behind it, so
    the next group is made of them all (what concurrent requests do under load)."""

    def __init__(self, committer: group_commit.GroupCommit, count: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        self.committer, self.count = committer, count
        self.calls: list[int] = []
        real = accept.store

        def store(session, items):  # type: ignore[no-untyped-def]
            self.calls.append(len(items))
            if len(self.calls) == 1:
                deadline = time.monotonic() + 30
                while len(committer._queue) < count and time.monotonic() < deadline:
                    time.sleep(0.01)
            return real(session, items)

        monkeypatch.setattr(group_commit, "store", store)


def _submit_all(committer: group_commit.GroupCommit, batches: list[list[accept.Item]]) -> list:
    """Submit each batch from its own thread, the first one first; each thread's error."""
    errors: list[BaseException | None] = [None] * len(batches)

    def run(i: int) -> None:
        try:
            committer.submit(batches[i])
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    threads[0].start()
    deadline = time.monotonic() + 30
    while not committer._busy:
        assert time.monotonic() < deadline, "the first group never started"
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_waiting_requests_are_stored_together(dispatched, monkeypatch) -> None:
    tenant = _tenant()
    committer = group_commit.GroupCommit()
    held = Held(committer, 3, monkeypatch)
    batches = [[_item(tenant, f"m{i}")] for i in range(4)]
    errors = _submit_all(committer, batches)
    assert errors == [None] * 4
    assert held.calls == [1, 3]  # the first alone, then the three that waited: one store
    assert all(b[0].status == 202 for b in batches)
    assert len({b[0].answer()["id"] for b in batches}) == 4
    assert len(dispatched) == 4


def test_one_key_in_one_group_is_one_message(dispatched, monkeypatch) -> None:
    tenant = _tenant()
    committer = group_commit.GroupCommit()
    Held(committer, 3, monkeypatch)
    batches = [[_item(tenant, "first")]] + [[_item(tenant, "once", key="g1")] for _ in range(3)]
    assert _submit_all(committer, batches) == [None] * 4
    statuses = sorted(b[0].status for b in batches[1:])
    assert statuses == [200, 200, 202]
    assert len({b[0].answer()["id"] for b in batches[1:]}) == 1
    with session_scope() as session:
        count = session.scalar(
            select(func.count()).where(
                Message.tenant_id == tenant.id, Message.idempotency_key == "g1"
            )
        )
    assert count == 1


def test_a_request_the_database_refuses_fails_alone(dispatched, monkeypatch) -> None:
    tenant = _tenant()
    committer = group_commit.GroupCommit()
    held = Held(committer, 3, monkeypatch)
    bad = _item(tenant, "bad")
    bad.provider = "x" * 40  # longer than the column: the database refuses the INSERT
    batches = [[_item(tenant, "first")], [_item(tenant, "before")], [bad], [_item(tenant, "after")]]
    errors = _submit_all(committer, batches)
    assert errors[0] is None and errors[1] is None and errors[3] is None
    assert isinstance(errors[2], DBAPIError)
    # The group of three failed as a whole, then each request was stored on its own.
    assert held.calls == [1, 3, 1, 1, 1]
    assert [batches[i][0].status for i in (0, 1, 3)] == [202, 202, 202]
    with session_scope() as session:
        stored = sorted(session.scalars(select(Message.body).where(Message.tenant_id == tenant.id)))
    assert stored == ["after", "before", "first"]
    assert len(dispatched) == 3


def test_a_database_outage_fails_every_request_of_the_group(dispatched, monkeypatch) -> None:
    from sqlalchemy.exc import OperationalError

    tenant = _tenant()
    committer = group_commit.GroupCommit()
    calls: list[int] = []

    def down(session, items):  # type: ignore[no-untyped-def]
        calls.append(len(items))
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(group_commit, "store", down)
    with pytest.raises(OperationalError):
        committer.submit([_item(tenant, "a"), _item(tenant, "b")])
    assert calls == [2]  # not retried item by item: the database is down for all
    assert dispatched == []


def _backend_pid(committer: group_commit.GroupCommit) -> int:
    assert committer._connection is not None
    return committer._connection.connection.driver_connection.info.backend_pid


def _terminate(pid: int) -> None:
    terminate_backend(pid)  # gone before the test goes on, not merely signalled


def _bodies(tenant: Tenant) -> list[str]:
    with session_scope() as session:
        return sorted(session.scalars(select(Message.body).where(Message.tenant_id == tenant.id)))


def test_groups_share_one_connection_and_a_failed_group_leaves_nothing(dispatched) -> None:
    """A pool checkout (with its ping) and a Session per group showed in profiles: the
    committer keeps one connection and one Session bound to it; what an earlier group
    registered or loaded in it is never carried into the next, failed or not."""
    tenant = _tenant()
    committer = group_commit.GroupCommit()
    first, second = _item(tenant, "one"), _item(tenant, "two")
    committer.submit([first])
    pid = _backend_pid(committer)
    committer.submit([second])
    assert _backend_pid(committer) == pid and first.status == second.status == 202
    assert [i for i, _ in dispatched] == [first.values["id"], second.values["id"]]
    session = committer._session
    assert session is not None and not session.identity_map
    session.info["leftover"] = True  # as if a group had left something behind
    bad = _item(tenant, "bad")
    bad.provider = "x" * 40  # the database refuses it
    with pytest.raises(DBAPIError):
        committer.submit([bad])
    assert session.info == {}  # cleared before the group used it
    third = _item(tenant, "three")
    committer.submit([third])
    assert _backend_pid(committer) == pid and third.status == 202  # the same connection
    assert len(dispatched) == 3
    assert _bodies(tenant) == ["one", "three", "two"]


def test_a_connection_the_server_dropped_is_replaced_and_the_group_stored_once(
    dispatched,
) -> None:
    """PostgreSQL restarted (or ended the idle connection) between two groups: the next
    group fails before its COMMIT, so nothing of it was stored; it is stored again on a
    new connection and answered 202, not 503."""
    tenant = _tenant()
    committer = group_commit.GroupCommit()
    committer.submit([_item(tenant, "before")])
    pid = _backend_pid(committer)
    _terminate(pid)
    after = _item(tenant, "after")
    committer.submit([after])
    assert after.status == 202
    assert _backend_pid(committer) != pid
    assert _bodies(tenant) == ["after", "before"]  # once
    assert len(dispatched) == 2


def test_a_connection_lost_at_commit_is_not_stored_again(dispatched, monkeypatch) -> None:
    """Lost while committing, a group may or may not be in: it is never run again
    (that could store it twice); its requests get the error, a 503."""
    from core.errors import database_unavailable

    tenant = _tenant()
    committer = group_commit.GroupCommit()
    committer.submit([_item(tenant, "warm")])
    pid = _backend_pid(committer)
    real, calls = accept.store, []

    def store_then_lose(session, items):  # type: ignore[no-untyped-def]
        calls.append(len(items))
        real(session, items)
        _terminate(pid)  # the COMMIT that follows finds the connection gone

    monkeypatch.setattr(group_commit, "store", store_then_lose)
    with pytest.raises(DBAPIError) as raised:
        committer.submit([_item(tenant, "lost")])
    assert database_unavailable(raised.value)
    assert calls == [1]
    assert _bodies(tenant) == ["warm"]
    assert len(dispatched) == 1
    monkeypatch.setattr(group_commit, "store", real)
    again = _item(tenant, "again")
    committer.submit([again])  # a new connection for the next group
    assert again.status == 202 and _backend_pid(committer) != pid


def test_a_forked_child_gets_its_own_committer() -> None:
    """A committer holds a connection: a child sharing its parent's would interleave
    both processes' statements on one socket."""
    import os

    from services.messages.grouping import PerProcess

    made: list[object] = []
    holder = PerProcess(lambda: made.append(object()) or made[-1])
    parent = holder.get()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it has a committer of its own
        os.write(write, b"own" if holder.get() is not parent else b"shared")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.waitpid(pid, 0)
    assert answer == b"own"
    assert holder.get() is parent
