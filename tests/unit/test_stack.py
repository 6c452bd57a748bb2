"""`herald run` stops its children in order (Ctrl-C)."""

from __future__ import annotations

import sys
from pathlib import Path

from herald.stack import Stack, wait_until

CHILD = """
import signal, sys, time
name, log = sys.argv[1], sys.argv[2]
def term(*_):
    with open(log, "a") as f:
        f.write(f"{name} asked\\n")
    time.sleep(0.3)  # a worker handing its unacknowledged tasks back to Redis
    with open(log, "a") as f:
        f.write(f"{name} gone\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(log + "." + name, "w").close()
while True:
    time.sleep(0.05)
"""


def test_children_stop_one_after_another_newest_first(tmp_path: Path) -> None:
    log = tmp_path / "stops.log"
    stack = Stack()
    for name in ("redis", "sandbox", "worker", "beat", "api"):
        stack.start(name, [sys.executable, "-c", CHILD, name, str(log)])
        wait_until(lambda n=name: Path(f"{log}.{n}").exists(), f"{name} child")
    stack.stop()
    assert log.read_text().split("\n")[:-1] == [
        f"{name} {what}"
        for name in ("api", "beat", "worker", "sandbox", "redis")
        for what in ("asked", "gone")
    ]
    assert all(proc.returncode == 0 for _, proc in stack.children)  # asked, not killed


def test_a_weak_secret_key_stops_the_stack_before_anything_starts(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from core.config import get_settings
    from herald import stack
    from herald.cli import main

    monkeypatch.setenv("HERALD_HOME", str(tmp_path))
    monkeypatch.setenv("HERALD_SECRET_KEY", "my-dog's-name")
    started: list[object] = []
    monkeypatch.setattr(stack.Stack, "start", lambda *a: started.append(a))
    try:
        assert main(["run"]) == 2
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("herald: HERALD_SECRET_KEY must be")
    assert started == []
