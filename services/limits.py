"""Limits shared by every API process and worker, kept in Redis.

* Tenant quotas: messages accepted per hour and per day (fixed windows), checked
  before a message is queued; over it is `429` with `Retry-After`.
* Sender budgets: messages per second per provider sender (token bucket), and
  WhatsApp pair pacing (one message per few seconds to the same user), taken by
  workers right before each send.

Each check is one Lua script, so concurrent processes cannot both take the last
unit. If Redis is unreachable the check lets the message through and logs it: a
Redis outage must not stop transactional messages, and the row, not Redis, is
what guarantees delivery.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import redis

from herald.config import get_settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_client: redis.Redis | None = None

# KEYS: hour key, day key. ARGV: hour limit, day limit, hour ttl, day ttl (0 = unlimited).
# Returns 0 (allowed), 1 (hour full) or 2 (day full). Keys expire once, after their window.
_QUOTA = """
local h = tonumber(redis.call('GET', KEYS[1]) or '0')
local d = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) > 0 and h >= tonumber(ARGV[1]) then return 1 end
if tonumber(ARGV[2]) > 0 and d >= tonumber(ARGV[2]) then return 2 end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
if redis.call('INCR', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
return 0
"""

# Token bucket. KEYS: bucket. ARGV: rate per second, capacity, now (ms). Returns wait ms.
_BUCKET = """
local rate = tonumber(ARGV[1]); local cap = tonumber(ARGV[2]); local now = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or cap; local at = tonumber(b[2]) or now
tokens = math.min(cap, tokens + (now - at) * rate / 1000)
if tokens >= 1 then
  redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'at', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate * 1000) + 1000)
  return 0
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
return math.ceil((1 - tokens) * 1000 / rate)
"""

# Slot reservation (GCRA), for a batch of sends on one sender. KEYS: the sender's next
# free slot (ms). ARGV: spacing ms (1000 / rate), burst ms, now ms, count. Returns, for
# each send in order, the ms from now at which its slot is: 0 = go now. Every slot
# returned is taken, so a parked message holds its place and is not counted twice.
_RESERVE = """
local t = tonumber(ARGV[1]); local burst = tonumber(ARGV[2]); local now = tonumber(ARGV[3])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local out = {}
for i = 1, tonumber(ARGV[4]) do
  local at = math.max(now, tat - burst)
  out[i] = math.ceil(at - now)
  tat = math.max(tat, at) + t
end
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now + burst) + 1000)
return out
"""

# Pair pacing. KEYS: pair key. ARGV: spacing ms. Returns wait ms (0 = go now).
_PAIR = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
return redis.call('PTTL', KEYS[1])
"""


def get_redis() -> redis.Redis | None:
    global _client
    with _lock:
        if _client is None and get_settings().redis_url:
            _client = redis.Redis.from_url(
                get_settings().redis_url, socket_timeout=1, socket_connect_timeout=1
            )
        return _client


def set_redis(client: redis.Redis | None) -> None:
    """Use this client (tests inject fakeredis when no REDIS_URL is configured)."""
    global _client
    with _lock:
        _client = client


def key(*parts: str) -> str:
    return get_settings().queue_prefix + "herald:" + ":".join(parts)


def _run(script: str, keys: list[str], args: list[object]) -> object | None:
    client = get_redis()
    if client is None:
        return None
    try:
        return client.eval(script, len(keys), *keys, *args)
    except redis.RedisError as exc:
        log.warning("limits unavailable, letting the message through: %s", type(exc).__name__)
        return None


def take_quota(tenant_id: str, hourly: int, daily: int) -> int | None:
    """Count one message against the tenant's quotas; None if allowed, else seconds to wait."""
    if hourly <= 0 and daily <= 0:
        return None
    now = datetime.now(UTC)
    hour = key("quota", tenant_id, now.strftime("%Y%m%d%H"))
    day = key("quota", tenant_id, now.strftime("%Y%m%d"))
    full = _run(_QUOTA, [hour, day], [hourly, daily, 3700, 90000])
    if not full:
        return None
    # Seconds until the full window (this UTC hour, or this UTC day) ends.
    seconds_in = now.minute * 60 + now.second
    if full == 1:
        return max(1, 3600 - seconds_in)
    return max(1, 86400 - (now.hour * 3600 + seconds_in))


def take_send_slot(
    provider: str, sender: str, to: str, per_second: float, pair_spacing: float
) -> float:
    """Seconds to wait before this send may go out (0.0: go now, the slot is taken)."""
    if pair_spacing > 0:
        wait = _run(_PAIR, [key("pair", provider, sender, to)], [int(pair_spacing * 1000)])
        if wait:
            return max(0.05, int(wait) / 1000)  # type: ignore[arg-type]
    if per_second > 0:
        now_ms = int(time.time() * 1000)
        capacity = max(1.0, per_second)  # a one-second burst at most
        wait = _run(_BUCKET, [key("bucket", provider, sender)], [per_second, capacity, now_ms])
        if wait:
            if pair_spacing > 0:  # give the pair slot back: this send did not happen
                client = get_redis()
                if client is not None:
                    client.delete(key("pair", provider, sender, to))
            return max(0.01, int(wait) / 1000)  # type: ignore[arg-type]
    return 0.0


def reserve_send_slots(provider: str, sender: str, per_second: float, count: int) -> list[float]:
    """Seconds from now at which each of `count` sends on this sender may go (0.0: now).

    Every slot returned is taken: a message parked until its slot needs no second look
    at the budget when it is released (a one-second burst, as in `take_send_slot`)."""
    if per_second <= 0 or count <= 0:
        return [0.0] * count
    spacing = 1000.0 / per_second
    burst = max(0.0, 1000.0 - spacing)  # capacity max(1, rate): a one-second burst
    now_ms = int(time.time() * 1000)
    waits = _run(_RESERVE, [key("slots", provider, sender)], [spacing, burst, now_ms, count])
    if not isinstance(waits, list):
        return [0.0] * count  # Redis away: let them through, as `take_send_slot` does
    return [int(w) / 1000 for w in waits]


def take_pair_slot(provider: str, sender: str, to: str, spacing: float) -> float:
    """WhatsApp pair pacing alone: seconds to wait (0.0: go, the pair slot is taken)."""
    if spacing <= 0:
        return 0.0
    wait = _run(_PAIR, [key("pair", provider, sender, to)], [int(spacing * 1000)])
    return max(0.05, int(wait) / 1000) if wait else 0.0  # type: ignore[arg-type]


def give_back_pair_slot(provider: str, sender: str, to: str) -> None:
    """The send did not happen now (its budget slot is later): free the pair slot."""
    client = get_redis()
    if client is None:
        return
    try:
        client.delete(key("pair", provider, sender, to))
    except redis.RedisError:
        log.warning("limits unavailable: pair slot not given back")
