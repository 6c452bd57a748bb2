"""The in-call retry rules (providers/retrying.py): TRANSIENT errors only, at most three
attempts, and calls from many threads at once each keep their own count."""

from __future__ import annotations

import threading

import pytest

from providers import ErrorKind, ProviderError
from providers.retrying import BLIPS, retry_blips


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BLIPS, "sleep", lambda seconds: None)


def test_transient_errors_are_tried_three_times_and_others_once() -> None:
    calls: dict[ErrorKind, int] = {}

    @retry_blips
    def failing(kind: ErrorKind) -> None:
        calls[kind] = calls.get(kind, 0) + 1
        raise ProviderError(kind, "no")

    for kind in ErrorKind:
        with pytest.raises(ProviderError):
            failing(kind)
    assert calls == {
        ErrorKind.TRANSIENT: 3,
        ErrorKind.PERMANENT: 1,
        ErrorKind.RATE_LIMITED: 1,
        ErrorKind.AMBIGUOUS: 1,
    }


def test_concurrent_calls_keep_their_own_attempts() -> None:
    """Two threads in the shared controller at once: each call gets its three attempts,
    and a call that succeeds on its second attempt is not cut short by the other's."""
    both_failed_once = threading.Barrier(2)
    attempts = {"flaky": 0, "down": 0}

    @retry_blips
    def call(name: str) -> str:
        attempts[name] += 1
        if attempts[name] == 1:
            both_failed_once.wait(5)
        if name == "flaky" and attempts[name] == 2:
            return "ok"
        raise ProviderError(ErrorKind.TRANSIENT, "blip")

    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = call(name)
        except ProviderError as exc:
            results[name] = exc.kind

    threads = [threading.Thread(target=run, args=(n,)) for n in attempts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"flaky": "ok", "down": ErrorKind.TRANSIENT}
    assert attempts == {"flaky": 2, "down": 3}
    assert retry_blips(lambda: 1).retry is BLIPS
