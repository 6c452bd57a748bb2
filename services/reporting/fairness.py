"""Shares of the events pool: caps per tenant and per host, and a breaker per host.

The events worker has a fixed number of threads. Without these, one tenant's dead or
slow callback host would take all of them for as long as its deliveries hang, and
every other tenant's events would wait behind it.

* **Caps.** A delivery takes a slot from its tenant's and its host's counters before
  it connects (HERALD_EVENTS_PER_TENANT, HERALD_EVENTS_PER_HOST); none free, it is
  deferred a moment, not queued in a thread. A slot is a member of a Redis sorted set
  scored by its expiry (the delivery deadline plus a margin), so a worker killed mid
  delivery leaks nothing: its slots lapse by themselves.
* **Breaker.** After HERALD_EVENTS_BREAKER_FAILURES consecutive failures (timeouts,
  connection errors, non-2xx) to one host, its deliveries are deferred for
  HERALD_EVENTS_BREAKER_SECONDS without being attempted; then one probe goes, and its
  outcome closes the breaker or opens it again. Deferrals count no attempt.

Redis unreachable: everything is let through (the deadline still bounds each delivery),
as the send limits do.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from core.config import get_settings
from services.policy.limits import get_redis, key

log = logging.getLogger(__name__)

# Slots. KEYS: tenant set, host set. ARGV: lease ms, token, tenant limit, host limit.
# Returns 0 (taken), 1 (the tenant is at its cap) or 2 (the host is).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 2 end
local expires = now + tonumber(ARGV[1])
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], expires, ARGV[2])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
return 0
"""

# Breaker check. KEYS: open, failures, probe. ARGV: threshold, probe ms.
# Returns the ms to wait (0: go; when the breaker was open, this caller is the probe).
_CHECK = """
local open = redis.call('PTTL', KEYS[1])
if open > 0 then return open end
local failures = tonumber(redis.call('GET', KEYS[2]) or '0')
if failures < tonumber(ARGV[1]) then return 0 end
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[2]) then return 0 end
local probe = redis.call('PTTL', KEYS[3])
if probe < 1 then probe = 1 end
return probe
"""

# A failure. KEYS: open, failures, probe. ARGV: threshold, cool-down ms, memory ms.
# Returns 1 when the breaker is (now) open.
_FAILED = """
local failures = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[3])
if failures >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
  return 1
end
return 0
"""

FAILURE_MEMORY_SECONDS = 3600  # consecutive failures further apart than this start over
SLOT_MARGIN_SECONDS = 5  # a slot outlives its delivery's deadline by this much


def host_of(url: str) -> str:
    """The breaker's and the host cap's unit: scheme-less `host:port`, lower case."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    return f"{(parts.hostname or '').lower()}:{port}"


def _breaker_keys(host: str) -> list[str]:
    return [key("events", "breaker", k, host) for k in ("open", "failures", "probe")]


@dataclass
class Slot:
    """A delivery's place under the caps; release it when the delivery ends."""

    tenant_key: str = ""
    host_key: str = ""
    token: str = ""

    def release(self) -> None:
        client = get_redis()
        if client is None or not self.token:
            return
        try:
            pipe = client.pipeline(transaction=False)
            pipe.zrem(self.tenant_key, self.token)
            pipe.zrem(self.host_key, self.token)
            pipe.execute()
        except redis.RedisError:
            pass  # the slot lapses by itself


@dataclass(frozen=True)
class Admission:
    """May this delivery go now? `wait` seconds when not; `slot` to release when so."""

    wait: float | None
    reason: str = ""
    slot: Slot | None = None


def _defer_jitter() -> float:
    # Deferred deliveries come back spread out, not in one herd.
    return random.uniform(1.0, 3.0)


def admit(tenant_id: str, url: str) -> Admission:
    """The breaker of the URL's host, then a slot under the tenant's and the host's caps."""
    client = get_redis()
    if client is None:
        return Admission(wait=None, slot=Slot())
    settings = get_settings()
    host = host_of(url)
    deadline = settings.events_deadline_seconds
    try:
        wait_ms = int(
            client.eval(  # type: ignore[arg-type]
                _CHECK,
                3,
                *_breaker_keys(host),
                settings.events_breaker_failures,
                int((deadline + SLOT_MARGIN_SECONDS) * 1000),
            )
        )
        if wait_ms > 0:
            return Admission(wait=wait_ms / 1000 + random.uniform(0, 1), reason="breaker")
        slot = Slot(
            tenant_key=key("events", "slots", "tenant", tenant_id),
            host_key=key("events", "slots", "host", host),
            token=uuid.uuid4().hex,
        )
        full = int(
            client.eval(  # type: ignore[arg-type]
                _ACQUIRE,
                2,
                slot.tenant_key,
                slot.host_key,
                int((deadline + SLOT_MARGIN_SECONDS) * 1000),
                slot.token,
                settings.events_per_tenant,
                settings.events_per_host,
            )
        )
    except redis.RedisError as exc:
        log.warning("event caps unavailable, delivering anyway: %s", type(exc).__name__)
        return Admission(wait=None, slot=Slot())
    if full:
        return Admission(wait=_defer_jitter(), reason="tenant cap" if full == 1 else "host cap")
    return Admission(wait=None, slot=slot)


def record(url: str, ok: bool) -> None:
    """A delivery's outcome, for its host's breaker."""
    client = get_redis()
    if client is None:
        return
    settings = get_settings()
    host = host_of(url)
    try:
        if ok:
            client.delete(*_breaker_keys(host))
            return
        opened = client.eval(  # type: ignore[arg-type]
            _FAILED,
            3,
            *_breaker_keys(host),
            settings.events_breaker_failures,
            settings.events_breaker_seconds * 1000,
            FAILURE_MEMORY_SECONDS * 1000,
        )
    except redis.RedisError:
        return
    if opened:
        log.warning(
            "events to %s deferred for %ds: %d consecutive failures",
            host,
            settings.events_breaker_seconds,
            settings.events_breaker_failures,
        )


def breaker_wait(url: str) -> float:
    """Seconds the URL's host breaker stays open (0 when closed); for tests and tools."""
    client = get_redis()
    if client is None:
        return 0.0
    try:
        ms = client.pttl(_breaker_keys(host_of(url))[0])
    except redis.RedisError:
        return 0.0
    return max(0.0, ms / 1000) if isinstance(ms, int) else 0.0
