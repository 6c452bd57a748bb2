"""Celery settings, each chosen on purpose. Read by `workers.celery_app`.

Herald's correctness does not rest on the broker: the database row is the truth
and every task is idempotent (see services/messages/delivery.py). These settings make the
broker as reliable as it can be on top of that.
"""

from __future__ import annotations

import os
from typing import Any

from kombu import Exchange, Queue

from core.config import get_settings

_settings = get_settings()
_redis = _settings.redis_url or "redis://127.0.0.1:6379/0"

broker_url = _redis
# Results only matter for herald.send_message, whose callers may wait on them.
result_backend = _redis
result_expires = 24 * 3600
task_ignore_result = True

# Ack after the task ran, and requeue it if the worker process dies mid-task: a
# task is never dropped because the process that held it vanished. Safe because
# a redelivered delivery task finds its row already claimed and does nothing.
task_acks_late = True
task_reject_on_worker_lost = True

# Redis has no real acks: a fetched, unacked task comes back only after the
# visibility timeout. It must exceed the longest countdown Herald schedules
# (backoff is capped at 15 minutes) or retries would be duplicated; the sweeper,
# not this timeout, is what recovers lost tasks quickly.
broker_transport_options: dict = {
    "visibility_timeout": 3600,
    # kombu scans for unacked tasks past the visibility timeout every interval x
    # throttle seconds (10 x 10 = ~100 s by default). One scan every 10 s costs
    # little; with a one-hour timeout it only matters for tasks a dead worker
    # held an hour ago, since the sweeper has long since re-enqueued their rows.
    "unacked_restore_interval": 10,
    "unacked_restore_throttle": 1,
    # Notice a Redis that went away without closing the socket (restart, failover),
    # and never let a publish from the API hang on one: a Redis that does not accept a
    # TCP connection within 0.3 s (a handshake takes well under a millisecond on a
    # LAN) is down for the API's purposes, and workers keep reconnecting anyway.
    "health_check_interval": 10,
    "socket_timeout": 2,
    "socket_connect_timeout": 0.3,
}
result_backend_transport_options: dict = {}
if _settings.queue_prefix:
    # Shared Redis (CI, staging next to prod): keep each deployment's keys apart.
    broker_transport_options["global_keyprefix"] = _settings.queue_prefix
    result_backend_transport_options["global_keyprefix"] = _settings.queue_prefix
broker_connection_retry_on_startup = True

# With a threads pool, a prefetch multiplier of 1 holds at most one spare task
# per thread, so a killed worker strands few tasks and none wait behind a slow send.
worker_prefetch_multiplier = 1
# Publishing from the API must not hang on a dead broker: the row is committed
# and the sweeper re-enqueues it. One immediate retry survives a pooled connection
# that a Redis restart closed; with the connect timeout above, a publish to an
# unreachable Redis gives up within 2 x 0.3 s (refused connections: milliseconds).
# Doorbells are published with ignore_result (services/messages/dispatch.py): subscribing to
# the result backend would retry for 20 s on a dead Redis.
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}

# Warm shutdown waits for running sends; Celery 5.5+'s soft shutdown gives them
# this long after a SIGTERM before cancelling (and requeueing) the rest.
worker_soft_shutdown_timeout = 10.0
worker_enable_soft_shutdown_on_idle = True
worker_cancel_long_running_tasks_on_connection_loss = True

task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# Queues named by workload: a 100,000-message campaign on herald.bulk never
# delays a one-off password code on herald.send.
task_default_queue = "herald.send"
task_default_exchange = "herald.send"
task_default_routing_key = "herald.send"


def _queue(name: str) -> Queue:
    # Each queue its own exchange and routing key. Declared bare, every queue binds
    # to the default exchange under one key: Celery's own publishes go straight to
    # the queue by name, but a publish by exchange and routing key (another client,
    # a custom router) would be copied into all of them by kombu's Redis transport.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


task_queues = (
    _queue("herald"),  # the public task herald.send_message
    _queue("herald.send"),  # transactional deliveries
    _queue("herald.bulk"),  # campaign batches
    _queue("herald.events"),  # events out to tenants' callback URLs
    _queue("herald.periodic"),  # beat: sweeper, scheduled release
)
task_routes = {
    "herald.send_message": {"queue": "herald"},
    "herald.deliver": {"queue": "herald.send"},
    "herald.simulate": {"queue": "herald.bulk"},  # test messages, in batches: never herald.send
    "herald.sweep": {"queue": "herald.periodic"},
    "herald.deliver_events": {"queue": "herald.events"},
    "herald.deliver_batch": {"queue": "herald.bulk"},
    "herald.release_due": {"queue": "herald.periodic"},
    "herald.reconcile": {"queue": "herald.periodic"},
    "herald.sync_templates": {"queue": "herald.periodic"},
    "herald.expire": {"queue": "herald.periodic"},
    "herald.failover": {"queue": "herald.periodic"},
    "herald.fold_counts": {"queue": "herald.periodic"},
    "herald.apply_inbox": {"queue": "herald.periodic"},
}


def _periodic(task: str, seconds: float, expires: int) -> dict[str, Any]:
    """A beat entry on herald.periodic. A tick still queued after `expires` seconds is
    dropped: a later tick does the same work, so a stalled worker does not pile them up."""
    return {
        "task": task,
        "schedule": seconds,
        "options": {"queue": "herald.periodic", "expires": expires},
    }


beat_schedule = {
    # Due scheduled messages and campaign batches; pause/resume/cancel act within a tick.
    "release-due": _periodic("herald.release_due", 1.0, expires=5),
    "sweep": _periodic(
        "herald.sweep", float(os.environ.get("HERALD_SWEEP_INTERVAL", "5")), expires=30
    ),
    # Twilio statuses whose callbacks were lost (Twilio never retries after a 5xx).
    "reconcile": _periodic(
        "herald.reconcile", float(os.environ.get("HERALD_RECONCILE_INTERVAL", "60")), expires=60
    ),
    # WhatsApp templates from Meta and Twilio Content (services/content/templates.py).
    "sync-templates": _periodic(
        "herald.sync_templates",
        float(os.environ.get("HERALD_TEMPLATE_SYNC_INTERVAL", "86400")),
        expires=3600,
    ),
    # Waiting messages whose ttl passed end `failed`/`expired` (services/messages/expiry.py).
    "expire": _periodic(
        "herald.expire", float(os.environ.get("HERALD_EXPIRE_INTERVAL", "5")), expires=30
    ),
    # WhatsApp messages that failed or passed their deadline fall back to SMS
    # (services/messages/failover.py).
    "failover": _periodic(
        "herald.failover", float(os.environ.get("HERALD_FAILOVER_INTERVAL", "2")), expires=10
    ),
    # Status callbacks whose receiving process died before applying them
    # (services/callbacks/inbox.py).
    "apply-inbox": _periodic("herald.apply_inbox", 5.0, expires=30),
    # Message count deltas into the rollups usage and /metrics read
    # (services/reporting/rollups.py).
    "fold-counts": _periodic("herald.fold_counts", 5.0, expires=30),
    # Content past each tenant's retention (services/lifecycle/purge.py).
    "purge": _periodic(
        "herald.purge", float(os.environ.get("HERALD_PURGE_INTERVAL", "3600")), expires=3600
    ),
}
