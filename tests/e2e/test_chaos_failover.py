"""Channel failover under chaos (the harness of bench/chaos.py): workers SIGKILLed,
Redis restarted with nothing on disk, PostgreSQL unreachable for a few seconds, provider
faults on and off, while part of the traffic asks for an SMS fallback. No message may
be sent twice, no fallback made twice, and no original and its fallback both sent
because of a crash: every fallback's original ended `failed` for a reason SMS cures, or
passed its deadline undelivered.

The seed is printed; `HERALD_CHAOS_SEED=<n>` repeats a run."""

from __future__ import annotations

import collections
import contextlib
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.chaos import FAULTS, RECIPIENTS, ChaosStack

pytestmark = pytest.mark.e2e

NOT_ON_WHATSAPP = "+15005550011"  # sandbox: Meta accepts, then `failed` 131026
OFFLINE = "+12015550160"  # sandbox: Meta `sent`, never `delivered` while the phone is off
FINAL = {"delivered", "read", "failed", "undelivered", "canceled"}
CURED = {"131026", "131047", "131049", "63003", "63016", "63024", "63049"}


def _request(i: int) -> dict[str, Any]:
    """Mixed traffic: plain SMS and WhatsApp, and three kinds with a fallback (a failure
    SMS cures, a deadline that passes, a deadline that is usually met)."""
    to = RECIPIENTS[i % len(RECIPIENTS)]
    kind = i % 5
    if kind == 0:
        return {"to": to, "channel": "sms", "body": f"chaos {i}"}
    if kind == 1:
        return {"to": to, "body": f"chaos {i}"}
    if kind == 2:
        return {"to": NOT_ON_WHATSAPP, "body": f"chaos {i}", "failover": {"body": f"sms {i}"}}
    if kind == 3:
        return {"to": OFFLINE, "body": f"chaos {i}", "failover": {"after_seconds": 3}}
    return {"to": to, "body": f"chaos {i}", "failover": {"after_seconds": 60}}


def _open_windows(tenant_id: str) -> None:
    from models import Contact, session_scope, utcnow

    with session_scope() as session:
        for phone in (NOT_ON_WHATSAPP, OFFLINE):
            session.add(Contact(tenant_id=tenant_id, phone=phone, last_inbound_at=utcnow()))


def _trial(
    stack: ChaosStack, key: str, messages: int, chaos_seconds: float, rng: random.Random
) -> dict[str, Any]:
    """Send `messages` through the chaos; the counts the test asserts on."""
    api = httpx.Client(base_url=stack.api, timeout=10, headers={"Authorization": f"Bearer {key}"})
    control = httpx.Client(base_url=stack.sandbox, timeout=10)
    stop = threading.Event()
    counts = collections.Counter()
    restart_redis_at = time.monotonic() + rng.uniform(0.1, 0.5) * chaos_seconds
    cut_at = rng.uniform(0.4, 0.7) * chaos_seconds

    def database_outage() -> None:
        assert stack.database is not None
        if stop.wait(cut_at):
            return
        stack.database.cut()
        time.sleep(2.0)
        stack.database.restore()
        counts["pg_outages"] += 1

    def chaos() -> None:
        restarted = False
        while not stop.is_set():
            action = rng.random()
            if not restarted and time.monotonic() >= restart_redis_at:
                stack.restart_redis()
                restarted = True
                counts["redis_restarts"] += 1
            elif action < 0.5:
                stack.kill_worker(rng.randrange(stack.n_workers))
                counts["kills"] += 1
            elif action < 0.8:
                with contextlib.suppress(httpx.HTTPError):
                    control.post("/_sandbox/faults", json=rng.choice(FAULTS))
            else:
                with contextlib.suppress(httpx.HTTPError):
                    control.delete("/_sandbox/faults")
            stop.wait(rng.uniform(0.3, 1.5))
            stack.revive_crashed_workers()

    outage = threading.Thread(target=database_outage, daemon=True)
    outage.start()
    chaos_thread = threading.Thread(target=chaos, daemon=True)
    chaos_thread.start()
    started = time.monotonic()
    ids: list[str] = []
    for i in range(messages):
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:  # a client retrying with its Idempotency-Key
            try:
                resp = api.post(
                    "/v1/messages", json=_request(i), headers={"Idempotency-Key": f"{started}-{i}"}
                )
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if resp.status_code >= 500 and resp.status_code != 503:
                counts["http_5xx"] += 1  # never expected: reported with the stack's log
            if resp.status_code in (200, 202):
                if resp.json()["id"] not in ids:
                    ids.append(resp.json()["id"])
                break
            time.sleep(0.3)  # 503 while the database is away
        time.sleep(max(0.0, chaos_seconds / messages * rng.uniform(0.2, 1.8)))
    remaining = chaos_seconds - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    outage.join()
    stop.set()
    chaos_thread.join()
    control.delete("/_sandbox/faults")
    counts["accepted"] = len(ids)
    return {"ids": ids, "counts": counts}


def _settle(stack: ChaosStack, ids: list[str], timeout: float = 120.0) -> dict[str, Any]:
    """Wait until every message and every fallback is final and no failover is pending;
    then the rows, their applied events and the sandbox's receipts."""
    from sqlalchemy import select

    from models import Message, MessageEvent, session_scope

    deadline = time.monotonic() + timeout
    rows: dict[str, Message] = {}
    while True:
        with session_scope() as session:
            originals = list(session.scalars(select(Message).where(Message.id.in_(ids))))
            fallbacks = list(session.scalars(select(Message).where(Message.failover_of.in_(ids))))
            rows = {m.id: m for m in originals + fallbacks}
            delivered = set(
                session.scalars(
                    select(MessageEvent.message_id).where(
                        MessageEvent.message_id.in_(ids),
                        MessageEvent.status.in_(("delivered", "read")),
                        MessageEvent.applied.is_(True),
                    )
                )
            )
        waiting = [m.id for m in rows.values() if m.status not in FINAL or m.failover_pending]
        if not waiting or time.monotonic() > deadline:
            break
        stack.revive_crashed_workers()
        time.sleep(0.5)
    time.sleep(1.0)  # late callbacks and stray retries land before counting
    sends = httpx.get(f"{stack.sandbox}/_sandbox/sends", params={"accepted": "true"}).json()
    receipts = collections.Counter(s["herald_id"] for s in sends["sends"])
    return {"rows": rows, "delivered": delivered, "receipts": receipts, "waiting": waiting}


def _story(message: Any) -> str:
    """What a failing assertion needs to know of a message (its timeline included)."""
    from sqlalchemy import select

    from models import MessageEvent, session_scope

    with session_scope() as session:
        events = session.scalars(
            select(MessageEvent)
            .where(MessageEvent.message_id == message.id)
            .order_by(MessageEvent.id)
        )
        timeline = [
            f"{e.status}/{e.source}/{e.native_status}/{e.applied}/{e.error_code}/{e.detail}"
            for e in events
        ]
    return (
        f"{message.channel} {message.provider} to={message.to_number} "
        f"status={message.status} failover_of={message.failover_of} "
        f"failover={(message.options or {}).get('failover')} timeline={timeline}"
    )


def _errors(home: Path) -> str:
    """The stack's last logged tracebacks, for a failure message."""
    lines = (home / "chaos.log").read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if "Traceback" in line][-2:]
    return "\n".join(line for i in starts for line in lines[max(0, i - 3) : i + 40])


def test_failover_sends_nothing_twice_under_chaos(tmp_path: Path) -> None:
    seed = int(os.environ.get("HERALD_CHAOS_SEED") or random.randrange(2**32))
    print(f"chaos failover seed={seed} (HERALD_CHAOS_SEED={seed} repeats it)")
    rng = random.Random(seed)
    stack = ChaosStack(tmp_path, workers=2, concurrency=8)
    stack.env.update(HERALD_FAILOVER_INTERVAL="1")
    totals = collections.Counter()
    problems: list[str] = []
    try:
        tenant = stack.start()
        _open_windows(tenant["tenant_id"])
        for _trial_n in range(2):
            sent = _trial(stack, tenant["api_key"], 30, 6.0, rng)
            totals.update(sent["counts"])
            seen = _settle(stack, sent["ids"])
            rows, receipts = seen["rows"], seen["receipts"]
            problems += [f"not final: {m}" for m in seen["waiting"]]
            by_original = collections.Counter(m.failover_of for m in rows.values() if m.failover_of)
            problems += [f"{o}: {n} fallbacks" for o, n in by_original.items() if n > 1]
            for mid, n in receipts.items():
                if n < 2 or mid not in rows:
                    continue
                if rows[mid].to_number == NOT_ON_WHATSAPP and rows[mid].channel == "whatsapp":
                    # Meta's `failed` carries no biz_opaque_callback_data: after a lost
                    # answer it cannot name its message before the settle window ends, and
                    # the message is sent again (docs/guarantees.md, "A message stuck in
                    # `sending`"). Both attempts fail; nobody receives either.
                    totals["meta_failed_resent"] += 1
                    continue
                problems.append(f"{mid}: sent {n} times ({_story(rows[mid])})")
            for fallback in (m for m in rows.values() if m.failover_of):
                original = rows[fallback.failover_of]
                cured = original.provider_error_code in CURED or original.error_code in (
                    "failover_deadline",
                    "window_closed",
                )
                if original.status != "failed" or not cured:
                    problems.append(f"{original.id} fell back while {original.status}")
                if original.id in seen["delivered"]:
                    problems.append(f"{original.id} delivered and fell back")
                if original.failover_id != fallback.id:
                    problems.append(f"{original.id} does not name its fallback")
            for mid in sent["ids"]:
                m = rows[mid]
                if receipts[mid] == 0 and m.status not in ("failed", "undelivered", "canceled"):
                    problems.append(f"{mid}: lost ({m.status})")
            totals["fallbacks"] += sum(1 for m in rows.values() if m.failover_of)
            totals["deadline"] += sum(
                1 for m in rows.values() if m.error_code == "failover_deadline"
            )
    finally:
        stack.stop()
    print(f"chaos failover seed={seed} totals={dict(totals)}")
    if totals["http_5xx"]:
        problems.append(f"{totals['http_5xx']} answers 5xx other than 503: {_errors(tmp_path)}")
    assert problems == [], f"seed={seed}: {problems}"
    assert totals["accepted"] == 60 and totals["kills"] >= 2, (seed, totals)
    assert totals["redis_restarts"] == 2 and totals["pg_outages"] == 2, (seed, totals)
    # Failover really happened, of both kinds: 12 messages to a number not on WhatsApp,
    # 12 to a phone that is off with a 3 s deadline.
    assert totals["fallbacks"] >= 20 and totals["deadline"] >= 10, (seed, totals)
