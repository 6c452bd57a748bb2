"""A per-sender circuit breaker for account-wide provider signals.

Some answers are about the sender, not the message: Twilio 20003 (credentials) and
21611 (the sender's queue is full); Meta 190 (token expired), 131048 (spam rate
limit), 368 (policy block), 130429/80007 (throughput). Failing or retrying every
queued message one by one against them fails good messages or hammers the
provider. Instead the sender is held: the message that met the signal goes back to
`queued` (its attempt not counted), and every other message of that sender waits at
the send gate, unclaimed, for the hinted time, or until the account's credentials
change for a credentials signal. Holds live in Redis (shared by every worker),
expire by themselves, show in `/metrics`, and each held message gets an event.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from models import Message, MessageEvent, ProviderAccount, session_scope, utcnow
from providers import ProviderError
from services.policy.limits import get_redis, key
from services.tenancy.senders import sender_for

log = logging.getLogger(__name__)

# provider -> code -> (reason, default seconds, scope). "account" holds every sender of
# the account (credentials); "sender" holds the one number. Credential holds also end
# as soon as the credentials change; the time bounds them so a probe goes out again.
SIGNALS: dict[str, dict[str, tuple[str, float, str]]] = {
    "twilio": {
        "20003": ("credentials", 3600.0, "account"),
        "21611": ("sender_queue_full", 60.0, "sender"),
    },
    "meta": {
        "190": ("credentials", 3600.0, "account"),
        "131048": ("spam_rate_limit", 900.0, "sender"),
        "368": ("policy_block", 900.0, "sender"),
        "130429": ("throughput", 10.0, "sender"),
        "80007": ("throughput", 60.0, "sender"),
    },
}


@dataclass(frozen=True)
class Hold:
    reason: str
    code: str
    seconds: float  # left to wait
    key: str = ""


def fingerprint(secrets_enc: str | None) -> str:
    """Changes whenever the account's stored credentials are written again."""
    return hashlib.sha256((secrets_enc or "").encode()).hexdigest()[:16]


def sender_of(provider: str, channel: str, external_id: str, settings: dict[str, Any]) -> str:
    """The sending identity a hold applies to (as the send budget counts it)."""
    if provider == "meta":
        return external_id
    key = "whatsapp_from" if channel == "whatsapp" else "sms_from"
    return settings.get(key) or settings.get("messaging_service_sid") or ""


def _keys(provider: str, external_id: str, sender: str) -> tuple[str, str]:
    return key("hold", provider, external_id), key("hold", provider, external_id, sender)


def holds_for(rows: list[Any]) -> dict[str, Hold]:
    """The hold on each row's sender, by message id, in one Redis round trip. A row has
    id, provider, channel, external_id, settings and secrets_enc. Empty when Redis is
    away: the breaker never stops a send on its own failure."""
    redis = get_redis()
    if redis is None or not rows:
        return {}
    names = []
    for row in rows:
        sender = sender_of(row.provider, row.channel, row.external_id, row.settings or {})
        sender = (sender_for(row) or (sender,))[0]  # senders: the row's own sender
        names.extend(_keys(row.provider, row.external_id, sender))
    try:
        values = redis.mget(names)
    except Exception:
        log.warning("breaker: Redis did not answer; not holding", exc_info=True)
        return {}
    now = time.time()
    found: dict[str, Hold] = {}
    for i, row in enumerate(rows):
        for name, raw in zip(names[2 * i : 2 * i + 2], values[2 * i : 2 * i + 2], strict=True):
            if not raw:
                continue
            data = json.loads(raw)
            if data.get("fingerprint") and data["fingerprint"] != fingerprint(row.secrets_enc):
                continue  # the credentials changed since: try again
            left = float(data["until"]) - now
            if left > 0:
                found[row.id] = Hold(data["reason"], data["code"], left, name)
                break
    return found


def trip(message: Message, exc: ProviderError) -> Hold | None:
    """Hold the sender if `exc` is an account-wide signal; returns the hold, else None."""
    signal = SIGNALS.get(message.provider, {}).get(str(exc.code or ""))
    redis = get_redis()
    if signal is None or redis is None:
        return None
    reason, default, scope = signal
    seconds = float(exc.retry_after) if exc.retry_after else default
    with session_scope() as session:
        account = session.get(ProviderAccount, message.provider_account_id)
        if account is None:
            return None
        external_id, settings, secrets_enc = (
            account.external_id,
            account.settings,
            account.secrets_enc,
        )
    sender = sender_of(message.provider, message.channel, external_id, settings or {})
    sender = (sender_for(message) or (sender,))[0]  # senders: the row's own sender
    name = _keys(message.provider, external_id, sender)[0 if scope == "account" else 1]
    data = {
        "reason": reason,
        "code": str(exc.code),
        "until": time.time() + seconds,
        "sender": sender if scope == "sender" else "*",
        "fingerprint": fingerprint(secrets_enc) if reason == "credentials" else None,
    }
    try:
        redis.set(name, json.dumps(data), px=int(seconds * 1000) + 1000)
    except Exception:
        log.warning("breaker: Redis did not answer; not holding", exc_info=True)
        return None
    log.warning(
        "sender held provider=%s account=%s reason=%s code=%s for=%.0fs",
        message.provider,
        external_id,
        reason,
        exc.code,
        seconds,
    )
    return Hold(reason, str(exc.code), seconds, name)


def requeue_tripped(message: Message, hold: Hold, exc: ProviderError) -> None:
    """The message that met the signal goes back to `queued`, its attempt not counted,
    parked until the hold ends (the beat's `release_due` rings for it then)."""
    now = utcnow()
    with session_scope() as session:
        session.execute(
            update(Message)
            .where(Message.id == message.id, Message.status == "sending")
            .values(
                status="queued",
                attempts=Message.attempts - 1,
                lease_until=None,
                updated_at=now,
                not_before=now + timedelta(seconds=hold.seconds),
                slot_reserved=False,
            )
            .execution_options(synchronize_session=False)
        )
        session.add(_event(message.id, hold, now, exc.message))


def note_held(message_ids: list[str], hold: Hold) -> None:
    """An event on each message the gate held, once per message and hold, so its
    history says why it waits without one entry per doorbell."""
    redis = get_redis()
    if not message_ids or redis is None:
        return
    try:
        with redis.pipeline(transaction=False) as pipe:
            for mid in message_ids:
                pipe.sadd(hold.key + ":noted", mid)
            pipe.pexpire(hold.key + ":noted", int(hold.seconds * 1000) + 1000)
            added = pipe.execute()[:-1]
    except Exception:
        log.warning("breaker: Redis did not answer", exc_info=True)
        return
    fresh = [mid for mid, new in zip(message_ids, added, strict=True) if new]
    if fresh:
        now = utcnow()
        with session_scope() as session:
            session.add_all(_event(mid, hold, now) for mid in fresh)


def _event(message_id: str, hold: Hold, at: Any, message: str | None = None) -> MessageEvent:
    detail: dict[str, Any] = {"held": hold.reason, "held_for": round(hold.seconds, 1)}
    if message:
        detail["message"] = message
    return MessageEvent(
        message_id=message_id,
        status="queued",
        source="breaker",
        applied=False,
        error_code=hold.code,
        detail=detail,
        at=at,
    )


def open_holds() -> list[dict[str, Any]]:
    """Every hold in force, for `/metrics`."""
    redis = get_redis()
    if redis is None:
        return []
    prefix = key("hold") + ":"
    found = []
    now = time.time()
    for name in redis.scan_iter(match=prefix + "*", count=500):
        name = name.decode() if isinstance(name, bytes) else name
        if name.endswith(":noted"):
            continue
        raw = redis.get(name)
        if not raw:
            continue
        data = json.loads(raw)
        left = float(data["until"]) - now
        if left > 0:
            provider, account = name[len(prefix) :].split(":")[:2]
            found.append(
                {
                    "provider": provider,
                    "account": account,
                    "sender": data.get("sender", "*"),
                    "reason": data["reason"],
                    "seconds": left,
                }
            )
    return found


def clear_holds() -> None:
    """Lift every hold (tests; an operator who fixed the account by other means)."""
    redis = get_redis()
    if redis is None:
        return
    for name in list(redis.scan_iter(match=key("hold") + ":*", count=500)):
        redis.delete(name)
