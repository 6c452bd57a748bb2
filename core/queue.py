"""The Celery application every process publishes with and workers consume from.

It lives in the foundation because both faces use it: the API and services publish
doorbells (services/messages/dispatch.py), the worker runs tasks on it
(workers/celery_app.py registers them). Its configuration is the top-level
`celeryconfig` module, named by string so this module imports nothing of Herald's
beyond core.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from core.logs import MaskingFilter

log = logging.getLogger(__name__)


def _guard_unacked_restore() -> None:
    """Keep a worker alive when Redis goes away under it.

    On a lost connection kombu closes the channel, and closing restores the tasks this
    worker held but had not acked; with the transport already closed that raises an
    AttributeError (`'NoneType' object has no attribute 'hostname'`) that kills the worker
    ("Unrecoverable error"). Skipping the restore loses nothing: the tasks stay in Redis's
    unacked set, which any worker restores after the visibility timeout, and the sweeper
    re-enqueues their rows long before that. The worker then reconnects by itself."""
    from kombu.transport import redis as kombu_redis

    restore = kombu_redis.QoS.restore_unacked

    def restore_unacked(self, client=None):  # type: ignore[no-untyped-def]
        if client is None and getattr(self.channel.connection, "client", None) is None:
            log.warning(
                "broker connection closed; %d unacked tasks left to Redis", len(self._delivered)
            )
            self._delivered.clear()
            return None
        return restore(self, client)

    kombu_redis.QoS.restore_unacked = restore_unacked

    # Acking or rejecting a finished task on a channel whose connection is gone fails the
    # same way; a ConnectionError instead is what kombu's callers handle (the worker logs
    # it and the task comes back with the unacked set).
    create_client = kombu_redis.Channel._create_client

    def _create_client(self, asynchronous=False):  # type: ignore[no-untyped-def]
        if getattr(self.connection, "client", None) is None:
            import redis

            raise redis.exceptions.ConnectionError("the broker connection was closed")
        return create_client(self, asynchronous)

    kombu_redis.Channel._create_client = _create_client


_guard_unacked_restore()

app = Celery("herald")
app.config_from_object("celeryconfig")


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_phone_numbers(logger: logging.Logger, **_: object) -> None:
    for handler in logger.handlers:
        handler.addFilter(MaskingFilter())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("twilio").setLevel(logging.WARNING)
