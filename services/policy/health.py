"""Provider failover: a sender's health over a window, and the choice among a tenant's
senders in priority order (`senders.priority`).

A tenant may rank its senders of a channel (a Meta phone number id first, a Twilio
WhatsApp number second; or two Twilio accounts). A message that names no sender goes
out from the first healthy one. A sender is unhealthy once the provider failed it
`HERALD_PROVIDER_FAILOVER_ERRORS` times (default 50) within
`HERALD_PROVIDER_FAILOVER_WINDOW_SECONDS` (default 60): GOV.UK Notify's rule for moving
SMS traffic between its providers. Errors are those about the provider, not the
message: transient ones (5xx, timeouts, connections refused) and ambiguous ones (an
answer lost). A recipient's error (an invalid number) or a rate limit (the breaker's,
services/policy/breaker.py) is not the provider being down.

An unhealthy sender is skipped for one window (open). Then it is half-open: the next
message that would have gone to it goes to it, alone (a probe, one per window); its
success closes the breaker and traffic comes back, its failure opens it for another
window. Messages already accepted keep the sender written in their row: failover moves
new messages only, never re-sends one. State is in Redis, shared by every process; with
Redis away nothing is skipped (the first sender in order takes the message).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from core.config import get_settings
from services.policy.limits import get_redis, key

log = logging.getLogger(__name__)

# The clock (tests advance it rather than sleep).
clock: Callable[[], float] = time.time


class Ranked(Protocol):
    provider: str
    address: str
    priority: int | None


def _names(provider: str, address: str) -> tuple[str, str, str]:
    return (
        key("health", "errors", provider, address),
        key("health", "open", provider, address),
        key("health", "probe", provider, address),
    )


def _window() -> float:
    return float(get_settings().provider_failover_window_seconds)


def first_healthy(ranked: Sequence[Any]) -> Any:
    """The first sender of `ranked` (in priority order) that may take a new message: a
    closed one, or a half-open one whose probe this call wins. None healthy: the first
    (its messages wait and retry there, as without failover)."""
    redis = get_redis()
    if redis is None or len(ranked) < 2:
        return ranked[0]
    try:
        opened = redis.mget([_names(s.provider, s.address)[1] for s in ranked])
        now = clock()
        for sender, until in zip(ranked, opened, strict=True):
            if until is None:
                return sender
            if float(until) > now:
                continue  # open: skipped for the rest of its window
            probe = _names(sender.provider, sender.address)[2]
            if redis.set(probe, "1", nx=True, px=int(_window() * 1000)):
                log.info("provider failover: probing %s %s", sender.provider, sender.address)
                return sender
    except Exception:
        log.warning("provider failover: Redis did not answer; first sender", exc_info=True)
    return ranked[0]


def note_error(provider: str, address: str) -> bool:
    """Count a provider error against the sender; whether it opened its breaker now."""
    redis = get_redis()
    if redis is None:
        return False
    errors, opened, probe = _names(provider, address)
    window = _window()
    now = clock()
    try:
        until = redis.get(opened)
        if until is not None and float(until) > now:
            return False  # already open
        if until is not None:  # half-open: its probe failed, open again
            _open(redis, opened, probe, errors, now, window)
            return True
        with redis.pipeline(transaction=False) as pipe:
            pipe.zadd(errors, {f"{now}:{uuid.uuid4().hex[:8]}": now})
            pipe.zremrangebyscore(errors, "-inf", now - window)
            pipe.zcard(errors)
            pipe.pexpire(errors, int(window * 1000) + 1000)
            count = pipe.execute()[2]
        if count >= get_settings().provider_failover_errors:
            _open(redis, opened, probe, errors, now, window)
            log.warning(
                "provider failover: %s %s failed %d times in %.0fs; new messages go to the next",
                provider,
                address,
                count,
                window,
            )
            return True
    except Exception:
        log.warning("provider failover: Redis did not answer", exc_info=True)
    return False


def _open(redis: Any, opened: str, probe: str, errors: str, now: float, window: float) -> None:
    # Kept past its window (half-open is "expired but present") for a day at most.
    redis.set(opened, str(now + window), px=int((window + 86400) * 1000))
    redis.delete(probe, errors)


def note_success(provider: str, address: str) -> None:
    """A send the provider accepted: a half-open (or open) sender is closed again."""
    redis = get_redis()
    if redis is None:
        return
    _, opened, probe = _names(provider, address)
    try:
        if redis.delete(opened, probe):
            log.info("provider failover: %s %s recovered", provider, address)
    except Exception:
        log.warning("provider failover: Redis did not answer", exc_info=True)


def ranked_sender(message: Any) -> tuple[str, str] | None:
    """(provider, address) when the message went out from a sender in a failover order:
    only those are counted (a message of any other sender costs no Redis call)."""
    sender = (getattr(message, "options", None) or {}).get("sender")
    if isinstance(sender, dict) and sender.get("priority") is not None and sender.get("address"):
        return str(message.provider), str(sender["address"])
    return None


def open_breakers() -> list[dict[str, Any]]:
    """Senders skipped now, for an operator's eyes (`/metrics` reads holds the same way)."""
    redis = get_redis()
    if redis is None:
        return []
    prefix = key("health", "open") + ":"
    found = []
    now = clock()
    for name in redis.scan_iter(match=prefix + "*", count=500):
        name = name.decode() if isinstance(name, bytes) else name
        until = redis.get(name)
        if until is None:
            continue
        provider, address = name[len(prefix) :].split(":", 1)
        found.append({"provider": provider, "address": address, "half_open": float(until) <= now})
    return found


def clear_health() -> None:
    """Forget every sender's health (tests)."""
    redis = get_redis()
    if redis is None:
        return
    for name in list(redis.scan_iter(match=key("health") + ":*", count=500)):
        redis.delete(name)


__all__ = ["Ranked", "clear_health", "first_healthy", "note_error", "note_success"]
