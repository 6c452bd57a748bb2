"""Twilio callbacks kept in Redis while PostgreSQL is unreachable, stored once it is back.

Twilio does not retry a callback answered with a 5xx (only a failed connection, once),
so a status callback answered 503 during a database outage was lost: its message stayed
`sent` until reconcile asked Twilio, ten minutes later. Meta retries for days with
backoff, so its webhooks are still answered 503 and Meta brings them back.

While the database is unreachable, a Twilio callback (status or inbound message) is
appended to a Redis stream, exactly as received (URL, form, signature, time), and
answered 2xx. What it costs an unsigned request stays what a signature check costs:

* the form must name an account SID and carry a signature of Twilio's shape;
* a process that saw the account's signers before (services/callbacks/signatures.py
  keeps the last ones read, whatever their age) checks the HMAC with them: a callback
  they did not sign is refused (503), one they signed is spooled;
* a process that never saw that account (started during the outage) spools it unchecked,
  up to SPOOL_MAX waiting entries (then 503): the drain checks it.

The drain (`drain_all`: a thread of the process that spooled, retrying every
DRAIN_RETRY_SECONDS until the stream is empty, and beat's `herald.apply_inbox` pass)
reads entries through a consumer group, checks each signature again against the
database (an entry no account signed is dropped and logged), stores status callbacks
in the webhook inbox with the time they were received (applied by applier.py) and
inbound messages as the view would, commits, then acknowledges and deletes the entries.
A drainer that dies holds its entries for CLAIM_IDLE_MS, then another claims them;
an entry stored twice changes nothing (the inbox's and the receipts' dedup keys).
Redis unreachable too: the callback is answered 503, as before.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from datetime import datetime
from typing import Any

import redis
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.errors import Forbidden, InvalidRequest, database_unavailable
from models import WebhookInbox, get_engine, new_session, utcnow
from services.callbacks.signatures import twilio_signed_by_kept, verify_twilio
from services.policy.limits import get_redis, key

log = logging.getLogger(__name__)

STATUS = "twilio_status"
INBOUND = "twilio_inbound"
KINDS = frozenset({STATUS, INBOUND})
GROUP = "drain"
BATCH = 200
# Entries a drainer read and did not acknowledge for this long are taken by another.
CLAIM_IDLE_MS = 30_000
# Unchecked entries (no signer known to the process) waiting at most: past it, 503.
SPOOL_MAX = 100_000
# How often a process with spooled callbacks tries the database again.
DRAIN_RETRY_SECONDS = 0.5
# Twilio: "AC" + 32 hex digits; a signature is base64 of a 20-byte HMAC-SHA1.
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}\Z")
_SIGNATURE = re.compile(r"[A-Za-z0-9+/]{27}=\Z")


# After the database was found unreachable, a process sends status callbacks straight to
# the spool for this long: no connection attempt (and its failure) per callback, for the
# CPU and for a database that is coming back; one attempt a second at most.
DOWN_SECONDS = 1.0
_down: tuple[float, BaseException, Any] | None = None


def note_down(exc: BaseException) -> None:
    """The database was just found unreachable (`exc` says how)."""
    global _down
    _down = (time.monotonic() + DOWN_SECONDS, exc, get_engine())


def known_down() -> BaseException | None:
    """The error that found the database unreachable under DOWN_SECONDS ago (through
    the engine still in use), else None."""
    down = _down
    if down is None or time.monotonic() >= down[0] or get_engine() is not down[2]:
        return None
    return down[1]


def _up() -> None:
    global _down
    _down = None


def spool_key() -> str:
    return key("callbacks", "spool")


def dead_key() -> str:
    """Entries that failed for a reason other than the database (kept for an operator)."""
    return key("callbacks", "spool", "dead")


def keep(kind: str, url: str, form: dict[str, str], signature: str, ref: str | None) -> bool:
    """Spool one Twilio callback received while the database is unreachable; False when
    it may not be kept (not plausibly signed, a known signer refuses it, Redis away or
    the spool full): the caller answers 503 then."""
    if kind not in KINDS or not _plausible(form, signature):
        return False
    verdict = twilio_signed_by_kept(url, form, signature)
    if verdict is False:
        return False
    client = get_redis()
    if client is None:
        return False
    entry = {
        "kind": kind,
        "url": url,
        "form": json.dumps(form),
        "signature": signature,
        "ref": ref or "",
        "at": utcnow().isoformat(),
    }
    try:
        if verdict is None and client.xlen(spool_key()) >= SPOOL_MAX:
            log.warning("callback spool full (%d): answering 503", SPOOL_MAX)
            return False
        client.xadd(spool_key(), entry)  # type: ignore[arg-type]
    except redis.RedisError as exc:
        log.warning("callback spool unreachable (%s): answering 503", exc)
        return False
    _wake_drainer()
    return True


def _plausible(form: dict[str, str], signature: str) -> bool:
    return bool(_ACCOUNT_SID.match(form.get("AccountSid", ""))) and bool(
        _SIGNATURE.match(signature)
    )


def waiting() -> int:
    """Entries in the spool (for operators, /metrics and tests); 0 without Redis."""
    client = get_redis()
    try:
        return int(client.xlen(spool_key())) if client is not None else 0
    except redis.RedisError:
        return 0


# ---------------------------------------------------------------- the drain


def drain_all(limit: int = BATCH) -> int:
    """Store spooled callbacks until none is left to take; how many were stored or
    dropped. Raises what the database raises while it is unreachable (the entries wait)."""
    total = 0
    while True:
        taken = drain(limit)
        total += taken
        if taken < limit:
            return total


def drain(limit: int = BATCH) -> int:
    """One batch: this consumer's unacknowledged entries first, then those another
    drainer left for CLAIM_IDLE_MS, then new ones; stored, committed, acknowledged."""
    client = get_redis()
    if client is None:
        return 0
    stream = spool_key()
    if not client.xlen(stream):  # the usual case: one round trip
        return 0
    _ensure_group(client, stream)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    entries = _entries(client.xreadgroup(GROUP, consumer, {stream: "0"}, count=limit))
    if not entries:
        claimed = client.xautoclaim(stream, GROUP, consumer, CLAIM_IDLE_MS, "0-0", count=limit)
        entries = [(i, f) for i, f in claimed[1] if f]
    if not entries:
        entries = _entries(client.xreadgroup(GROUP, consumer, {stream: ">"}, count=limit))
    if not entries:
        return 0
    dead = _store(entries)
    for entry_id, fields, error in dead:
        log.error("spooled callback %s kept aside: %s", entry_id, error)
        client.xadd(dead_key(), {**fields, b"error": error[:2000]})
    ids = [entry_id for entry_id, _ in entries]
    client.xack(stream, GROUP, *ids)
    client.xdel(stream, *ids)
    return len(entries)


def _ensure_group(client: redis.Redis, stream: str) -> None:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XREADGROUP's entries (an acknowledged-but-listed entry has no fields: skipped)."""
    return [(i, f) for _, items in reply or [] for i, f in items if f]


def _store(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[tuple[bytes, Any, str]]:
    """Store the entries in one transaction: status callbacks by one INSERT, an inbound
    message in a savepoint of its own; returns the entries that failed for a reason other
    than the database (with the reason), which are not stored."""
    from services.callbacks import applier

    dead: list[tuple[bytes, Any, str]] = []
    rows: list[tuple[bytes, Any, dict[str, Any]]] = []
    session = new_session()
    try:
        for entry_id, fields in entries:
            try:
                row = _checked(session, fields)
            except Exception as exc:
                if database_unavailable(exc):
                    raise
                dead.append((entry_id, fields, f"{type(exc).__name__}: {exc}"))
                continue
            if row is not None:
                rows.append((entry_id, fields, row))
        try:
            with session.begin_nested():
                _insert(session, [row for _, _, row in rows])
        except Exception as exc:
            if database_unavailable(exc):
                raise
            for entry_id, fields, row in rows:  # one by one: a row's fault stays its own
                try:
                    with session.begin_nested():
                        _insert(session, [row])
                except Exception as one:
                    if database_unavailable(one):
                        raise
                    dead.append((entry_id, fields, f"{type(one).__name__}: {one}"))
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()
    _up()  # the database answers: callbacks try it again
    if rows:
        applier.ring()
    return dead


def _checked(session: Session, fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    """One entry with its signature checked against the database: a status callback's
    inbox row, or None (an inbound message, stored here in a savepoint; or dropped)."""
    from services.callbacks.twilio import handle_twilio_inbound, twilio_status_row

    entry = {k.decode(): v.decode() for k, v in fields.items()}
    form = json.loads(entry["form"])
    try:
        accounts = verify_twilio(session, entry["url"], form, entry["signature"])
    except Forbidden:
        log.warning("spooled %s callback not signed by any account: dropped", entry["kind"])
        return None
    if entry["kind"] == INBOUND:
        with session.begin_nested():
            handle_twilio_inbound(session, accounts, form)
        return None
    try:
        row = twilio_status_row(accounts, form, entry["ref"] or None)
    except InvalidRequest as exc:
        log.warning("spooled status callback dropped: %s", exc)
        return None
    return {**row, "received_at": datetime.fromisoformat(entry["at"])}


def _insert(session: Session, rows: list[dict[str, Any]]) -> None:
    """Inbox rows with the time each was received (a key already waiting: nothing)."""
    if rows:
        now = utcnow()
        session.execute(
            insert(WebhookInbox.__table__)
            .values([{**row, "next_attempt_at": now} for row in rows])
            .on_conflict_do_nothing(index_elements=["dedup_key"])
        )


# ---------------------------------------------------------------- the process's drainer

_wake = threading.Event()
_thread: threading.Thread | None = None
_thread_pid = 0
_thread_lock = threading.Lock()


def _wake_drainer() -> None:
    """Have this process drain the spool as soon as the database answers again."""
    global _thread, _thread_pid
    if _thread is None or _thread_pid != os.getpid() or not _thread.is_alive():
        with _thread_lock:
            if _thread is None or _thread_pid != os.getpid() or not _thread.is_alive():
                _thread = threading.Thread(target=_run, name="herald-spool", daemon=True)
                _thread_pid = os.getpid()
                _thread.start()
    _wake.set()


def _run() -> None:
    while True:
        _wake.wait()
        _wake.clear()  # a callback spooled from now on runs the loop again
        while True:
            time.sleep(DRAIN_RETRY_SECONDS)
            try:
                drain_all()
                if not waiting():
                    break
            except Exception as exc:
                log.debug("callback spool drain: %s; trying again", exc)
