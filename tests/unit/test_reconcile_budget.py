"""Reconcile's throughput follows its backlog: a pass plans as many fetches as are
waiting (up to what the provider's rate allows) and spreads them over threads, instead
of one thread making ~100 a minute (services/messages/reconcile.py)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from providers import ErrorKind, ProviderError
from services.messages import reconcile


def test_the_budget_and_the_threads_grow_with_the_backlog_up_to_the_rate() -> None:
    backlogs = [0, 50, 100, 500, 2_000, 10_000, 1_000_000]
    budgets = [reconcile.pass_budget(n, rate=20, seconds=45) for n in backlogs]
    assert budgets == sorted(budgets)  # never less for more waiting
    assert budgets[:2] == [reconcile.BATCH, reconcile.BATCH]
    assert budgets[3] == 500  # the whole backlog, in one pass
    assert budgets[-1] == budgets[-2] == 20 * 45  # bounded by the provider's rate
    assert reconcile.pass_budget(1_000_000, rate=100, seconds=45) == 4_500
    threads = [reconcile.workers_for(b) for b in budgets]
    assert threads == sorted(threads) and threads[0] == 1
    assert threads[-1] == reconcile.MAX_WORKERS


class FakeBacklog:
    """`n` stale Twilio messages, fetched by a patched `_reconcile_one`."""

    def __init__(self, n: int, fail: ProviderError | None = None) -> None:
        self.waiting = [f"msg_{i:06d}" for i in range(n)]
        self.fetched: list[str] = []
        self.threads: set[str] = set()
        self.fail = fail
        self.lock = threading.Lock()

    def count(self, _older: timedelta, cap: int) -> int:
        return min(cap, len(self.waiting))

    def select(self, _older: timedelta, limit: int) -> list[str]:
        return self.waiting[:limit]

    def none(self, _older: timedelta, _limit: int) -> list[str]:
        return []

    def handle(self, message_id: str, counts: dict[str, int], throttled=None) -> None:  # type: ignore[no-untyped-def]
        if self.fail is not None:
            counts["errors"] += 1
            if throttled is not None and reconcile._rate_limited(self.fail):
                throttled.set()
            return
        with self.lock:
            self.waiting.remove(message_id)  # touched: out of the selection
            self.fetched.append(message_id)
            self.threads.add(threading.current_thread().name)
        counts["fetched"] += 1


@pytest.fixture
def backlog(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def make(n: int, fail: ProviderError | None = None) -> FakeBacklog:
        fake = FakeBacklog(n, fail)
        monkeypatch.setattr(reconcile, "reconcile_rate", lambda: 100_000.0)  # no pacing here
        monkeypatch.setattr(reconcile, "count_stale", fake.count)
        monkeypatch.setattr(reconcile, "stale_twilio_messages", fake.select)
        monkeypatch.setattr(reconcile, "_reconcile_one", fake.handle)
        monkeypatch.setattr(reconcile, "count_unpriced", lambda _o, _c: 0)
        monkeypatch.setattr(reconcile, "unpriced_twilio_messages", fake.none)
        return fake

    return make


def test_a_pass_takes_the_whole_backlog_with_threads_in_proportion(backlog) -> None:  # type: ignore[no-untyped-def]
    small = backlog(40)
    assert reconcile.reconcile_stale(older_than=timedelta(0), seconds=600)["fetched"] == 40
    assert len(small.threads) == 1
    big = backlog(4_000)
    counts = reconcile.reconcile_stale(older_than=timedelta(0), seconds=600)
    assert counts["fetched"] == 4_000 == len(set(big.fetched))  # each once, all in one pass
    assert len(big.threads) > 1


def test_twilio_answering_429_ends_the_pass(backlog) -> None:  # type: ignore[no-untyped-def]
    fake = backlog(4_000, ProviderError(ErrorKind.RATE_LIMITED, "20429", http_status=429))
    counts = reconcile.reconcile_stale(older_than=timedelta(0), seconds=600)
    assert 0 < counts["errors"] < 4_000 and counts["fetched"] == 0
    assert len(fake.waiting) == 4_000
