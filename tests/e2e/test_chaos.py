"""A short run of the chaos harness (bench/chaos.py): workers SIGKILLed mid-flow,
Redis restarted with nothing on disk, PostgreSQL cut once per trial, provider faults
on and off, and the retention purge removing expired history all along. Nothing may
be lost, nothing sent twice, nothing failed (every fault the sandbox is told to inject
is one a retry gets past), and every expired row must be gone. `python -m bench.chaos`
runs the long version.

Every random choice comes from one seed, printed at the start and in every assertion
message: `HERALD_CHAOS_SEED=<seed> pytest tests/e2e/test_chaos.py` replays a failure's
choices (which worker is killed when, which faults, the outage's moment)."""

from __future__ import annotations

import io
import os
import random

import pytest

from bench.chaos import run

pytestmark = pytest.mark.e2e

TRIALS, MESSAGES, CAMPAIGN = 2, 30, 20
EXPIRED = 2_000  # messages past retention per trial, for the purge running through it
# What the API may answer a POST made while PostgreSQL is unreachable: 503 with
# Retry-After, or 2xx for one that completed just as the cut began. Never a 500, never
# no answer at all.
OUTAGE_ANSWERS = {"202", "200", "503"}


def chaos_seed() -> int:
    """HERALD_CHAOS_SEED when set (a failure replayed), else a fresh random seed."""
    given = os.environ.get("HERALD_CHAOS_SEED", "").strip()
    return int(given) if given else random.SystemRandom().randrange(2**32)


def replay_hint(seed: int) -> str:
    return f"HERALD_CHAOS_SEED={seed} (replay: HERALD_CHAOS_SEED={seed} pytest {__file__})"


def test_no_message_lost_or_sent_twice_under_chaos(tmp_path) -> None:
    seed = chaos_seed()
    print(replay_hint(seed), flush=True)  # shown with -s, and on failure in the captured out
    out = io.StringIO()
    totals = run(
        trials=TRIALS,
        messages=MESSAGES,
        workers=3,
        concurrency=8,
        chaos_seconds=6.0,
        seed=seed,
        home=tmp_path,
        out=out,
        campaign=CAMPAIGN,  # campaign batches meet the chaos too
        purge=EXPIRED,  # and the retention purge runs throughout
    )
    report = f"{replay_hint(seed)}\n{out.getvalue()}"
    assert totals["seed"] == seed, report
    assert totals["trials"] == TRIALS, report
    assert totals["accepted"] == TRIALS * (MESSAGES + CAMPAIGN), report
    assert totals["kills"] >= 2 and totals["redis_restarts"] == TRIALS, report  # chaos happened
    assert totals["lost"] == 0, report
    assert totals["sent_twice"] == 0, report
    assert totals["stuck"] == 0, report
    # Every fault the harness injects is transient (5xx, 429, timeouts, accepted then an
    # error): a retry gets past each, so no message may end failed; one that does names
    # itself and its reason here.
    assert totals["failed"] == {} and totals["failed_ids"] == [], report
    assert totals["delivered"] == totals["accepted"], report
    # The purge removed the expired history, every row of it, while the trials' own
    # messages (all accepted ones are delivered, above) were left alone. It purges every
    # tenant: a database shared with other tests may hold their expired rows too.
    assert totals["purged"] >= TRIALS * EXPIRED, report
    assert totals["expired_written"] == TRIALS * EXPIRED and totals["expired_left"] == 0, report
    if os.environ.get("DATABASE_URL", "").startswith("postgresql"):
        # PostgreSQL unreachable once per trial: each outage was met by POSTs, answered
        # 503 (at least one per outage: an outage no request saw proves nothing) or 2xx.
        by_trial = totals["outage_answers_by_trial"]
        assert totals["pg_outages"] == TRIALS and len(by_trial) == TRIALS, report
        for answers in by_trial:
            assert answers.get("503", 0) >= 1, report
            assert set(answers) <= OUTAGE_ANSWERS, report
