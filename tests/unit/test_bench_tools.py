"""The benchmark's own arithmetic: what it attributes, and to whom (no timings)."""

from __future__ import annotations

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

from bench.compare import classify, descendants, herald_runs, report_fast_path
from bench.load import percentile
from bench.profile_summary import summarize


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) == 0.0


def test_processes_are_grouped_by_role() -> None:
    assert classify("python -m gunicorn --bind 127.0.0.1:1 api:create_app()") == "api"
    assert classify("python -m celery -A workers.celery_app worker --pool threads") == "worker"
    assert classify("python -m celery -A bench.naive:celery worker -Q naive-x") == "worker"
    assert classify("python -m celery -A workers.celery_app beat --schedule s") == "other"
    assert classify("python -m herald.cli run") == "other"


def test_a_child_process_is_counted_with_its_parent() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import os

        assert child.pid in descendants([os.getpid()])
        assert os.getpid() not in descendants([child.pid])
    finally:
        child.kill()
        child.wait()


def test_profile_samples_go_to_the_leaf_most_known_layer(tmp_path: Path) -> None:
    raw = tmp_path / "api.txt"
    raw.write_text(
        'process 1:"gunicorn";create (api/messages.py:23);'
        "Session.execute (sqlalchemy/orm/session.py:1) 3\n"
        'process 1:"gunicorn";create (api/messages.py:23);'
        "send_task (celery/app/base.py:1);execute (redis/client.py:1) 1\n"
    )
    text = summarize(raw)
    assert "4 on-CPU samples" in text
    assert " 75.0%  SQLAlchemy" in text
    assert " 25.0%  celery/kombu/redis (broker)" in text
    assert "100.0%  create (api/messages.py)" in text


def test_gunicorns_http_parser_is_gunicorn_not_the_http_client(tmp_path: Path) -> None:
    raw = tmp_path / "api.txt"
    raw.write_text(
        'process 1:"gunicorn";handle (gunicorn/workers/gthread.py:1);'
        "parse (gunicorn/http/parser.py:1) 1\n"
        'process 1:"gunicorn";send (requests/sessions.py:1) 1\n'
    )
    text = summarize(raw)
    assert " 50.0%  gunicorn" in text
    assert " 50.0%  twilio client/requests" in text


def test_fast_path_both_alternates_which_side_goes_first() -> None:
    runs = herald_runs(Namespace(fast_path="both", rounds=3))
    assert [name for name, _ in runs] == [
        "fp-on-1", "fp-off-1", "fp-off-2", "fp-on-2", "fp-on-3", "fp-off-3"
    ]  # fmt: skip
    assert {name: env["HERALD_FAST_PATH"] for name, env in runs}["fp-off-2"] == "0"
    assert herald_runs(Namespace(fast_path="on", rounds=3)) == [("herald", {})]
    assert herald_runs(Namespace(fast_path="off", rounds=1)) == [
        ("herald", {"HERALD_FAST_PATH": "0"})
    ]


def test_the_fast_path_report_compares_the_apis_cpu_per_message() -> None:
    def run(api_s: float, count: int) -> dict:
        return {"cpu": {"api": api_s, "worker": 9.0}, "accepted": count,
                "load": {"statuses": {"204": count, "500": 3}}}  # fmt: skip

    results = {"fp-on-1": run(1.0, 1000), "fp-off-1": run(1.25, 1000), "fp-on-2": run(3.0, 1000)}
    ingest = {"fp-on-1": run(0.4, 2000), "fp-off-1": run(1.0, 2000)}
    report = report_fast_path(results, ingest)
    assert "accept: median on 2.000, off 1.250 ms (2/1 runs)" in report
    assert "saves -60.0 %" in report  # the median of on is worse here
    assert "callback: median on 0.200, off 0.500 ms (1/1 runs)" in report
    assert "saves 60.0 %" in report
