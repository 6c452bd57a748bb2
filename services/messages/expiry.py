"""A message's time to live (`ttl`): late is worse than never for a login code.

`ttl` (seconds) counts from when the message is due: its `send_at`, else its
acceptance. It is stored as `messages.expires_at`. While the message waits in Herald
(scheduled, queued, throttled, held by the breaker, held for a retry) and the time
passes, it ends `failed` with error code `expired` instead of being sent late:

* at claim (`expired_refusal`, called by services/messages/claim.py `claim_many`), so no
  worker sends it, whichever path brought it there;
* by the beat sweep `herald.expire` (`expire_waiting`), one set-based UPDATE over the
  waiting rows nobody is going to claim soon (a scheduled row, a queued row whose
  doorbell is lost or parked behind a long hold).

A message the provider already has is not Herald's to expire: Twilio gets the
remaining time as `ValidityPeriod` (providers/twilio.py `validity_period`, capped at
Twilio's 36,000 s) and reports error 30036 when it passes, which Herald names `expired`
too. Meta's
Cloud API has no per-message expiry (a template's message validity period is set in
WhatsApp Manager), so a Meta message is only expired while it waits in Herald.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from models import Message, MessageEvent, session_scope, utcnow
from models.fast import Statement, naive_utc
from services.reporting.events import listening, record_status_event

log = logging.getLogger(__name__)

EXPIRED = "expired"
# Herald holds a message at most this long: two weeks is past any use of a deadline.
MAX_TTL = 14 * 24 * 3600
# The states in which a message is Herald's alone to expire.
WAITING = ("scheduled", "queued")
SWEEP_LIMIT = 1000
_WHY = "the message's ttl passed before it could be sent"
# Earlier attempts that certainly never reached the provider (services/messages/record.py).
_NOT_TAKEN = frozenset({"transient", "rate_limited"})


def expires_at_for(data: dict[str, Any], now: datetime) -> datetime | None:
    """The expiry of an accepted request: `ttl` seconds after it is due, or None."""
    ttl = data.get("ttl")
    if ttl is None:
        return None
    due = data.get("send_at") or now
    try:
        return max(due, now) + timedelta(seconds=int(ttl))
    except OverflowError:  # due near the year 9999: it will not wait for its ttl
        return None


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and expires_at <= now


def expired_refusal(message: Message, now: datetime) -> tuple[str, str] | None:
    """(`expired`, why) when the claimed row's ttl has passed and no earlier attempt
    may have reached the provider; None otherwise. An earlier attempt whose outcome is
    unknown is left to the usual path (a callback or the provider's listing settles it):
    failing it here could contradict a delivery the provider makes."""
    if not is_expired(message.expires_at, now) or message.provider_message_id:
        return None
    if message.attempts > 1 and not _never_taken(message.id, message.attempts):
        return None
    return EXPIRED, _WHY


def _never_taken(message_id: str, attempts: int) -> bool:
    """Whether every earlier attempt of this message was refused before the provider
    took it (rare: only an expired row tried before is asked)."""
    with session_scope() as session:
        details = session.scalars(
            select(MessageEvent.detail).where(
                MessageEvent.message_id == message_id,
                MessageEvent.status == "sending",
                MessageEvent.source == "worker",
                MessageEvent.applied.is_(False),
            )
        ).all()
    refused = sum(1 for d in details if isinstance(d, dict) and d.get("kind") in _NOT_TAKEN)
    return refused >= attempts - 1


# The waiting rows to fail, chosen once: a MATERIALIZED CTE is computed a single time
# whatever the statistics say. As an `id IN (subquery ... LIMIT ... FOR UPDATE SKIP
# LOCKED)` the planner could re-run the subquery once per waiting row when statistics
# said little was waiting (quadratic: 8,000 waiting rows took 6 s, and the LIMIT did
# not bound the rows failed). Its conditions match `ix_messages_expires_waiting`, which
# holds only rows still waiting with a ttl.
_SWEEP = Statement(
    f"""
WITH due AS MATERIALIZED (
    SELECT id FROM messages
    WHERE expires_at <= :now AND status IN {WAITING!r} AND direction = 'outbound'
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE messages AS m
SET status = 'failed', error_code = :code, error_message = :why,
    provider_error_code = NULL, lease_until = NULL, updated_at = :now
FROM due
WHERE m.id = due.id AND m.status IN {WAITING!r}
RETURNING m.id
"""
)


def sweep_statement(now: datetime, limit: int) -> tuple[str, dict[str, Any]]:
    """The sweep's UPDATE and its (psycopg) parameters: one statement, planned once."""
    return _SWEEP.sql, {"now": naive_utc(now), "limit": limit, "code": EXPIRED, "why": _WHY}


def expire_waiting(now: datetime | None = None, limit: int = SWEEP_LIMIT) -> list[str]:
    """Fail every waiting message whose ttl has passed (at most `limit` per call), in one
    UPDATE ... RETURNING, with each one's history event and the tenant's status event."""
    now = now or utcnow()
    with session_scope() as session:
        ids = _SWEEP.scalars(session, sweep_statement(now, limit)[1])
        if not ids:
            return []
        session.execute(
            insert(MessageEvent),
            [
                {
                    "message_id": i,
                    "status": "failed",
                    "source": "expiry",
                    "applied": True,
                    "error_code": EXPIRED,
                    "at": now,
                }
                for i in ids
            ],
        )
        for message_id in listening(session, ids):
            record_status_event(session, message_id)
    log.info("expired %d waiting message(s)", len(ids))
    return ids
