"""Prometheus gauges read at scrape time from the database and the broker.

Counters kept inside each process would need prometheus_client's multiprocess
mode across gunicorn and every Celery worker, and would restart at zero with
them. The database already holds the truth, so a scrape asks it: messages per
status, how long the oldest queued message has waited (the sign of a lost
doorbell or too few workers), events owed to tenants, and the tasks waiting in
each Redis queue. Each is one indexed query, a read of the rollups kept as statuses
change, or one LLEN: a scrape costs the same at any table size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import func, select

from core.config import get_settings
from models import EventDelivery, Message, session_scope, utcnow
from services.callbacks.inbound import count_unrouted
from services.callbacks.meta import count_webhook_errors
from services.callbacks.spool import spool_key
from services.policy.limits import get_redis
from services.reporting.rollups import status_totals

log = logging.getLogger(__name__)


class HeraldCollector(Collector):
    """Herald's own gauges; a source that is down is left out of the scrape, not fatal.
    Tenant identifiers (account SIDs, sender numbers) appear in labels only when a
    token guards /metrics (`identify`): an open scrape would otherwise list them."""

    def __init__(self, identify: bool | None = None) -> None:
        self._identify = identify

    @property
    def identify(self) -> bool:
        if self._identify is not None:
            return self._identify
        return bool(get_settings().metrics_token)

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._database()
        except Exception:
            log.warning("metrics: the database did not answer", exc_info=True)
        try:
            yield from self._queues()
            yield self._holds()
        except Exception:
            log.warning("metrics: Redis did not answer", exc_info=True)

    def _holds(self) -> Metric:
        from services.policy.breaker import open_holds

        if self.identify:
            held = GaugeMetricFamily(
                "herald_sender_hold_seconds",
                "Senders held by an account-wide provider signal, and the seconds left.",
                labels=["provider", "account", "sender", "reason"],
            )
            for hold in open_holds():
                labels = [hold["provider"], hold["account"], hold["sender"], hold["reason"]]
                held.add_metric(labels, round(hold["seconds"], 1))
            return held
        # No token guards the scrape: no account SID or sender number in a label, only
        # the longest hold left per provider and reason.
        longest: dict[tuple[str, str], float] = {}
        for hold in open_holds():
            name = (hold["provider"], hold["reason"])
            longest[name] = max(longest.get(name, 0.0), hold["seconds"])
        held = GaugeMetricFamily(
            "herald_sender_hold_seconds",
            "The longest sender hold left per provider and reason (set HERALD_METRICS_TOKEN "
            "for each account and sender).",
            labels=["provider", "reason"],
        )
        for (provider, reason), seconds in sorted(longest.items()):
            held.add_metric([provider, reason], round(seconds, 1))
        return held

    def _database(self) -> Iterator[Metric]:
        with session_scope() as session:
            # Kept by the rollup as statuses change (services/reporting/rollups.py).
            counts = list(status_totals(session).items())
            # The partial index of queued rows by age: as small as what is queued.
            oldest = session.scalar(
                select(func.min(Message.updated_at)).where(Message.status == "queued")
            )
            owed = session.scalar(
                select(func.count())
                .select_from(EventDelivery)
                .where(EventDelivery.status == "pending")
            )
            unrouted = count_unrouted(session)
            webhook_errors = count_webhook_errors(session)
        messages = GaugeMetricFamily(
            "herald_messages",
            "Messages by status (all tenants); test: sent with a test key, simulated.",
            labels=["status", "test"],
        )
        for (status, test), count in sorted(counts):
            messages.add_metric([status, "true" if test else "false"], count)
        yield messages
        waited = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "herald_queued_wait_seconds",
            "How long the longest-waiting queued message has waited since it was last enqueued.",
            value=max(0.0, waited),
        )
        yield GaugeMetricFamily(
            "herald_events_pending", "Status events owed to tenants' callback URLs.", value=owed
        )
        yield GaugeMetricFamily(
            "herald_inbound_unrouted",
            "Inbound messages kept for no tenant (no tenant, or several, claim the number).",
            value=unrouted,
        )
        yield GaugeMetricFamily(
            "herald_provider_webhook_errors",
            "Errors providers reported by webhook outside any message status "
            "(Meta `value.errors`, inbound `messages[].errors`).",
            value=webhook_errors,
        )

    def _queues(self) -> Iterator[Metric]:
        from celeryconfig import task_queues  # the queues the workers consume

        redis = get_redis()
        if redis is None:
            return
        names = [queue.name for queue in task_queues]
        prefix = get_settings().queue_prefix or ""
        depth = GaugeMetricFamily(
            "herald_queue_depth", "Tasks waiting in each Celery queue.", labels=["queue"]
        )
        with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.llen(prefix + name)
            pipe.xlen(spool_key())
            *lengths, spooled = pipe.execute()
        for name, length in zip(names, lengths, strict=True):
            depth.add_metric([name], length)
        yield depth
        yield GaugeMetricFamily(
            "herald_callbacks_spooled",
            "Twilio callbacks kept in Redis while the database was unreachable, not yet stored.",
            value=spooled,
        )


_registered = False


def register() -> None:
    """Add Herald's collector to the default registry once per process."""
    global _registered
    if not _registered:
        REGISTRY.register(HeraldCollector())
        _registered = True
