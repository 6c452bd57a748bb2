"""Tenant B's send time, alone and next to tenant A's hanging callback URL.

Starts `herald run` (herald/stack.py, as `make run` does: API, send worker, events
worker, beat, Redis, the sandbox), then measures tenant B's SMS from accept to `sent`
(the `queued` and `sent` events' server times) for --samples messages sent one after
another:

1. alone;
2. while tenant A's callback URL is a receiver on loopback that accepts, then trickles
   one header byte a second and never finishes (bench/trickle.py), and --hanging of A's
   messages owe it events.

A B message not sent within --wait seconds is reported as such. Prints figures;
asserts nothing.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
    REDIS_URL=redis://127.0.0.1:6379/0 python -m bench.noisy_neighbour

Without DATABASE_URL, `herald run` uses an embedded PostgreSQL in its own home; without
REDIS_URL, an embedded Redis. A PostgreSQL URL gets a schema of its own, dropped at the end.
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
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.trickle import TrickleReceiver
from herald.stack import ROOT, SANDBOX_TWILIO, free_port

RUN = uuid.uuid4().hex[:8]
SENT = ("sent", "delivered", "read")


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def _at(message: dict[str, Any], statuses: tuple[str, ...]) -> datetime | None:
    times = [
        datetime.fromisoformat(e["at"].replace("Z", "+00:00"))
        for e in message.get("events", [])
        if e["status"] in statuses and e.get("applied", True)
    ]
    return min(times) if times else None


def measure_b(client: httpx.Client, samples: int, wait: float, receiver: TrickleReceiver) -> list:
    """(seconds accept → sent, or None when not sent within `wait`; A's hanging
    connections when B was sent) for each of `samples` messages."""
    results = []
    for i in range(samples):
        resp = client.post(
            "/v1/messages", json={"to": "+12025550143", "channel": "sms", "body": f"B {i}"}
        )
        resp.raise_for_status()
        mid = resp.json()["id"]
        deadline = time.monotonic() + wait
        message = resp.json()
        while time.monotonic() < deadline:
            message = client.get(f"/v1/messages/{mid}").json()
            if message["status"] in SENT:
                break
            time.sleep(0.05)
        hanging = len(receiver.open_connections())
        queued, sent = _at(message, ("queued",)), _at(message, SENT)
        seconds = (sent - queued).total_seconds() if queued and sent else None
        results.append((seconds, hanging))
    return results


def make_tenant_a(callback_url: str) -> str:
    from models import session_scope
    from services.tenancy.tenants import add_provider_account, create_api_key, create_tenant

    sid, token = SANDBOX_TWILIO
    with session_scope() as session:
        tenant = create_tenant(session, "noisy", callback_url=callback_url)
        add_provider_account(
            session, tenant.id, "twilio", account_sid=sid, auth_token=token, sms_from="+12025550111"
        )
        return create_api_key(session, tenant.id, "noisy")


def owing(message_ids: list[str]) -> int:
    """How many of these messages owe an event still pending."""
    from sqlalchemy import func, select

    from models import EventDelivery, session_scope

    with session_scope() as session:
        return int(
            session.scalar(
                select(func.count(func.distinct(EventDelivery.message_id))).where(
                    EventDelivery.message_id.in_(message_ids), EventDelivery.status == "pending"
                )
            )
            or 0
        )


def summary(label: str, results: list) -> str:
    times = [s for s, _ in results if s is not None]
    missing = sum(1 for s, _ in results if s is None)
    hanging = [h for _, h in results]
    parts = [f"{label:<34}"]
    if times:
        parts.append(
            f"median {statistics.median(times):6.2f} s  max {max(times):6.2f} s  "
            f"({len(times)}/{len(results)} sent)"
        )
    if missing:
        parts.append(f"{missing} not sent within the wait")
    parts.append(f"A's hanging connections at each B: {hanging}")
    return "  ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hanging", type=int, default=40, help="A's messages owing events")
    parser.add_argument("--samples", type=int, default=5, help="B's messages per phase")
    parser.add_argument("--wait", type=float, default=120, help="longest wait for one B send")
    parser.add_argument("--deadline", default="", help="HERALD_EVENTS_DEADLINE_SECONDS")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="herald-noisy-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERALD_", "TWILIO_", "META_"))}
    env.update(
        HERALD_HOME=str(home / "home"),
        PORT=str(free_port()),
        HERALD_SANDBOX_PORT=str(free_port()),
        HERALD_REDIS_PORT=str(free_port()),
        HERALD_SECRET_KEY=f"bench-secret-{RUN}",
        HERALD_QUEUE_PREFIX=f"noisy-{RUN}:",
        HERALD_MPS_TWILIO_SMS="100",  # A's batch goes at once; B has its own sender anyway
        PYTHONUNBUFFERED="1",
    )
    if args.deadline:
        env["HERALD_EVENTS_DEADLINE_SECONDS"] = args.deadline
    schema, base = "", os.environ.get("DATABASE_URL", "")
    if base.startswith("postgresql"):
        import psycopg

        schema = f"noisy_{RUN}"
        with psycopg.connect("postgresql://" + base.split("://", 1)[1], autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in base else "?"
        env["DATABASE_URL"] = f"{base}{sep}options=-csearch_path%3D{schema}"
    receiver = TrickleReceiver(interval=1.0)
    log = home / "run.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "herald.cli", "run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> dict[str, Any] | None:
            lines = [ln for ln in log.read_text().splitlines() if ln.startswith("HERALD_READY ")]
            if proc.poll() is not None:
                raise RuntimeError("herald run exited:\n" + log.read_text()[-3000:])
            return json.loads(lines[0][len("HERALD_READY ") :]) if lines else None

        info = wait_until(ready, 180, "herald run")
        # This process writes tenant A and reads event rows in the stack's database.
        os.environ.update({k: v for k, v in env.items() if k.startswith("HERALD_")})
        if "DATABASE_URL" in env:
            os.environ["DATABASE_URL"] = env["DATABASE_URL"]
        from core.config import get_settings

        get_settings.cache_clear()

        tenant_b = httpx.Client(
            base_url=info["api"], timeout=10, headers={"Authorization": f"Bearer {info['api_key']}"}
        )
        measure_b(tenant_b, 1, args.wait, receiver)  # warm-up
        alone = measure_b(tenant_b, args.samples, args.wait, receiver)

        tenant_a = httpx.Client(
            base_url=info["api"],
            timeout=10,
            headers={"Authorization": f"Bearer {make_tenant_a(receiver.url)}"},
        )
        resp = tenant_a.post(
            "/v1/messages/batch",
            json={
                "messages": [
                    {"to": f"+1202555{i + 1000:04d}", "channel": "sms", "body": f"A {i}"}
                    for i in range(args.hanging)
                ]
            },
        )
        resp.raise_for_status()
        a_ids = [item["message"]["id"] for item in resp.json()["data"]]
        try:
            wait_until(lambda: owing(a_ids) == len(a_ids), 60, "A's messages to owe events")
        except RuntimeError:
            print(f"only {owing(a_ids)} of A's {len(a_ids)} messages owe events so far")
        wait_until(lambda: receiver.open_connections(), 60, "A's deliveries to hang")
        noisy = measure_b(tenant_b, args.samples, args.wait, receiver)

        print(f"noisy neighbour: {args.hanging} of tenant A's messages owe events to a URL")
        print("that trickles a header byte a second; tenant B's SMS, accept → sent:")
        print(summary("B alone", alone))
        print(summary(f"B next to A's {args.hanging} hanging callbacks", noisy))
        print(f"A's connections opened so far: {len(receiver.snapshot())}")
        return 0
    finally:
        receiver.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if schema:
            import psycopg

            with psycopg.connect("postgresql://" + base.split("://", 1)[1], autocommit=True) as c:
                c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        if os.environ.get("REDIS_URL"):
            import redis

            client = redis.Redis.from_url(os.environ["REDIS_URL"])
            for key in client.scan_iter(match=f"noisy-{RUN}:*", count=1000):
                client.delete(key)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
