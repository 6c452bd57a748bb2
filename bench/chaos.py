"""Chaos harness: prove that no message is lost and none is sent twice.

Runs the real stack (gunicorn API, N Celery workers, beat, a Redis of its own,
the provider sandbox) and, per trial, sends M messages one by one through the API
and a campaign of C recipients released by beat in batches, while it kills whole
worker process groups with SIGKILL at random moments, restarts Redis once (which
keeps nothing on disk, like the CI machine's: every queued task is lost), makes
PostgreSQL unreachable once for a few seconds (a TCP proxy between Herald and the
server, cut and restored: the server itself keeps running for its other users),
and turns sandbox faults (500, 429, accepted-then-500, dropped connections) on and
off. Then it stops the chaos, waits for every message to reach a final state,
and reconciles the sandbox's receipt log with Herald's records:

    accepted      POST /v1/messages answered 202, plus the campaign's recipients
    delivered     reached delivered/read
    failed        failed/undelivered, by reason
    lost          accepted, yet never accepted by the sandbox nor failed
    sent twice    more than one accepted receipt for one Herald id
    recover       seconds from the end of the chaos until every message was final
    outage        POSTs answered during the PostgreSQL outage, by status (503 expected,
                  never 500), and seconds from its end until the API accepted again
    purged        with --purge N: N messages of the tenant dated past its retention
                  (with events, deliveries and receipts) written before each trial and
                  purged by the retention purge running throughout it; none may be left,
                  and the trial's own messages must all be there and final

    python -m bench.chaos --trials 50 --messages 40 --campaign 40 --workers 3
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

from bench.tcpproxy import TcpProxy, proxy_to
from herald.stack import (
    ROOT,
    SANDBOX_META,
    add_sandbox_twilio_account,
    api_argv,
    beat_argv,
    free_port,
    redis_server_argv,
    sandbox_argv,
    wait_until,
    worker_argv,
)

FINAL = {"delivered", "read", "failed", "undelivered", "canceled"}
# Distinct recipients (each with an open window): WhatsApp pair pacing allows one
# message per few seconds to the same user, as Meta does.
RECIPIENTS = [f"+120255501{n:02d}" for n in range(40)]
FAULTS = [
    {"provider": "*", "status": 500, "rate": 0.25},
    {"provider": "twilio", "status": 500, "code": 20500, "rate": 0.3, "mode": "accept_then_error"},
    {"provider": "meta", "status": 503, "code": 131016, "rate": 0.3, "mode": "accept_then_error"},
    {"provider": "*", "status": 429, "rate": 0.3, "retry_after": 1},
    {"provider": "*", "mode": "timeout", "latency_ms": 1500, "rate": 0.2},
    {"provider": "*", "mode": "accept_then_timeout", "latency_ms": 300, "rate": 0.2},
]


@dataclass
class TrialResult:
    accepted: int = 0
    delivered: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    failed_ids: list[str] = field(default_factory=list)  # "<id>:<reason>" of each failed one
    lost: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    recover_s: float = 0.0
    kills: int = 0
    redis_restarts: int = 0
    worker_crashes: int = 0
    pg_outages: int = 0
    # POST /v1/messages answers while PostgreSQL was unreachable, by status ("error":
    # no HTTP answer), and seconds from its end to the first accepted POST.
    outage_answers: dict[str, int] = field(default_factory=dict)
    pg_recover_s: float | None = None
    purged: int = 0  # expired messages the purge removed during the trial
    purge_runs: int = 0


# The tenant's messages written before each trial, dated past its retention (the default,
# 30 days): the purge running through the trial removes them, never the trial's own.
EXPIRED_AGE_DAYS = 40


def write_expired(tenant_id: str, n: int, trial: int) -> list[str]:
    """`n` delivered SMS of the tenant, `EXPIRED_AGE_DAYS` old, each with three events,
    an event delivery and two raw receipts, as the traffic writes them; their ids."""
    from datetime import timedelta

    from sqlalchemy import text

    from core.ids import id_at, utcnow
    from models import session_scope

    at = utcnow() - timedelta(days=EXPIRED_AGE_DAYS, minutes=trial)
    ids = [
        id_at("msg", at + timedelta(milliseconds=i))[:-8] + f"{trial:02d}{i:06d}" for i in range(n)
    ]
    with session_scope() as session:
        session.execute(
            text(
                """
                WITH m AS (
                    INSERT INTO messages (id, tenant_id, direction, channel, provider,
                        provider_account_id, to_number, from_number, status,
                        provider_message_id, attempts, metadata, origin, slot_reserved, body,
                        created_at, updated_at, sent_at, delivered_at)
                    SELECT i, CAST(:tenant AS varchar), 'outbound', 'sms', 'twilio',
                        (SELECT id FROM provider_accounts
                         WHERE tenant_id = CAST(:tenant AS varchar)
                           AND provider = 'twilio' LIMIT 1),
                        '+13035550100', '+12025550100', 'delivered', 'SMexpired' || i, 1,
                        '{}', 'api', false, 'expired ' || i, CAST(:at AS timestamp),
                        CAST(:at AS timestamp), CAST(:at AS timestamp), CAST(:at AS timestamp)
                    FROM unnest(CAST(:ids AS text[])) AS i
                    RETURNING id, tenant_id, provider_message_id
                ), e AS (
                    INSERT INTO message_events (message_id, status, source, applied, at)
                    SELECT id, s, 'callback', true, CAST(:at AS timestamp) FROM m,
                        unnest(ARRAY['queued', 'sent', 'delivered']) AS s
                ), d AS (
                    INSERT INTO event_deliveries (message_id, tenant_id, url, payload, status,
                        attempts, next_attempt_at, created_at)
                    SELECT id, tenant_id, 'https://acme.example/events', '{}', 'delivered', 1,
                        CAST(:at AS timestamp), CAST(:at AS timestamp) FROM m
                )
                INSERT INTO webhook_events (provider, kind, dedup_key, tenant_id, message_id,
                    provider_message_id, payload, received_at)
                SELECT 'twilio', 'status', 'expired:' || provider_message_id || ':' || s,
                    tenant_id, id, provider_message_id, '{}', CAST(:at AS timestamp)
                FROM m, unnest(ARRAY['sent', 'delivered']) AS s
                """
            ),
            {"tenant": tenant_id, "ids": ids, "at": at.replace(tzinfo=None)},
        )
    return ids


def expired_left(ids: list[str]) -> int:
    """Rows of these messages still in any of the four tables the purge empties."""
    from sqlalchemy import text

    from models import session_scope

    with session_scope() as session:
        return int(
            session.execute(
                text(
                    """
                    SELECT (SELECT count(*) FROM messages WHERE id = ANY(:ids))
                        + (SELECT count(*) FROM message_events WHERE message_id = ANY(:ids))
                        + (SELECT count(*) FROM event_deliveries WHERE message_id = ANY(:ids))
                        + (SELECT count(*) FROM webhook_events WHERE message_id = ANY(:ids))
                    """
                ),
                {"ids": ids},
            ).scalar_one()
        )


class ChaosStack:
    """The processes of one Herald deployment, each restartable on its own."""

    def __init__(self, home: Path, workers: int, concurrency: int) -> None:
        self.home = home
        self.api_port, self.sandbox_port, self.redis_port = free_port(), free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.sandbox = f"http://127.0.0.1:{self.sandbox_port}"
        self.env = dict(os.environ)
        for key in ("HERALD_QUEUE_PREFIX", "HERALD_PUBLIC_URL"):
            self.env.pop(key, None)
        self.env.update(
            HERALD_HOME=str(home),
            REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            HERALD_PUBLIC_URL=self.api,
            TWILIO_API_BASE=self.sandbox,
            META_GRAPH_BASE=self.sandbox,
            HERALD_SECRET_KEY=self.env.get("HERALD_SECRET_KEY") or Fernet.generate_key().decode(),
            # Short bounds so a trial recovers in seconds; production uses the defaults.
            HERALD_HTTP_TIMEOUT="2",
            HERALD_SEND_LEASE_SECONDS="3",
            # Longer than an outage and the sandbox's Meta webhook retries after it (0.3 s,
            # then backoff 0.5, 1, 2, 4 s: a status refused with 503 through a 2-3 s cut lands
            # at +3.8 s, or +7.8 s if the first retry after it fails too). With 3 s the
            # harness itself delayed callbacks past the window, and a Meta message accepted
            # with an error answer was sent again: the residual risk docs/guarantees.md
            # names, which production's 30 s keeps for delays far past any outage here.
            HERALD_SETTLE_SECONDS="10",
            HERALD_SWEEP_AFTER_SECONDS="3",
            HERALD_SWEEP_INTERVAL="1",
            # Twilio never retries a callback answered 5xx (as during the database outage):
            # the lost ones are fetched back by reconciliation, here after 6 s, not 10 min.
            HERALD_RECONCILE_AFTER_MINUTES="0.1",
            HERALD_RECONCILE_INTERVAL="2",
            HERALD_MAX_ATTEMPTS="25",
            HERALD_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        self.database: TcpProxy | None = None  # set by start(): the proxy to PostgreSQL
        self.n_workers = workers
        self.concurrency = concurrency
        self.procs: dict[str, subprocess.Popen] = {}
        self.generation = 0
        self.log = open(home / "chaos.log", "ab")  # noqa: SIM115

    def _start(self, name: str, argv: list[str]) -> None:
        self.procs[name] = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env,
            start_new_session=True,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def _kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # the whole group: the worker and its children
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def start_redis(self) -> None:
        import redis

        self._start("redis", redis_server_argv(self.redis_port, self.home))
        client = redis.Redis(port=self.redis_port, socket_timeout=1)
        wait_until(lambda: client.ping(), "redis", 20)

    def restart_redis(self) -> None:
        self._kill("redis")
        time.sleep(0.5)
        self.start_redis()

    def start_worker(self, index: int) -> None:
        self.generation += 1
        self._start(
            f"worker-{index}",
            worker_argv(
                self.concurrency,
                f"chaos{index}-{self.generation}@%h",
                "WARNING",
                "--without-mingle",
                "--without-gossip",
            ),
        )

    def revive_crashed_workers(self) -> int:
        """Restart workers that died on their own (kombu can crash one when Redis goes
        away mid-read), as a process supervisor would; returns how many."""
        crashed = 0
        for i in range(self.n_workers):
            proc = self.procs.get(f"worker-{i}")
            if proc is not None and proc.poll() is not None:
                crashed += 1
                self.procs.pop(f"worker-{i}")
                self.start_worker(i)
        return crashed

    def kill_worker(self, index: int) -> None:
        self._kill(f"worker-{index}")
        self.start_worker(index)

    def start(self) -> dict[str, str]:
        from core.config import get_settings
        from herald.postgres import embedded

        self._database = contextlib.ExitStack()
        if not self.env.get("DATABASE_URL"):
            # The default, as `make run`: an embedded PostgreSQL under this home.
            self.env["DATABASE_URL"] = self._database.enter_context(embedded(self.home))
        # Herald reaches PostgreSQL through a proxy the harness can cut; this process
        # (migrations, the tenant, the checks) goes direct.
        direct = self.env["DATABASE_URL"]
        self.database, self.env["DATABASE_URL"] = proxy_to(direct)
        ours = {k: v for k, v in self.env.items() if k.startswith(("HERALD", "DATABASE"))}
        ours["DATABASE_URL"] = direct
        self._saved_env = {k: os.environ.get(k) for k in ours}
        os.environ.update(ours)  # this process migrates and creates the tenant
        get_settings.cache_clear()
        from herald import migrate

        migrate.upgrade()
        tenant = _make_tenant()
        self.start_redis()
        self._start(
            "sandbox",
            sandbox_argv(
                self.sandbox_port,
                "--meta-webhook-url",
                f"{self.api}/webhooks/meta",
                "--callback-delay",
                "0.2",
                "--receipts-file",
                str(self.home / "receipts.jsonl"),
            ),
        )
        self._start("api", api_argv(self.api_port, 2))
        for i in range(self.n_workers):
            self.start_worker(i)
        self._start("beat", beat_argv(self.home / "beat-schedule"))
        wait_until(lambda: httpx.get(f"{self.api}/healthz").status_code == 200, "api")
        wait_until(
            lambda: httpx.get(f"{self.sandbox}/_sandbox/health").status_code == 200, "sandbox"
        )
        return tenant

    def stop(self) -> None:
        from core.config import get_settings

        for name in list(self.procs)[::-1]:
            self._kill(name, signal.SIGTERM)
        from models import reset_engine

        reset_engine()  # this process's connections, before the server stops
        if self.database is not None:
            self.database.close()
        if hasattr(self, "_database"):
            self._database.close()
        self.log.close()
        for key, value in getattr(self, "_saved_env", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


def _make_tenant() -> dict[str, str]:
    from models import Contact, session_scope, utcnow
    from services.tenancy.tenants import add_provider_account, create_api_key, create_tenant

    phone_id, meta_token, secret, waba = SANDBOX_META
    with session_scope() as session:
        tenant = create_tenant(session, "chaos")
        add_sandbox_twilio_account(session, tenant.id)
        add_provider_account(
            session,
            tenant.id,
            "meta",
            phone_number_id=phone_id,
            access_token=meta_token,
            app_secret=secret,
            waba_id=waba,
        )
        # The recipient wrote to the business: its WhatsApp window is open.
        tenant.hourly_limit = tenant.daily_limit = 0  # unlimited: the harness sends thousands
        for phone in RECIPIENTS:
            session.add(Contact(tenant_id=tenant.id, phone=phone, last_inbound_at=utcnow()))
        return {"tenant_id": tenant.id, "api_key": create_api_key(session, tenant.id)}


def run_trial(
    stack: ChaosStack,
    key: str,
    messages: int,
    chaos_seconds: float,
    rng: random.Random,
    settle_timeout: float = 90.0,
    campaign: int = 0,
    pg_outage: float = 0.0,
    purge: bool = False,
) -> TrialResult:
    result = TrialResult()
    api = httpx.Client(base_url=stack.api, timeout=10, headers={"Authorization": f"Bearer {key}"})
    control = httpx.Client(base_url=stack.sandbox, timeout=10)
    ids: list[str] = []
    stop_chaos = threading.Event()

    # Every draw of the trial comes from `rng`, taken here in a fixed order before any
    # thread starts: the chaos thread and the sender each get a generator of their own
    # (one shared between threads would hand out its numbers in the order the threads
    # happen to ask), and the sandbox draws its faults from a seed given by this one.
    chaos_rng = random.Random(rng.getrandbits(64))
    pace_rng = random.Random(rng.getrandbits(64))
    control.post("/_sandbox/config", json={"callbacks": {"seed": rng.getrandbits(31)}})
    # One Redis restart per trial, at a random moment while messages flow.
    restart_redis_at = time.monotonic() + rng.uniform(0.1, 0.5) * chaos_seconds
    # One PostgreSQL outage per trial, starting in the second half.
    cut_at = rng.uniform(0.4, 0.7) * chaos_seconds
    outage: dict[str, float] = {}
    if pg_outage > 0 and stack.database is not None:

        def database_outage() -> None:
            assert stack.database is not None
            if stop_chaos.wait(cut_at):
                return
            outage["start"] = time.monotonic()
            stack.database.cut()
            time.sleep(pg_outage)
            stack.database.restore()
            outage["end"] = time.monotonic()
            result.pg_outages += 1

        threading.Thread(target=database_outage, daemon=True).start()
    answers: list[tuple[float, str]] = []  # (when, status) of every POST /v1/messages

    def chaos() -> None:
        redis_restarted = False
        while not stop_chaos.is_set():
            action = chaos_rng.random()
            if not redis_restarted and time.monotonic() >= restart_redis_at:
                stack.restart_redis()
                redis_restarted = True
                result.redis_restarts += 1
            elif action < 0.5:
                stack.kill_worker(chaos_rng.randrange(stack.n_workers))
                result.kills += 1
            elif action < 0.8:
                with contextlib.suppress(httpx.HTTPError):
                    control.post("/_sandbox/faults", json=chaos_rng.choice(FAULTS))
            else:
                with contextlib.suppress(httpx.HTTPError):
                    control.delete("/_sandbox/faults")
            stop_chaos.wait(chaos_rng.uniform(0.3, 1.5))
            result.worker_crashes += stack.revive_crashed_workers()

    def purging() -> None:
        # The hourly beat purge, run back to back through the whole trial (this process
        # goes to PostgreSQL directly: it keeps purging through the outage too).
        from services.lifecycle.purge import purge_all

        while not stop_chaos.is_set():
            done = purge_all(max_seconds=30)
            result.purge_runs += 1
            result.purged += int(done["messages"])  # type: ignore[call-overload]
            stop_chaos.wait(0.2)

    chaos_thread = threading.Thread(target=chaos, daemon=True)
    chaos_thread.start()
    purge_thread = threading.Thread(target=purging, daemon=True) if purge else None
    if purge_thread is not None:
        purge_thread.start()
    started = time.monotonic()
    campaign_id = _start_campaign(api, campaign, chaos_seconds, started) if campaign else None
    for i in range(messages):
        sms = i % 2 == 0
        body = {
            "to": RECIPIENTS[i % len(RECIPIENTS)],
            "channel": "sms" if sms else "whatsapp",
            "body": f"chaos {i}",
        }
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:  # a client retrying with its Idempotency-Key
            try:
                resp = api.post(
                    "/v1/messages", json=body, headers={"Idempotency-Key": f"{started}-{i}"}
                )
            except httpx.HTTPError:
                answers.append((time.monotonic(), "error"))
                time.sleep(0.2)
                continue
            answers.append((time.monotonic(), str(resp.status_code)))
            if resp.status_code in (200, 202):
                if resp.json()["id"] not in ids:
                    ids.append(resp.json()["id"])
                break
            # 503 while the database is unreachable: wait as told (at most 0.5 s here).
            time.sleep(min(0.5, float(resp.headers.get("Retry-After") or 0.2)))
        time.sleep(max(0.0, chaos_seconds / messages * pace_rng.uniform(0.2, 1.8)))
    remaining = chaos_seconds - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    while "start" in outage and "end" not in outage:
        time.sleep(0.1)  # the outage ends before the chaos does
    stop_chaos.set()
    chaos_thread.join()
    if purge_thread is not None:
        purge_thread.join()
    control.delete("/_sandbox/faults")
    chaos_end = time.monotonic()
    if "end" in outage:
        for when, status in answers:
            if outage["start"] <= when <= outage["end"]:
                result.outage_answers[status] = result.outage_answers.get(status, 0) + 1
        after = [when for when, status in answers if when > outage["end"] and status[0] == "2"]
        result.pg_recover_s = (min(after) - outage["end"]) if after else None
    if campaign_id is not None:
        ids.extend(_campaign_message_ids(api, campaign_id))
    result.accepted = len(ids)

    statuses: dict[str, dict[str, Any]] = {}
    deadline = chaos_end + settle_timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for mid in list(pending):
            try:
                resp = api.get(f"/v1/messages/{mid}")
            except httpx.HTTPError:
                continue
            if resp.status_code != 200:
                continue
            message = resp.json()
            statuses[mid] = message
            if message["status"] in FINAL:
                pending.discard(mid)
        if pending:
            result.worker_crashes += stack.revive_crashed_workers()
            time.sleep(0.5)
    result.recover_s = time.monotonic() - chaos_end
    # Late callbacks and stray retries may still be in flight: let them land before counting.
    time.sleep(1.0)
    receipts = collections.Counter(
        s["herald_id"]
        for s in control.get("/_sandbox/sends", params={"accepted": "true"}).json()["sends"]
    )
    for mid in ids:
        status = statuses.get(mid, {}).get("status")
        if status in ("delivered", "read"):
            result.delivered += 1
        elif status in ("failed", "undelivered", "canceled"):
            reason = (statuses[mid].get("error") or {}).get("code") or status
            result.failed[reason] = result.failed.get(reason, 0) + 1
            result.failed_ids.append(f"{mid}:{reason}")
        else:
            result.stuck.append(f"{mid}:{status}")
        if receipts[mid] > 1:
            result.twice.append(mid)
        if receipts[mid] == 0 and status not in ("failed", "undelivered", "canceled"):
            result.lost.append(mid)
    return result


def _start_campaign(api: httpx.Client, size: int, chaos_seconds: float, tag: float) -> str:
    """A campaign of `size` SMS released over most of the chaos window, so its batches
    (claimed, sent and recorded a batch at a time) meet the kills and the Redis restart."""
    recipients = [{"to": f"+1303555{n:04d}"} for n in range(size)]
    for _attempt in range(10):
        with contextlib.suppress(httpx.HTTPError):
            resp = api.post(
                "/v1/campaigns",
                json={
                    "name": f"chaos {tag}",
                    "channel": "sms",
                    "body": "Chaos offer",
                    "rate": max(1.0, size / (chaos_seconds * 0.75)),
                    "recipients": recipients,
                },
            )
            if resp.status_code == 201:
                return resp.json()["id"]
        time.sleep(0.2)
    raise RuntimeError("the API refused the trial's campaign")


def _campaign_message_ids(api: httpx.Client, campaign_id: str) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"campaign_id": campaign_id, "limit": 100}
        if cursor:
            params["cursor"] = cursor
        resp = api.get("/v1/messages", params=params)
        if resp.status_code != 200:  # a 503 while the database is away: ask again
            time.sleep(0.5)
            continue
        page = resp.json()
        ids.extend(m["id"] for m in page["data"])
        cursor = page.get("next_cursor")
        if not cursor:
            return ids


def run(
    trials: int = 3,
    messages: int = 40,
    workers: int = 3,
    concurrency: int = 8,
    chaos_seconds: float = 8.0,
    seed: int | None = None,
    home: Path | None = None,
    out=sys.stdout,
    campaign: int = 0,
    pg_outage: float = 3.0,
    purge: int = 0,
) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Run `trials` trials on one stack; print a line per trial and the totals; return totals.

    Every random choice of the harness (kills, faults, pacing, the Redis restart and the
    outage moments, the sandbox's fault draws) comes from `seed`, printed first: the same
    seed replays the same choices (not the processes' own timing). None: a fresh seed."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    print(f"seed={seed} (replay: --seed {seed}, or HERALD_CHAOS_SEED={seed})", file=out, flush=True)
    rng = random.Random(seed)
    home = home or Path(tempfile.mkdtemp(prefix="herald-chaos-"))
    stack = ChaosStack(home, workers, concurrency)
    totals: dict[str, Any] = {
        "seed": seed,
        "trials": 0,
        "accepted": 0,
        "delivered": 0,
        "failed": {},
        "lost": 0,
        "sent_twice": 0,
        "stuck": 0,
        "kills": 0,
        "redis_restarts": 0,
        "worker_crashes": 0,
        "recover_max_s": 0.0,
        "recover_sum_s": 0.0,
        "pg_outages": 0,
        "outage_answers": {},
        # Per trial with an outage: its POSTs answered while PostgreSQL was unreachable.
        "outage_answers_by_trial": [],
        "failed_ids": [],
        "pg_recover_max_s": 0.0,
        "purged": 0,  # expired messages removed by the purge running through the trials
        "expired_written": 0,
        "expired_left": 0,  # rows of those still present after the trials (want 0)
    }
    try:
        tenant = stack.start()
        expired: list[str] = []
        for n in range(1, trials + 1):
            if purge:
                expired += write_expired(tenant["tenant_id"], purge, n)
            r = run_trial(
                stack,
                tenant["api_key"],
                messages,
                chaos_seconds,
                rng,
                campaign=campaign,
                pg_outage=pg_outage,
                purge=purge > 0,
            )
            totals["trials"] += 1
            totals["purged"] += r.purged
            for key in (
                "accepted",
                "delivered",
                "kills",
                "redis_restarts",
                "worker_crashes",
                "pg_outages",
            ):
                totals[key] += getattr(r, key)
            for status, count in r.outage_answers.items():
                totals["outage_answers"][status] = totals["outage_answers"].get(status, 0) + count
            if r.pg_outages:
                totals["outage_answers_by_trial"].append(dict(r.outage_answers))
            totals["failed_ids"].extend(r.failed_ids)
            if r.pg_recover_s is not None:
                totals["pg_recover_max_s"] = max(totals["pg_recover_max_s"], r.pg_recover_s)
            totals["lost"] += len(r.lost)
            totals["sent_twice"] += len(r.twice)
            totals["stuck"] += len(r.stuck)
            totals["recover_max_s"] = max(totals["recover_max_s"], r.recover_s)
            totals["recover_sum_s"] += r.recover_s
            for reason, count in r.failed.items():
                totals["failed"][reason] = totals["failed"].get(reason, 0) + count
            print(
                f"trial {n:3d}: accepted={r.accepted} delivered={r.delivered} "
                f"failed={sum(r.failed.values())} lost={len(r.lost)} sent_twice={len(r.twice)} "
                f"stuck={len(r.stuck)} kills={r.kills} redis_restarts={r.redis_restarts} "
                f"worker_crashes={r.worker_crashes} recover={r.recover_s:.1f}s"
                + (
                    f" pg_outage={r.outage_answers} pg_recover={r.pg_recover_s:.1f}s"
                    if r.pg_recover_s is not None
                    else (f" pg_outage={r.outage_answers}" if r.pg_outages else "")
                )
                + (f" purged={r.purged} in {r.purge_runs} runs" if purge else "")
                + (f" LOST={r.lost}" if r.lost else "")
                + (f" TWICE={r.twice}" if r.twice else "")
                + (f" STUCK={r.stuck}" if r.stuck else ""),
                file=out,
                flush=True,
            )
        if purge:
            totals["expired_written"] = len(expired)
            totals["expired_left"] = expired_left(expired)
    finally:
        stack.stop()
    totals["recover_mean_s"] = round(totals.pop("recover_sum_s") / max(1, totals["trials"]), 2)
    totals["recover_max_s"] = round(totals["recover_max_s"], 2)
    totals["pg_recover_max_s"] = round(totals["pg_recover_max_s"], 2)
    print("TOTAL " + json.dumps(totals), file=out, flush=True)
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--campaign", type=int, default=40, help="campaign recipients per trial")
    parser.add_argument("--chaos-seconds", type=float, default=8.0)
    parser.add_argument(
        "--seed",
        type=int,
        default=int(os.environ.get("HERALD_CHAOS_SEED") or -1),
        help="replay a run's random choices (default: HERALD_CHAOS_SEED, else a new one, printed)",
    )
    parser.add_argument(
        "--pg-outage",
        type=float,
        default=3.0,
        help="seconds PostgreSQL is unreachable once per trial (0: never; needs PostgreSQL)",
    )
    parser.add_argument(
        "--purge",
        type=int,
        default=0,
        help="expired messages written before each trial for the retention purge, running "
        "throughout it, to remove (0: no purge)",
    )
    args = parser.parse_args(argv)
    totals = run(
        args.trials,
        args.messages,
        args.workers,
        args.concurrency,
        args.chaos_seconds,
        args.seed if args.seed >= 0 else None,
        campaign=args.campaign,
        pg_outage=args.pg_outage,
        purge=args.purge,
    )
    return (
        0
        if totals["expired_left"] == 0
        and totals["lost"] == 0
        and totals["sent_twice"] == 0
        and totals["stuck"] == 0
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
