"""Herald next to the naive pattern (bench/naive.py): same sandbox, same load, one run.

Starts the provider sandbox, then, one application at a time (so they never share
the cores): the naive app (gunicorn + a Celery worker, threads pool, the same
sizes Herald uses), and Herald through `herald run` (herald/stack.py, as `make
run` starts it). Each gets a warm-up, then the same load: C keep-alive clients
POSTing N SMS to distinct recipients, from a separate load-generator process. It
prints, for each: accepted req/s, p50/p99 latency, how many sends reached the
sandbox, and CPU ms per message per process group (API, worker, other; the
PostgreSQL backends of the app's connections and the Redis server when they are
on this machine), measured from /proc/<pid>/stat (utime+stime, children
included) from the first request until the last send reached the sandbox; then
the ratios Herald/naive. The sandbox and the load generator are never counted.

Optional modes, Herald only: `--ingest` replays two signed Twilio status callbacks
per sent message at the API (callbacks/s, p99, CPU per callback); `--backlog N`
queues N messages behind a sender allowed `--backlog-rate` msg/s and measures
what the waiting costs for `--backlog-window` s. `--fast-path both` runs Herald
with api/fastpath.py on and off (HERALD_FAST_PATH), side by side in one run;
`--rounds N` repeats that pair N times, alternating which goes first.

DATABASE_URL / REDIS_URL come from the environment: a PostgreSQL URL gets a
schema of its own (dropped at the end) and an application_name that attributes
its backends; a shared Redis is used with key prefixes of this run (its CPU is
then the whole server's, other users included). Without REDIS_URL a private
redis-server is started; without DATABASE_URL Herald uses its own default.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
    REDIS_URL=redis://127.0.0.1:6379/0 python -m bench.compare --messages 2000 --clients 8

Bounded: every wait has a limit and the whole run stops after --timeout s.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.fernet import Fernet

from herald.stack import (
    ROOT,
    SANDBOX_META,
    SANDBOX_TWILIO,
    api_argv,
    free_port,
    redis_server_argv,
    sandbox_argv,
    wait_until,
)

RUN = uuid.uuid4().hex[:8]
SMS_FROM = "+12025550100"
CLK_TCK = os.sysconf("SC_CLK_TCK")
GROUPS = ("api", "worker", "other")


# --------------------------------------------------------------------------- CPU


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds incl. reaped children) of a live process, else None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return int(fields[1]), ticks / CLK_TCK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _processes() -> dict[int, tuple[int, float]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            found[int(entry)] = st
    return found


def descendants(roots: list[int], table: dict[int, tuple[int, float]] | None = None) -> set[int]:
    """`roots` and every live process below them."""
    table = _processes() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    return seen


def classify(cmd: str) -> str:
    """Process group of an application process, from its command line."""
    if "gunicorn" in cmd:
        return "api"
    if "celery" in cmd and " beat" in cmd:
        return "other"
    if "celery" in cmd and " worker" in cmd:
        return "worker"
    return "other"


class CpuMeter:
    """CPU seconds per group between start() and stop(). Process trees (and the
    PostgreSQL backends of one application_name) are sampled every `interval` s,
    so processes born during the window count from zero."""

    def __init__(
        self,
        trees: dict[str, list[int]],
        pg: PgBackends | None = None,
        redis_url: str | None = None,
        interval: float = 0.5,
    ) -> None:
        self.trees, self.pg, self.redis_url, self.interval = trees, pg, redis_url, interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.group: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.wall = 0.0

    def _sample(self, initial: bool = False) -> None:
        table = _processes()
        for tag, roots in self.trees.items():
            for pid in descendants(roots, table):
                if pid not in self.group:
                    self.group[pid] = classify(_cmdline(pid)) if tag == "app" else tag
                    self.first[pid] = table[pid][1] if initial else 0.0
                self.last[pid] = table[pid][1]
        if self.pg is not None:
            for pid in self.pg.pids():
                st = table.get(pid) or _stat(pid)
                if st is None:
                    continue
                if pid not in self.group:
                    self.group[pid] = "postgres"
                    self.first[pid] = st[1] if initial else 0.0
                self.last[pid] = st[1]

    def _redis_cpu(self) -> float | None:
        if not self.redis_url:
            return None
        import redis

        try:
            info = redis.Redis.from_url(self.redis_url, socket_timeout=2).info("cpu")
        except Exception:
            return None
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._redis0 = self._redis_cpu()
        self._sample(initial=True)
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(10)
        self._sample()
        self.wall = time.monotonic() - self._t0
        totals: dict[str, float] = {}
        for pid, group in self.group.items():
            totals[group] = totals.get(group, 0.0) + self.last[pid] - self.first[pid]
        redis1 = self._redis_cpu()
        if self._redis0 is not None and redis1 is not None:
            totals["redis"] = redis1 - self._redis0
        return totals


class PgBackends:
    """Pids of the PostgreSQL backends serving one application_name (same machine)."""

    def __init__(self, dsn: str, application_name: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True, application_name="bench-meter")
        self.name = application_name
        self.lock = threading.Lock()

    def pids(self) -> list[int]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.name,)
            ).fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------- processes


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(procs: list[subprocess.Popen], grace: float = 30) -> None:
    """SIGTERM each process (group), then SIGKILL whatever is left of their trees."""
    tree = descendants([p.pid for p in procs])
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _clean_env() -> dict[str, str]:
    """This process's environment without the settings an application must get from us."""
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(("HERALD_", "TWILIO_", "META_", "NAIVE_")) or key in (
            "PORT",
            "DATABASE_URL",
            "REDIS_URL",
        ):
            del env[key]
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Sandbox:
    """The bundled provider sandbox, shared by both applications."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = _start(
            sandbox_argv(self.port, "--callback-delay", "0.2"),
            _clean_env(),
            home / "sandbox.log",
        )
        self.http = httpx.Client(base_url=self.url, timeout=30)
        wait_until(lambda: self.http.get("/_sandbox/health").status_code == 200, "sandbox")

    def reset(self, callbacks: bool) -> None:
        self.http.post("/_sandbox/reset").raise_for_status()
        self.http.post(
            "/_sandbox/config", json={"callbacks": {"enabled": callbacks}}
        ).raise_for_status()

    def summary(self) -> dict[str, Any]:
        return self.http.get("/_sandbox/sends/summary").json()

    def sends(self) -> list[dict[str, Any]]:
        return self.http.get("/_sandbox/sends", params={"accepted": "true"}).json()["sends"]

    def pending_callbacks(self) -> int:
        return int(self.http.get("/_sandbox/callbacks").json().get("pending", 0))

    def wait_sent(
        self,
        recipients: set[str],
        expected: int,
        timeout: float,
        alive: Callable[[], bool] = lambda: True,
    ) -> dict[str, Any]:
        """Wait until `expected` of `recipients` got an accepted send (or `timeout` s, or
        `alive()` is false); then how many did, how many got more than one, and strays."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive():
            if self.summary()["accepted"] >= expected:
                counts = self.reached(recipients)
                if counts["reached"] >= expected:
                    return counts
                time.sleep(0.8)
            time.sleep(0.2)
        return self.reached(recipients)

    def reached(self, recipients: set[str]) -> dict[str, Any]:
        per_to: dict[str, int] = {}
        for send in self.sends():
            per_to[send["to"]] = per_to.get(send["to"], 0) + 1
        ours = {to: n for to, n in per_to.items() if to in recipients}
        return {
            "reached": len(ours),
            "twice": sum(1 for n in ours.values() if n > 1),
            "strays": sum(n for to, n in per_to.items() if to not in recipients),
        }

    def stop(self) -> None:
        self.http.close()
        _stop([self.proc], 10)


class NaiveApp:
    name = "naive"

    def __init__(self, ctx: Context, callbacks: bool) -> None:
        self.ctx, self.port = ctx, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.queue = f"naive-{RUN}"
        sid, token = SANDBOX_TWILIO
        self.env = {
            **_clean_env(),
            "NAIVE_BROKER_URL": ctx.redis_url,
            "NAIVE_QUEUE": self.queue,
            "TWILIO_ACCOUNT_SID": sid,
            "TWILIO_AUTH_TOKEN": token,
            "TWILIO_SMS_FROM": SMS_FROM,
            "TWILIO_API_BASE": ctx.sandbox.url,
        }
        if callbacks:
            self.env["NAIVE_STATUS_CALLBACK"] = f"{self.url}/twilio/status"
        self.procs: list[subprocess.Popen] = []
        self.pg = None

    def start(self) -> None:
        args, log = self.ctx.args, self.ctx.home / "naive.log"
        self.procs.append(
            _start([*api_argv(self.port, args.api_workers)[:-1], "bench.naive:app"], self.env, log)
        )
        self.procs.append(
            _start(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench.naive:celery",
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(args.worker_concurrency),
                    "-Q",
                    self.queue,
                    "--loglevel",
                    "INFO",
                    "--hostname",
                    f"naive-{RUN}@%h",
                ],
                self.env,
                log,
            )
        )
        wait_until(
            lambda: httpx.post(f"{self.url}/messages", json={}).status_code == 400, "naive API", 60
        )

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def request(self, to: str, i: int) -> dict[str, Any]:
        return {
            "path": "/messages",
            "body": json.dumps({"to": to, "body": f"Your code is {i:06d}"}),
            "headers": {"Content-Type": "application/json"},
        }

    def stop(self) -> None:
        _stop(self.procs)
        import redis

        client = redis.Redis.from_url(self.ctx.redis_url)
        for key in client.scan_iter(match=f"{self.queue}*", count=1000):
            client.delete(key)


class HeraldApp:
    name = "herald"

    def __init__(
        self,
        ctx: Context,
        callbacks: bool,
        mps: float = 100_000,
        name: str = "herald",
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.ctx, self.port = ctx, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = Path(tempfile.mkdtemp(prefix="herald-", dir=ctx.home))
        sid, token = SANDBOX_TWILIO
        phone_id, meta_token, meta_secret, waba = SANDBOX_META
        self.prefix = f"bench-{RUN}-{self.port}:"
        self.env = {
            **_clean_env(),
            "HERALD_HOME": str(self.home),
            "PORT": str(self.port),
            "REDIS_URL": ctx.redis_url,
            "HERALD_QUEUE_PREFIX": self.prefix,
            "HERALD_SECRET_KEY": Fernet.generate_key().decode(),
            # Credentials given: `herald run` starts no sandbox of its own and uses ours.
            "TWILIO_ACCOUNT_SID": sid,
            "TWILIO_AUTH_TOKEN": token,
            "TWILIO_SMS_FROM": SMS_FROM,
            "TWILIO_API_BASE": ctx.sandbox.url,
            "META_PHONE_NUMBER_ID": phone_id,
            "META_ACCESS_TOKEN": meta_token,
            "META_APP_SECRET": meta_secret,
            "META_WABA_ID": waba,
            "META_GRAPH_BASE": ctx.sandbox.url,
            # The naive app has no quotas and no sender pacing: neither may throttle here.
            "HERALD_DEFAULT_HOURLY_LIMIT": "0",
            "HERALD_DEFAULT_DAILY_LIMIT": "0",
            "HERALD_MPS_TWILIO_SMS": str(mps),
            "HERALD_API_WORKERS": str(ctx.args.api_workers),
            "HERALD_WORKER_CONCURRENCY": str(ctx.args.worker_concurrency),
        }
        if ctx.db_url:
            self.env["DATABASE_URL"] = ctx.db_url
        for setting in getattr(ctx.args, "herald_env", None) or []:  # --herald-env
            key, _, value = setting.partition("=")
            self.env[key] = value
        self.env.update(env or {})  # this run's own settings (--fast-path)
        self.proc: subprocess.Popen | None = None
        self.pg = PgBackends(ctx.pg_dsn, ctx.pg_app) if ctx.pg_dsn else None
        self.key = ""
        self.callbacks = callbacks

    def start(self) -> None:
        log = self.home / "run.log"
        self.proc = _start([sys.executable, "-m", "herald.cli", "run"], self.env, log)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            ready = [ln for ln in log.read_text().splitlines() if ln.startswith("HERALD_READY ")]
            if ready:
                self.key = json.loads(ready[0][len("HERALD_READY ") :])["api_key"]
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise RuntimeError(f"herald run did not become ready:\n{tail}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request(self, to: str, i: int) -> dict[str, Any]:
        return {
            "path": "/v1/messages",
            "body": json.dumps({"to": to, "channel": "sms", "body": f"Your code is {i:06d}"}),
            "headers": {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"},
        }

    def stop(self) -> None:
        if self.proc is not None:
            _stop([self.proc], 40)
        if self.pg is not None:
            self.pg.close()
        import redis

        client = redis.Redis.from_url(self.ctx.redis_url)
        for key in client.scan_iter(match=f"{self.prefix}*", count=1000):
            client.delete(key)


class Context:
    """What one run shares: arguments, scratch directory, sandbox, Redis, database."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.home = Path(tempfile.mkdtemp(prefix="herald-compare-"))
        self.procs: list[subprocess.Popen] = []
        self.redis_url = os.environ.get("REDIS_URL") or ""
        self.redis_shared = bool(self.redis_url)
        self.db_url = self.pg_dsn = self.pg_app = self.schema = ""
        base = os.environ.get("DATABASE_URL") or ""
        if base.startswith("postgresql"):
            import psycopg

            self.pg_dsn = "postgresql://" + base.split("://", 1)[1]
            self.schema, self.pg_app = f"bench_{RUN}", f"herald-bench-{RUN}"
            with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{self.schema}"')
            sep = "&" if "?" in base else "?"
            self.db_url = (
                f"{base}{sep}options=-csearch_path%3D{self.schema}&application_name={self.pg_app}"
            )
        elif base:
            self.db_url = base
        try:
            self._start_redis_and_sandbox()
        except BaseException:
            self.close()
            raise

    def _start_redis_and_sandbox(self) -> None:
        if not self.redis_url:
            import redis

            port = free_port()
            self.procs.append(
                _start(
                    redis_server_argv(port, self.home),
                    _clean_env(),
                    self.home / "redis.log",
                )
            )
            self.redis_url = f"redis://127.0.0.1:{port}/0"
            wait_until(redis.Redis(port=port, socket_timeout=1).ping, "redis")
        self.sandbox = Sandbox(self.home)

    def close(self) -> None:
        if hasattr(self, "sandbox"):
            self.sandbox.stop()
        _stop(self.procs, 10)
        if self.schema:
            import psycopg

            with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


# ------------------------------------------------------------------------ phases


def _recipient(i: int, base: int = 3_000_000) -> str:
    return f"+1202{base + i:07d}"


def drive(
    ctx: Context,
    url: str,
    requests: list[dict[str, Any]],
    timeout: float,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Replay `requests` against `url` from a separate process; its JSON summary."""
    path = ctx.home / f"requests-{uuid.uuid4().hex[:6]}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.load",
            "--url",
            url,
            "--requests",
            str(path),
            "--clients",
            str(ctx.args.clients),
            "--timeout",
            str(timeout),
            *extra,
        ],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        check=True,
    )
    path.unlink()
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def profiling(ctx: Context, pids: list[int], tag: str) -> Iterator[None]:
    """py-spy record on `pids` (and their subprocesses) while the block runs: samples
    of threads holding the GIL (on-CPU Python), raw (collapsed stacks) format.
    Non-blocking: py-spy never stops the processes (a blocking py-spy once left the
    API ptrace-stopped under load); figures are proportions, not timings."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not ctx.args.profile or not Path(spy).exists():
        yield
        return
    out = Path(ctx.args.profile)
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for pid in pids:
        argv = [spy, "record", "--pid", str(pid), "--subprocesses", "--gil", "--nonblocking"]
        name = out / f"{tag}-{classify(_cmdline(pid))}.txt"
        argv += ["--format", "raw", "--rate", "200", "-o", str(name)]
        procs.append(
            subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
        )
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _app_roots(app: NaiveApp | HeraldApp) -> list[int]:
    return [p.pid for p in app.procs] if isinstance(app, NaiveApp) else [app.proc.pid]


def accept_phase(ctx: Context, app: NaiveApp | HeraldApp, run: int = 0) -> dict[str, Any]:
    """Warm up, then N messages from C clients; CPU until the last send reached the sandbox.
    `run`: the how-manieth Herald of this run (each writes to recipients of its own, so
    none finds the contacts an earlier one made)."""
    args, sandbox = ctx.args, ctx.sandbox
    base, warm_base = 3_000_000 + run * args.messages, 2_000_000 + run * args.warmup
    app.start()
    warm = [app.request(_recipient(i, warm_base), i) for i in range(args.warmup)]
    warmed = drive(ctx, app.url, warm, 120)["statuses"].get("202", 0)
    warm_to = {_recipient(i, warm_base) for i in range(args.warmup)}
    if sandbox.wait_sent(warm_to, warmed, 60, app.alive)["reached"] == 0:
        raise RuntimeError(f"{app.name}: no warm-up message reached the sandbox; see {ctx.home}")
    time.sleep(0.5)
    sandbox.reset(args.callbacks)
    requests = [app.request(_recipient(i, base), i) for i in range(args.messages)]
    meter = CpuMeter({"app": _app_roots(app), "sandbox": [sandbox.proc.pid]}, app.pg, ctx.redis_url)
    targets = [p for p in descendants(_app_roots(app)) if classify(_cmdline(p)) != "other"]
    targets = [p for p in targets if "gunicorn" not in _cmdline(p) or _is_master(p, targets)]
    with profiling(ctx, targets, app.name):
        meter.start()
        load = drive(ctx, app.url, requests, args.load_timeout)
        accepted = load["statuses"].get("202", 0)
        summary = sandbox.wait_sent(
            {_recipient(i, base) for i in range(args.messages)},
            accepted,
            args.send_timeout,
            app.alive,
        )
        sent_at = time.monotonic()
        if args.callbacks:
            deadline = time.monotonic() + args.send_timeout
            while sandbox.pending_callbacks() and time.monotonic() < deadline:
                time.sleep(0.25)
        time.sleep(0.5)
        cpu = meter.stop()
    span = sent_at - meter._t0
    return {
        "load": load,
        "accepted": accepted,
        "summary": summary,
        "cpu": cpu,
        "wall_s": meter.wall,
        "all_sent_s": span,
    }


def _is_master(pid: int, candidates: list[int]) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in candidates


def ingest_phase(ctx: Context, app: HeraldApp) -> dict[str, Any]:
    """Two signed status callbacks (sent, delivered) per message the sandbox accepted."""
    from sandbox.callbacks import twilio_callback

    sid, token = SANDBOX_TWILIO
    requests = []
    sends = ctx.sandbox.sends()
    for status in ("sent", "delivered"):
        for send in sends:
            url = send["request"].get("StatusCallback")
            if not url:
                continue
            params = {
                "SmsSid": send["provider_message_id"],
                "SmsStatus": status,
                "MessageStatus": status,
                "To": send["to"],
                "MessageSid": send["provider_message_id"],
                "AccountSid": sid,
                "From": send["from"],
                "ApiVersion": "2010-04-01",
            }
            cb = twilio_callback(
                url, params, token, kind="status", event=status, message_id=send["herald_id"]
            )
            parts = urlsplit(url)
            requests.append(
                {
                    "path": parts.path + (f"?{parts.query}" if parts.query else ""),
                    "body": cb.body.decode(),
                    "headers": cb.headers,
                }
            )
    meter = CpuMeter({"app": _app_roots(app)}, app.pg, ctx.redis_url)
    targets = [p for p in descendants(_app_roots(app)) if classify(_cmdline(p)) != "other"]
    targets = [p for p in targets if "gunicorn" not in _cmdline(p) or _is_master(p, targets)]
    tag = "ingest" if app.name == "herald" else f"ingest-{app.name}"
    with profiling(ctx, targets, tag):  # --profile DIR: DIR/ingest-api.txt
        meter.start()
        load = drive(ctx, app.url, requests, ctx.args.load_timeout)
    # Callbacks are applied from the inbox a few ms after their answer: the CPU window
    # runs until it is empty, so the applying is counted too.
    drained = _inbox_drained(ctx, ctx.args.send_timeout)
    applied_s = time.monotonic() - meter._t0
    time.sleep(0.5)
    cpu = meter.stop()
    delivered = _delivered(ctx, [s["herald_id"] for s in sends])
    return {
        "load": load,
        "callbacks": len(requests),
        "cpu": cpu,
        "wall_s": meter.wall,
        "drained": drained,
        "applied_s": applied_s,
        "delivered": delivered,
        "messages": len(sends),
    }


def _inbox_drained(ctx: Context, timeout: float) -> bool | None:
    """Wait until Herald's webhook inbox is empty (None: no PostgreSQL to look at)."""
    if not ctx.pg_dsn:
        return None
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(ctx.pg_dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(f'SELECT count(*) FROM "{ctx.schema}".webhook_inbox').fetchone()
            if row and row[0] == 0:
                return True
            time.sleep(0.05)
    return False


def _delivered(ctx: Context, ids: list[str]) -> int | None:
    """How many of these messages the callbacks left `delivered`."""
    if not ctx.pg_dsn:
        return None
    import psycopg

    with psycopg.connect(ctx.pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            f'SELECT count(*) FROM "{ctx.schema}".messages '
            "WHERE id = ANY(%s) AND status = 'delivered'",
            (ids,),
        ).fetchone()
    return int(row[0]) if row else 0


def backlog_phase(ctx: Context) -> dict[str, Any]:
    """N messages behind a sender allowed R msg/s: what the waiting costs."""
    args = ctx.args
    app = HeraldApp(ctx, callbacks=False, mps=args.backlog_rate)
    try:
        app.start()
        ctx.sandbox.reset(False)
        requests = [app.request(_recipient(i, 4_000_000), i) for i in range(args.backlog)]
        load = drive(ctx, app.url, requests, args.load_timeout)
        time.sleep(args.backlog_settle)
        before = ctx.sandbox.summary()["accepted"]
        meter = CpuMeter({"app": _app_roots(app)}, app.pg, ctx.redis_url)
        meter.start()
        time.sleep(args.backlog_window)
        cpu = meter.stop()
        after = ctx.sandbox.summary()["accepted"]
        return {"load": load, "cpu": cpu, "wall_s": meter.wall, "left": after - before}
    finally:
        app.stop()


# ------------------------------------------------------------------------ report


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def report_accept(ctx: Context, results: dict[str, dict[str, Any]]) -> str:
    names = list(results)  # naive first, then each Herald in the order it ran
    rows: list[tuple[str, dict[str, float | None], int]] = []

    def per_msg(name: str, groups: tuple[str, ...]) -> float | None:
        r = results[name]
        if not any(g in r["cpu"] for g in groups) or not r["accepted"]:
            return None
        return sum(r["cpu"].get(g, 0.0) for g in groups) * 1000 / r["accepted"]

    def add(label: str, fn: Callable[[str], float | None], digits: int = 1) -> None:
        rows.append((label, {n: fn(n) for n in names}, digits))

    add("accepted (202)", lambda n: results[n]["accepted"], 0)
    add(
        "failed requests",
        lambda n: sum(v for k, v in results[n]["load"]["statuses"].items() if k != "202"),
        0,
    )
    add("accept req/s", lambda n: results[n]["accepted"] / results[n]["load"]["elapsed_s"])
    add("p50 latency ms", lambda n: results[n]["load"]["p50_ms"])
    add("p99 latency ms", lambda n: results[n]["load"]["p99_ms"])
    add("reached sandbox", lambda n: results[n]["summary"]["reached"], 0)
    add("sent twice", lambda n: results[n]["summary"]["twice"], 0)
    add("other sends (warm-up)", lambda n: results[n]["summary"]["strays"], 0)
    add("s until all sent", lambda n: results[n]["all_sent_s"])
    for group in GROUPS:
        add(f"CPU ms/msg {group}", lambda n, g=group: per_msg(n, (g,)), 2)
    add("CPU ms/msg app total", lambda n: per_msg(n, GROUPS), 2)
    add("CPU ms/msg postgres", lambda n: per_msg(n, ("postgres",)), 2)
    add("CPU ms/msg redis", lambda n: per_msg(n, ("redis",)), 2)
    add("CPU ms/msg app+stores", lambda n: per_msg(n, (*GROUPS, "postgres", "redis")), 2)
    add("(sandbox, not counted)", lambda n: per_msg(n, ("sandbox",)), 2)
    width = 24
    header = f"{'':{width}}" + "".join(f"{n:>12}" for n in names)
    ratio = names == ["naive", "herald"]
    lines = [header + ("  herald/naive" if ratio else "")]
    for label, values, digits in rows:
        line = f"{label:{width}}" + "".join(f"{_fmt(values[n], digits):>12}" for n in names)
        if ratio:
            line += f"  {_ratio(values['herald'], values['naive']):>12}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages per application")
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive clients")
    parser.add_argument("--warmup", type=int, default=50, help="uncounted messages first")
    parser.add_argument("--callbacks", action="store_true", help="sandbox sends status callbacks")
    parser.add_argument("--only", choices=("naive", "herald"), help="measure one application")
    parser.add_argument("--api-workers", type=int, default=2, help="gunicorn workers (both apps)")
    parser.add_argument("--worker-concurrency", type=int, default=16, help="Celery threads")
    parser.add_argument("--ingest", action="store_true", help="also: status callback ingest")
    parser.add_argument("--backlog", type=int, default=0, help="also: a throttled backlog of N")
    parser.add_argument("--backlog-rate", type=float, default=10.0)
    parser.add_argument("--backlog-settle", type=float, default=5.0)
    parser.add_argument("--backlog-window", type=float, default=30.0)
    parser.add_argument(
        "--herald-env",
        action="append",
        metavar="NAME=VALUE",
        help="a setting for Herald's processes (repeatable), e.g. HERALD_PUBLISH_INTERVAL_MS=50",
    )
    parser.add_argument(
        "--fast-path",
        choices=("on", "off", "both"),
        default="on",
        help="Herald's api/fastpath.py (HERALD_FAST_PATH): on (the default), off, or both: "
        "Herald once each way, side by side in one run (columns fp-on-R, fp-off-R)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --fast-path both: this many on/off pairs, alternating which goes first",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy raw profiles of the load phase")
    parser.add_argument("--load-timeout", type=float, default=300.0)
    parser.add_argument("--send-timeout", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="the whole run, seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    args = parser.parse_args(argv)

    def _expired(signum: int, _frame: object) -> None:
        raise TimeoutError(f"bench.compare: stopped after signal {signum}")

    signal.signal(signal.SIGALRM, _expired)
    signal.signal(signal.SIGTERM, _expired)
    signal.alarm(int(args.timeout))
    try:
        ctx = Context(args)
    except Exception as exc:  # a database or Redis that refuses us: say so, no traceback
        print(f"bench.compare: cannot set up the run: {exc}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    database = f"PostgreSQL schema {ctx.schema}" if ctx.schema else (ctx.db_url or "default")
    try:
        print(
            f"bench.compare: {args.messages} SMS x {args.clients} clients, callbacks "
            f"{'on' if args.callbacks else 'off'}; database "
            f"{database}"
            f"; Redis {ctx.redis_url}{' (shared server)' if ctx.redis_shared else ' (private)'}"
            f"; scratch {ctx.home}",
            flush=True,
        )
        apps: list[Callable[[], NaiveApp | HeraldApp]] = []
        if args.only != "herald":
            apps.append(lambda: NaiveApp(ctx, args.callbacks))
        if args.only != "naive":
            for name, env in herald_runs(args):
                apps.append(
                    lambda name=name, env=env: HeraldApp(ctx, args.callbacks, name=name, env=env)
                )
        herald_run = 0
        for make in apps:
            app = make()
            try:
                print(f"-- {app.name}: starting", flush=True)
                if isinstance(app, HeraldApp):
                    results[app.name] = accept_phase(ctx, app, herald_run)
                    herald_run += 1
                else:
                    results[app.name] = accept_phase(ctx, app)
                print(f"-- {app.name}: {json.dumps(_short(results[app.name]))}", flush=True)
                if isinstance(app, HeraldApp) and args.ingest:
                    extra.setdefault("ingest", {})[app.name] = ingest_phase(ctx, app)
            finally:
                app.stop()
        if args.backlog:
            print(f"-- herald backlog: {args.backlog} messages at {args.backlog_rate} msg/s")
            extra["backlog"] = backlog_phase(ctx)
    finally:
        signal.alarm(0)
        ctx.close()
    print()
    print(report_accept(ctx, results))
    for name, r in extra.get("ingest", {}).items():
        ok = _answered(r)
        cpu = sum(r["cpu"].get(g, 0.0) for g in GROUPS)
        stores = sum(r["cpu"].get(g, 0.0) for g in ("postgres", "redis"))
        print(
            f"\ncallback ingest ({'Herald' if name == 'herald' else name}): "
            f"{ok}/{r['callbacks']} answered 2xx, "
            f"{ok / r['load']['elapsed_s']:,.0f} callbacks/s, p50 {r['load']['p50_ms']:.1f} ms, "
            f"p99 {r['load']['p99_ms']:.1f} ms, CPU {cpu * 1000 / max(1, ok):.2f} ms/callback "
            f"(+{stores * 1000 / max(1, ok):.2f} in PostgreSQL/Redis); of which "
            + ", ".join(f"{g} {r['cpu'].get(g, 0.0) * 1000 / max(1, ok):.2f}" for g in GROUPS)
        )
        if r.get("drained") is not None:
            print(
                f"  applied: inbox {'empty' if r['drained'] else 'NOT empty'} "
                f"{r['applied_s']:.1f} s after the first callback (load took "
                f"{r['load']['elapsed_s']:.1f} s); {r['delivered']} of {r['messages']} "
                "messages delivered"
            )
    if args.fast_path == "both":
        print("\n" + report_fast_path(results, extra.get("ingest", {})))
    if "backlog" in extra:
        r = extra["backlog"]
        groups = (*GROUPS, "postgres", "redis")
        share = {g: r["cpu"].get(g, 0.0) / r["wall_s"] * 100 for g in groups}
        print(
            f"\nthrottled backlog (Herald): {args.backlog} queued at {args.backlog_rate:g} msg/s; "
            f"over {r['wall_s']:.0f} s: {r['left'] / r['wall_s']:.1f} msg/s left; CPU, % of a "
            "core: " + ", ".join(f"{g} {v:.1f}" for g, v in share.items())
        )
    print(
        "\nCPU: utime+stime from /proc/<pid>/stat of each process and its children, "
        "from the first request until the last send reached the sandbox (+0.5 s)."
    )
    if ctx.redis_shared:
        print("Redis CPU is the whole server's: other users of a shared Redis are included.")
    if args.json:
        Path(args.json).write_text(json.dumps({"accept": results, **extra}, indent=2))
    return 0


def herald_runs(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """(column, settings) of each Herald this run starts: one, as configured, or with
    `--fast-path both` an on/off pair per round, the first of each pair alternating."""
    if args.fast_path == "on":
        return [("herald", {})]
    if args.fast_path == "off":
        return [("herald", {"HERALD_FAST_PATH": "0"})]
    runs = []
    for r in range(1, max(1, args.rounds) + 1):
        pair = [("on", "1"), ("off", "0")]
        for side, value in pair if r % 2 else pair[::-1]:
            runs.append((f"fp-{side}-{r}", {"HERALD_FAST_PATH": value}))
    return runs


def _answered(r: dict[str, Any]) -> int:
    return sum(v for k, v in r["load"]["statuses"].items() if k.startswith("2"))


def report_fast_path(results: dict[str, dict[str, Any]], ingest: dict[str, dict[str, Any]]) -> str:
    """API CPU per message and per callback, fast path on against off: each run, the
    medians, and the share of the API's CPU the fast path saves."""

    def api_ms(r: dict[str, Any], count: int) -> float | None:
        return r["cpu"].get("api", 0.0) * 1000 / count if count else None

    table: dict[str, dict[str, list[float]]] = {"on": {}, "off": {}}
    lines = ["fast path, API CPU ms: per accepted message / per callback answered 2xx"]
    for name, r in results.items():
        if not name.startswith("fp-"):
            continue
        side = name.split("-")[1]
        accept = api_ms(r, r["accepted"])
        callback = api_ms(ingest[name], _answered(ingest[name])) if name in ingest else None
        for route, value in (("accept", accept), ("callback", callback)):
            if value is not None:
                table[side].setdefault(route, []).append(value)
        lines.append(f"  {name:10} {_fmt(accept, 3):>8} / {_fmt(callback, 3):>8}")
    for route in ("accept", "callback"):
        on, off = table["on"].get(route), table["off"].get(route)
        if on and off:
            med_on, med_off = statistics.median(on), statistics.median(off)
            lines.append(
                f"  {route}: median on {med_on:.3f}, off {med_off:.3f} ms "
                f"({len(on)}/{len(off)} runs): the fast path saves "
                f"{(med_off - med_on) / med_off * 100:.1f} % of the API's CPU"
            )
    return "\n".join(lines)


def _short(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "accepted": r["accepted"],
        "req_s": round(r["accepted"] / r["load"]["elapsed_s"], 1),
        "p99_ms": round(r["load"]["p99_ms"], 1),
        "sandbox": r["summary"],
        "cpu_s": {k: round(v, 2) for k, v in r["cpu"].items()},
    }


if __name__ == "__main__":
    sys.exit(main())
