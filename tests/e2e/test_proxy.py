"""deploy/nginx.conf, the proxy docker-compose.yml puts in front of gunicorn, keeps the
API answering while slowloris clients hold connections open.

No Docker engine here: Debian's nginx (`make test` installs it as root) runs the same
file, its upstream and port filled in as the nginx image's template step fills them,
in front of a real gunicorn serving Herald with gthread workers, as compose runs it.
Without nginx the test skips and says why, except on CI (CI=true), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from herald.stack import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "nginx.conf"
SLOW_CLIENTS = 40  # gunicorn below has 8 threads: 40 held connections starve it directly


def _nginx() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        reason = "nginx is not installed (make test installs it as root: apt-get install nginx)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def render(template: str, upstream: str, listen: str) -> str:
    """The template as the nginx image's envsubst step renders it: only the variables
    it is given are replaced; nginx's own `$host`-style variables stay."""
    return template.replace("${HERALD_UPSTREAM}", upstream).replace("${HERALD_LISTEN}", listen)


def _wait_healthz(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {url}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Herald's API under gunicorn's threaded worker, as docker-compose.yml's `api` runs
    it (one process of eight threads here); its port."""
    port = free_port()
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn"),
                *("--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8"),
                "api:create_app()",
            ],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthz(f"http://127.0.0.1:{port}/healthz", proc, "gunicorn")
        yield port
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def proxy(gunicorn: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """deploy/nginx.conf in front of `gunicorn`, inside the minimal main context the
    nginx image's own nginx.conf provides; its port."""
    nginx = _nginx()
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    (prefix / "herald.conf").write_text(
        render(TEMPLATE.read_text(), f"127.0.0.1:{gunicorn}", f"127.0.0.1:{port}")
    )
    temp = {name: prefix / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    main = "\n".join(
        [
            # As root nginx's workers would switch to `nobody`, who cannot enter pytest's
            # private temporary folder: keep them as whoever runs the tests.
            *(["user root;"] if os.geteuid() == 0 else []),
            "daemon off;",
            "worker_processes 1;",
            f"pid {prefix / 'nginx.pid'};",
            f"error_log {prefix / 'error.log'} warn;",
            "events { worker_connections 512; }",
            "http {",
            f"  access_log {prefix / 'access.log'};",
            f"  client_body_temp_path {temp['body']};",
            f"  proxy_temp_path {temp['proxy']};",
            f"  fastcgi_temp_path {temp['fastcgi']};",
            f"  uwsgi_temp_path {temp['uwsgi']};",
            f"  scgi_temp_path {temp['scgi']};",
            f"  include {prefix / 'herald.conf'};",
            "}",
        ]
    )
    (prefix / "nginx.conf").write_text(main + "\n")
    argv = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr"]
    checked = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen(argv)
    try:
        _wait_healthz(f"http://127.0.0.1:{port}/healthz", proc, "nginx")
        yield port
    finally:
        _stop(proc)


class Slowloris:
    """Connections that send a request's headers one line a second and never finish."""

    def __init__(self, port: int, count: int) -> None:
        self.sockets = [
            socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)
        ]
        self._stop = threading.Event()
        self.trickling = threading.Event()  # set once every connection sent a second line
        for sock in self.sockets:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: herald.test\r\n")
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        n = 0
        while not self._stop.wait(1.0):
            n += 1
            for sock in self.sockets:
                with contextlib.suppress(OSError):  # a connection the server closed
                    sock.sendall(f"X-Slow-{n}: {n}\r\n".encode())
            self.trickling.set()

    def still_open(self) -> int:
        """How many of the connections the server has not closed."""
        open_ = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                open_ += sock.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                open_ += 1
            except OSError:
                pass
            finally:
                sock.setblocking(True)
        return open_

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.sockets:
            sock.close()


def healthz_under_slowloris(port: int) -> tuple[int, int]:
    """/healthz's status while SLOW_CLIENTS slowloris connections are open on `port`,
    and how many of them were still open once it answered."""
    attack = Slowloris(port, SLOW_CLIENTS)
    try:
        assert attack.trickling.wait(30), "the slow clients could not send"
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=8)
        return answer.status_code, attack.still_open()
    finally:
        attack.close()


def test_healthz_answers_through_the_proxy_during_a_slowloris(proxy: int) -> None:
    status, still_open = healthz_under_slowloris(proxy)
    assert status == 200
    assert still_open == SLOW_CLIENTS  # answered while every slow client was held, not after


def test_the_compose_proxy_serves_this_file() -> None:
    """docker-compose.yml publishes the proxy, mounts this template, and no longer
    publishes gunicorn's port."""
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    proxy = services["proxy"]
    assert any(v.startswith("./deploy/nginx.conf:/etc/nginx/templates/") for v in proxy["volumes"])
    assert proxy["environment"]["HERALD_UPSTREAM"] == "api:8000"
    assert proxy["ports"] == ["8000:8000"]
    assert "ports" not in services["api"]


def _json_error(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    assert answer.json()["error"]["code"] == code
    assert "<html" not in answer.text.lower()


def test_gunicorn_refuses_an_oversized_url_or_header_in_the_json_shape(gunicorn: int) -> None:
    """gunicorn answers these itself, before Flask: gunicorn.conf.py makes it JSON."""
    base = f"http://127.0.0.1:{gunicorn}"
    _json_error(httpx.get(f"{base}/v1/messages?x={'a' * 10_000}"), 414, "uri_too_long")
    _json_error(
        httpx.get(f"{base}/healthz", headers={"X-Big": "a" * 10_000}), 431, "headers_too_large"
    )
    many = {f"X-H{n}": "1" for n in range(150)}
    _json_error(httpx.get(f"{base}/healthz", headers=many), 431, "headers_too_large")
    assert httpx.get(f"{base}/healthz").status_code == 200


def test_the_proxy_refuses_an_oversized_url_or_header_in_the_json_shape(proxy: int) -> None:
    """nginx answers these itself, before gunicorn: deploy/nginx.conf makes it JSON."""
    base = f"http://127.0.0.1:{proxy}"
    _json_error(httpx.get(f"{base}/v1/messages?x={'a' * 40_000}"), 414, "uri_too_long")
    _json_error(
        httpx.get(f"{base}/healthz", headers={"X-Big": "a" * 40_000}), 431, "headers_too_large"
    )
    # Within nginx's buffers but over gunicorn's line limit: gunicorn's JSON, passed on.
    _json_error(
        httpx.get(f"{base}/healthz", headers={"X-Big": "a" * 10_000}), 431, "headers_too_large"
    )
    assert httpx.get(f"{base}/healthz").status_code == 200
