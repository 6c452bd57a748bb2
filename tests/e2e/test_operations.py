"""The deployment files run as written: the Procfile under honcho until /readyz answers,
and docker-compose.yml validated by docker-compose itself."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from herald.stack import free_port, redis_server_argv

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "migrate",
    "api",
    "proxy",
    "worker",
    "worker-bulk",
    "events",
    "periodic",
    "beat",
    "redis",
    "postgres",
}


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        reason = f"{name} is not installed (make test installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def test_docker_compose_file_is_valid() -> None:
    compose = _tool("docker-compose")
    env = {**os.environ, "HERALD_SECRET_KEY": "k" * 32}
    checked = subprocess.run(
        [compose, "-f", "docker-compose.yml", "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    services = subprocess.run(
        [compose, "-f", "docker-compose.yml", "config", "--services"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert set(services.stdout.split()) == SERVICES, services.stdout
    # The secret key is required, not defaulted: without it the file does not validate.
    env.pop("HERALD_SECRET_KEY")
    unset = subprocess.run(
        [compose, "-f", "docker-compose.yml", "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unset.returncode != 0 and "HERALD_SECRET_KEY" in unset.stderr


def test_procfile_runs_until_readyz(tmp_path: Path) -> None:
    honcho = _tool("honcho")
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PORT": str(free_port()),
        "WEB_CONCURRENCY": "1",
        "HERALD_WORKER_CONCURRENCY": "2",
        "HERALD_HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }
    redis_server = None
    if not env.get("REDIS_URL"):  # the defaults run: an embedded Redis, as `make run` has
        redis_port = free_port()
        redis_server = subprocess.Popen(  # stopped in the finally below, whatever happens
            redis_server_argv(redis_port, tmp_path), stdout=subprocess.DEVNULL
        )
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    try:
        _run_procfile(honcho, env, tmp_path)
    finally:
        if redis_server is not None:
            redis_server.terminate()
            redis_server.wait(timeout=10)


def _run_procfile(honcho: str, env: dict[str, str], tmp_path: Path) -> None:
    release = subprocess.run(
        [honcho, "-f", "Procfile", "start", "release"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert release.returncode == 0, release.stdout + release.stderr
    log = tmp_path / "honcho.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [honcho, "-f", "Procfile", "start", "web", "worker", "events", "beat"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{env['PORT']}/readyz"
        deadline = time.monotonic() + 90
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(url, timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, log.read_text()[-3000:]
        assert ready.json()["checks"] == {"database": True, "redis": True}
        deadline = time.monotonic() + 60  # both workers and beat came up too
        while time.monotonic() < deadline and not (
            log.read_text().count("[queues]") >= 2 and "celery beat v" in log.read_text()
        ):
            time.sleep(0.5)
        time.sleep(2)
        text = log.read_text()
        assert text.count("[queues]") >= 2 and "herald.bulk" in text, text[-3000:]
        assert "herald.events" in text, text[-3000:]  # the events worker's queue
        assert "celery beat v" in text and proc.poll() is None, text[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
