"""Doorbells after commit: published by a background thread, coalesced into batch
tasks, never blocking the request; a failed publish leaves the row to the sweeper."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from models import Message, session_scope, utcnow
from services.messages import dispatch


class FakeBroker:
    """Records each publish (task, ids, queue, thread); can hold the first one, or fail."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, list[str], str | None, str]] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def send_task(self, name, args=None, queue=None, **_) -> None:  # type: ignore[no-untyped-def]
        self.entered.set()
        self.gate.wait(5)
        self.calls.append((name, list(args[0]), queue, threading.current_thread().name))
        if self.fail:
            raise ConnectionError("broker down")


@pytest.fixture
def broker(monkeypatch):  # type: ignore[no-untyped-def]
    import core.queue

    fake = FakeBroker()
    monkeypatch.setattr(core.queue.app, "send_task", fake.send_task)
    dispatch.set_dispatcher(None)
    yield fake
    fake.gate.set()
    dispatch.flush()


def test_pending_doorbells_go_out_as_one_batch_per_queue(broker) -> None:
    broker.gate.clear()  # the publisher is busy with a first publish
    dispatch.publish_later(["m0"], "herald.send")
    assert broker.entered.wait(5)
    for i in range(1, 4):
        dispatch.publish_later([f"m{i}"], "herald.send")
    dispatch.publish_later(["c1", "c2"], "herald.bulk", dispatch.BATCH_TASK)
    dispatch.publish_later(["m2"], "herald.send")  # rung twice: sent once
    broker.gate.set()
    assert dispatch.flush()
    assert [c[:3] for c in broker.calls] == [
        ("herald.deliver_batch", ["m0"], "herald.send"),
        ("herald.deliver_batch", ["m1", "m2", "m3"], "herald.send"),
        ("herald.deliver_batch", ["c1", "c2"], "herald.bulk"),
    ]
    assert all(c[3] == "herald-publisher" for c in broker.calls)


def test_a_batch_is_split_at_the_batch_limit(broker) -> None:
    ids = [f"m{i}" for i in range(dispatch.BATCH_LIMIT * 2 + 1)]
    dispatch.publish_later(ids, "herald.send")
    assert dispatch.flush()
    assert [len(c[1]) for c in broker.calls] == [dispatch.BATCH_LIMIT, dispatch.BATCH_LIMIT, 1]
    assert [i for c in broker.calls for i in c[1]] == ids


def test_the_request_does_not_publish_and_a_lost_doorbell_is_swept(broker, client, auth) -> None:
    from services.messages.sweep import due_for_sweep

    broker.fail = True
    broker.gate.clear()  # a broker that hangs, then fails: the request does not wait
    resp = client.post("/v1/messages", json={"to": "+12025550143", "body": "x"}, headers=auth)
    assert resp.status_code == 202
    mid = resp.get_json()["id"]
    assert broker.entered.wait(5)
    broker.gate.set()
    assert dispatch.flush()
    assert [(c[1], c[3]) for c in broker.calls] == [([mid], "herald-publisher")]
    with session_scope() as session:
        row = session.get(Message, mid)
        assert row is not None and row.status == "queued"
        session.execute(  # the sweeper's wait has passed
            update(Message)
            .where(Message.id == mid)
            .values(updated_at=utcnow() - timedelta(hours=1))
        )
    assert mid in {m for m, _ in due_for_sweep(limit=100_000)}


def test_a_test_dispatcher_is_called_synchronously(dispatched) -> None:
    dispatch.publish_later(["m1"], "herald.send")
    assert dispatched == [("m1", "herald.send")]


class Interval:
    """A publisher's clock and sleep, driven by the test: a sleep is recorded and lasts
    until the test ends it, then moves the clock on by what was asked."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.sleeping = threading.Event()
        self.wake = threading.Event()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.sleeping.set()
        assert self.wake.wait(10)
        self.now += seconds


def test_doorbells_within_the_publish_interval_share_one_task(broker, monkeypatch) -> None:
    """Idle, a doorbell leaves at once; the ones rung within the interval after a
    publish wait for it and leave together (one task for the worker, not one each).
    The publisher's clock is the test's: no race with a real 400 ms window."""
    from core.config import get_settings

    monkeypatch.setenv("HERALD_PUBLISH_INTERVAL_MS", "400")
    get_settings.cache_clear()
    interval = Interval()
    publisher = dispatch._Publisher(clock=interval.clock, sleep=interval.sleep)
    try:
        publisher.submit("herald.deliver", ["m0"], "herald.send")
        assert publisher.flush()
        assert interval.sleeps == []  # idle: published at once
        interval.now += 0.1  # within the interval of that publish
        publisher.submit("herald.deliver", ["m1"], "herald.send")
        assert interval.sleeping.wait(5)  # waiting out the rest of the interval
        for i in (2, 3):  # each would have had a publish of its own
            publisher.submit("herald.deliver", [f"m{i}"], "herald.send")
        interval.wake.set()
        assert publisher.flush()
        assert interval.sleeps == [pytest.approx(0.3)]
        interval.now += 1.0  # idle again: the next one leaves at once
        publisher.submit("herald.deliver", ["m4"], "herald.send")
        assert publisher.flush()
        assert interval.sleeps == [pytest.approx(0.3)]
        assert [c[1] for c in broker.calls] == [["m0"], ["m1", "m2", "m3"], ["m4"]]
    finally:
        interval.wake.set()
        monkeypatch.delenv("HERALD_PUBLISH_INTERVAL_MS")
        get_settings.cache_clear()
