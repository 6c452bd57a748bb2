"""Start `herald run` (the same stack `make run` starts) as a real process tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from herald.stack import free_port

ROOT = Path(__file__).resolve().parents[2]


class RunningStack:
    def __init__(self, home: Path, extra_env: dict[str, str] | None = None) -> None:
        env = dict(os.environ)
        # The stack must find its own defaults: drop what the unit-test session set.
        for key in (
            "HERALD_PUBLIC_URL",
            "TWILIO_API_BASE",
            "META_GRAPH_BASE",
            "HERALD_SECRET_KEY",
            "HERALD_PAIR_PACING_SECONDS",
        ):
            env.pop(key, None)
        if env.get("DATABASE_URL"):
            # Stacks sharing one database must share its encryption key, as in production.
            env["HERALD_SECRET_KEY"] = os.environ["HERALD_SECRET_KEY"]
        env.update(
            HERALD_HOME=str(home),
            PORT=str(free_port()),
            HERALD_SANDBOX_PORT=str(free_port()),
            HERALD_REDIS_PORT=str(free_port()),
            HERALD_WORKER_CONCURRENCY="8",
            HERALD_API_WORKERS="2",
            HERALD_SETTLE_SECONDS="3",
            HERALD_SWEEP_AFTER_SECONDS="5",
            PYTHONUNBUFFERED="1",
            # Stacks of one test run share the machine's Redis: each home gets queues of
            # its own, so one stack's worker never takes another's doorbells (a worker
            # sends with its own sandbox, whose callbacks then reach the wrong API).
            HERALD_QUEUE_PREFIX=f"e2e-{zlib.crc32(str(home).encode()):08x}:",
        )
        env.update(extra_env or {})
        self.env = env
        self.lines: list[str] = []
        self.info: dict[str, Any] = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "herald.cli", "run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.startswith("HERALD_READY "):
                self.info = json.loads(line[len("HERALD_READY ") :])
                self._ready.set()

    def wait_ready(self, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.lines[-60:])
                raise RuntimeError(f"herald run did not become ready:\n{tail}")
        return self.info

    def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.lines[-n:])
