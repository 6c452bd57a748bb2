"""Limits shared by every API process and worker, kept in Redis.

* Tenant quotas: messages accepted per hour and per day (fixed windows), checked
  before a message is queued; over it is `429` with `Retry-After`. A campaign's
  messages count against the day's (`take_daily_quota`) as they are released.
* Reads: a tenant's expensive reads (message lists, usage, campaign progress, the
  console's pages) per second, a token bucket; over it is `429` with `Retry-After`.
* Sender budgets: messages per second per provider sender (slots reserved for a
  batch, GCRA), and WhatsApp pair pacing (one message per few seconds to the same
  user), taken by workers before a batch is claimed.

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

from core.config import get_settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_client: redis.Redis | None = None

# KEYS: hour key, day key. ARGV: hour limit, day limit (0 = unlimited), hour ttl, day ttl,
# n. Grants what is left of n under both limits and counts it; keys expire once, after
# their window. Returns {granted, full}: full is 0 (none), 1 (the hour) or 2 (the day).
_QUOTA = """
local n = tonumber(ARGV[5])
local h = tonumber(redis.call('GET', KEYS[1]) or '0')
local d = tonumber(redis.call('GET', KEYS[2]) or '0')
local full = 0
if tonumber(ARGV[1]) > 0 and h + n > tonumber(ARGV[1]) then
  n = math.max(0, tonumber(ARGV[1]) - h); full = 1
end
if tonumber(ARGV[2]) > 0 and d + n > tonumber(ARGV[2]) then
  n = math.max(0, tonumber(ARGV[2]) - d); full = 2
end
if n > 0 then
  if redis.call('INCRBY', KEYS[1], n) == n then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
  if redis.call('INCRBY', KEYS[2], n) == n then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
end
return {n, full}
"""

# A campaign's share of the day. KEYS: day key. ARGV: day limit, day ttl, n. Grants what
# is left of n under the day's limit and counts it on the day alone: a campaign, paced by
# its own rate, leaves the hour's quota to the API's messages. Returns the count granted.
_DAY_QUOTA = """
local n = math.max(0, math.min(tonumber(ARGV[3]),
  tonumber(ARGV[1]) - tonumber(redis.call('GET', KEYS[1]) or '0')))
if n > 0 and redis.call('INCRBY', KEYS[1], n) == n then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return n
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

# A tenant's read bucket (GCRA). KEYS: the bucket's theoretical arrival time (ms). ARGV:
# ms per token, burst tolerance ms, now ms. Returns 0 (a token taken) or the ms to wait.
_READ = """
local t = tonumber(ARGV[1]); local tolerance = tonumber(ARGV[2]); local now = tonumber(ARGV[3])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
if tat - now > tolerance then return math.ceil(tat - now - tolerance) end
tat = tat + t
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
return 0
"""
# A tenant may spend this many seconds' worth of reads at once.
READ_BURST_SECONDS = 5

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
    """Use this client (tests inject the embedded Redis when no REDIS_URL is configured)."""
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


def take_quota(tenant_id: str, hourly: int, daily: int, n: int = 1) -> tuple[int, int | None]:
    """Count up to `n` messages against the tenant's quotas (0 = unlimited): how many
    were granted, and the seconds until the full window ends for the rest (None: all
    granted). Redis unreachable lets them all through."""
    if n <= 0 or (hourly <= 0 and daily <= 0):
        return n, None
    now = datetime.now(UTC)
    hour = key("quota", tenant_id, now.strftime("%Y%m%d%H"))
    day = _day_key(tenant_id, now)
    answer = _run(_QUOTA, [hour, day], [hourly, daily, 3700, 90000, n])
    if not isinstance(answer, list):
        return n, None
    granted, full = int(answer[0]), int(answer[1])
    if not full:
        return granted, None
    # Seconds until the full window (this UTC hour, or this UTC day) ends.
    seconds_in = now.minute * 60 + now.second
    if full == 1:
        return granted, max(1, 3600 - seconds_in)
    return granted, max(1, 86400 - (now.hour * 3600 + seconds_in))


def take_read(tenant_id: str, per_second: float) -> float | None:
    """Take one of the tenant's read tokens: None when taken, else the seconds until one
    is free. The bucket holds READ_BURST_SECONDS' worth; 0 = no limit; Redis unreachable
    lets the read through (a read changes nothing)."""
    if per_second <= 0:
        return None
    spacing = 1000.0 / per_second
    tolerance = spacing * (max(1, round(per_second * READ_BURST_SECONDS)) - 1)
    now_ms = int(time.time() * 1000)
    wait = _run(_READ, [key("reads", tenant_id)], [spacing, tolerance, now_ms])
    return int(wait) / 1000 if isinstance(wait, int) and wait > 0 else None


def _day_key(tenant_id: str, now: datetime) -> str:
    """The counter of the tenant's messages on `now`'s UTC day (API and campaigns)."""
    return key("quota", tenant_id, now.strftime("%Y%m%d"))


def seconds_to_day_end(now: datetime | None = None) -> int:
    """Seconds until the daily quota's window (the UTC day) ends."""
    now = now or datetime.now(UTC)
    return max(1, 86400 - (now.hour * 3600 + now.minute * 60 + now.second))


def take_daily_quota(tenant_id: str, daily: int, n: int) -> int:
    """Count up to `n` campaign messages against the tenant's daily quota (0 =
    unlimited), the one the API's messages count against too; how many were granted.
    The hourly quota is left alone: a campaign's `rate` paces it. Redis unreachable
    lets them all through, as for the API."""
    if n <= 0 or daily <= 0:
        return max(0, n)
    answer = _run(_DAY_QUOTA, [_day_key(tenant_id, datetime.now(UTC))], [daily, 90000, n])
    return n if answer is None else int(answer)  # type: ignore[call-overload]


def take_international(tenant_id: str, daily: int, n: int) -> int:
    """Count up to `n` international SMS against the tenant's own daily cap (0 =
    unlimited; services/policy/destinations.py): how many were granted. Redis
    unreachable lets them through, as for the other quotas."""
    if n <= 0 or daily <= 0:
        return max(0, n)
    day = key("intl", tenant_id, datetime.now(UTC).strftime("%Y%m%d"))
    answer = _run(_DAY_QUOTA, [day], [daily, 90000, n])
    return n if answer is None else int(answer)  # type: ignore[call-overload]


def daily_quota_left(tenant_id: str, daily: int) -> int | None:
    """What is left of the tenant's daily quota today; None when it is unlimited or
    Redis does not answer (then nothing is refused)."""
    client = get_redis()
    if daily <= 0 or client is None:
        return None
    try:
        used = client.get(_day_key(tenant_id, datetime.now(UTC)))
    except redis.RedisError as exc:
        log.warning("limits unavailable, not checking the quota: %s", type(exc).__name__)
        return None
    return max(0, daily - int(used or 0))


def _spacing(per_second: float) -> tuple[float, float]:
    """(ms between slots, burst ms) of a sender's budget: a one-second burst."""
    spacing = 1000.0 / per_second
    return spacing, max(0.0, 1000.0 - spacing)


def reserve_send_slots(provider: str, sender: str, per_second: float, count: int) -> list[float]:
    """Seconds from now at which each of `count` sends on this sender may go (0.0: now).

    Every slot returned is taken: a message parked until its slot needs no second look
    at the budget when it is released (a one-second burst)."""
    if per_second <= 0 or count <= 0:
        return [0.0] * count
    spacing, burst = _spacing(per_second)
    now_ms = int(time.time() * 1000)
    waits = _run(_RESERVE, [key("slots", provider, sender)], [spacing, burst, now_ms, count])
    if not isinstance(waits, list):
        return [0.0] * count  # Redis away: let them through
    return [int(w) / 1000 for w in waits]


def budget_tokens(provider: str, sender: str, per_second: float) -> float | None:
    """Sends this sender's budget allows right now (at most `per_second`, a one-second
    burst; below 1, its next messages wait), read from the slots `reserve_send_slots`
    takes (a sender with no slot taken has all of it); None when Redis does not answer."""
    client = get_redis()
    if client is None or per_second <= 0:
        return None
    try:
        raw = client.get(key("slots", provider, sender))
    except redis.RedisError:
        return None
    spacing, burst = _spacing(per_second)
    next_free = float(raw) if raw is not None else 0.0
    free = (time.time() * 1000 - next_free + burst + spacing) / spacing
    return max(0.0, min(max(1.0, per_second), free))


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
