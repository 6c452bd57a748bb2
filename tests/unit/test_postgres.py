"""The embedded server's lifetime: shared by every process of one HERALD_HOME,
stopped by the last one to leave, never kept up by a process that died."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from herald.postgres import embedded, running


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="herald-pg-unit-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_last_holder_stops_the_server_and_a_dead_one_does_not_count(home: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    # A `make run` that was SIGKILLed left its pid behind.
    (home / "postgres.pids").write_text(json.dumps([int(dead.stdout)]))
    with embedded(home) as url:
        assert running(home) and url.startswith("postgresql+psycopg://")
        with embedded(home) as again:  # a second holder (in another process, `herald …`)
            assert again == url
        assert running(home), "the first holder still needs it"
    assert not running(home)
    assert json.loads((home / "postgres.pids").read_text()) == []
