"""The default database: `herald run` without DATABASE_URL runs an embedded
PostgreSQL under HERALD_HOME, which `herald` commands share while it is up and
start (and stop) themselves when it is not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herald.postgres import data_dir, running
from tests.e2e.stack import ROOT, RunningStack

pytestmark = pytest.mark.e2e


def herald(env: dict[str, str], *argv: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "herald.cli", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def list_messages(api_url: str, api_key: str) -> int:
    """The status of GET /v1/messages with `api_key`: 200 once the API knows the key."""
    return httpx.get(
        f"{api_url}/v1/messages", headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    ).status_code


@pytest.fixture
def home() -> Iterator[Path]:
    # Not under pytest's temporary root: other pytest sessions reset it to 0700,
    # which the server's own user (as root: `pgserver`) could then not traverse.
    path = Path(tempfile.mkdtemp(prefix="herald-e2e-pg-"))
    yield path / "home"
    shutil.rmtree(path, ignore_errors=True)


def test_run_and_cli_share_the_embedded_server_of_one_home(home: Path) -> None:
    first = RunningStack(home, {"DATABASE_URL": ""})
    try:
        info = first.wait_ready()
        assert running(home) and (data_dir(home) / "PG_VERSION").exists()
        # A command while the stack is up reaches the same server, and leaves it up.
        made = herald(first.env, "tenant", "create", "while-up")
        assert running(home)
        assert list_messages(info["api"], made["api_key"]) == 200
    finally:
        assert first.stop() == 0, first.log_tail()
    assert not running(home), "Ctrl-C must stop the embedded PostgreSQL"

    # With the stack down a command starts the server itself, and stops it after.
    later = herald(first.env, "tenant", "create", "while-down")
    assert not running(home)

    second = RunningStack(home, {"DATABASE_URL": ""})
    try:
        again = second.wait_ready()
        assert again["api_key"] == info["api_key"]  # the data was kept
        assert list_messages(again["api"], later["api_key"]) == 200
    finally:
        assert second.stop() == 0, second.log_tail()
    assert not running(home)
