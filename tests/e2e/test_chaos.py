"""A short run of the chaos harness (bench/chaos.py): workers SIGKILLed mid-flow,
Redis restarted with nothing on disk, provider faults on and off. Nothing may be
lost and nothing sent twice. `python -m bench.chaos` runs the long version."""

from __future__ import annotations

import io
import os

import pytest

from bench.chaos import run

pytestmark = pytest.mark.e2e


def test_no_message_lost_or_sent_twice_under_chaos(tmp_path) -> None:
    out = io.StringIO()
    totals = run(
        trials=2,
        messages=30,
        workers=3,
        concurrency=8,
        chaos_seconds=6.0,
        home=tmp_path,
        out=out,
        campaign=20,  # campaign batches meet the chaos too
    )
    report = out.getvalue()
    assert totals["trials"] == 2 and totals["accepted"] == 2 * (30 + 20), report
    assert totals["kills"] >= 2 and totals["redis_restarts"] >= 1, report  # chaos really happened
    assert totals["lost"] == 0, report
    assert totals["sent_twice"] == 0, report
    assert totals["stuck"] == 0, report
    if os.environ.get("DATABASE_URL", "").startswith("postgresql"):
        # PostgreSQL unreachable once per trial: the API answered 503s (or accepted), never 500.
        assert totals["pg_outages"] == 2, report
        assert set(totals["outage_answers"]) <= {"202", "200", "503"}, report
