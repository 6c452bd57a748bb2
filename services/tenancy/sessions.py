"""Console sign-in sessions, held in Redis so that the server can end them.

A signed cookie alone cannot be taken back: a copy made before sign-out would work
until it expired. So the console's cookie carries only a random session id, and the
session itself (the API key's id, when it signed in, when it was last used) is a Redis
record under a hash of that id. Sign-out deletes the record; a session also ends after
IDLE without a request and LIFETIME after sign-in, whatever the activity. The record's
TTL only reclaims the memory: the times are checked here, against the wall clock.
Redis unreachable means no session can be checked, so none is accepted (Unavailable).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import time

import redis

from core.errors import Unavailable
from services.policy.limits import get_redis, key

log = logging.getLogger(__name__)

IDLE_SECONDS = 2 * 3600  # no request for this long ends a session
LIFETIME_SECONDS = 12 * 3600  # from sign-in, whatever the activity
TOUCH_SECONDS = 60  # `seen` is rewritten at most this often (htmx polls every few seconds)


def _name(session_id: str) -> str:
    # Hashed: whoever can read Redis learns no cookie's id.
    return key("console-session", hashlib.sha256(session_id.encode()).hexdigest())


def _client() -> redis.Redis:
    client = get_redis()
    if client is None:
        raise Unavailable("Console sessions need Redis (REDIS_URL), which is not configured.")
    return client


def _unavailable() -> Unavailable:
    log.warning("console sessions: Redis did not answer")
    return Unavailable("Console sessions are unavailable: Redis did not answer. Try again.")


def _ttl(started: float, now: float) -> int:
    """Seconds the record must outlive `now`: to its idle end or its absolute end."""
    return max(1, math.ceil(min(IDLE_SECONDS, started + LIFETIME_SECONDS - now)))


def start_session(key_id: str) -> str:
    """A new session for API key `key_id`; its id, for the signed cookie."""
    session_id = secrets.token_urlsafe(32)
    now = time.time()
    record = json.dumps({"key_id": key_id, "started": now, "seen": now})
    try:
        _client().set(_name(session_id), record, ex=_ttl(now, now))
    except redis.RedisError:
        raise _unavailable() from None
    return session_id


def session_key_id(session_id: object) -> str | None:
    """The API key id of a live session, or None (unknown, signed out, idle or too old).
    A live session's last use is moved to now."""
    if not isinstance(session_id, str) or not session_id:
        return None
    name = _name(session_id)
    now = time.time()
    try:
        client = _client()
        raw = client.get(name)
        if raw is None:
            return None
        record = json.loads(raw)
        started, seen = float(record["started"]), float(record["seen"])
        if now - started >= LIFETIME_SECONDS or now - seen >= IDLE_SECONDS:
            client.delete(name)
            return None
        if now - seen >= TOUCH_SECONDS:
            record["seen"] = now
            client.set(name, json.dumps(record), ex=_ttl(started, now))
    except redis.RedisError:
        raise _unavailable() from None
    except (ValueError, KeyError, TypeError):
        return None  # not a record this module wrote
    key_id = record.get("key_id")
    return key_id if isinstance(key_id, str) else None


def end_session(session_id: object) -> None:
    """Sign-out: the session is gone for every copy of its cookie."""
    if not isinstance(session_id, str) or not session_id:
        return
    try:
        _client().delete(_name(session_id))
    except redis.RedisError:
        raise _unavailable() from None
