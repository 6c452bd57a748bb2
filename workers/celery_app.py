"""The Celery application. Start a worker with a threads pool: sends are I/O-bound.

    celery -A workers.celery_app worker --pool threads --concurrency 32 \
        -Q herald,herald.send,herald.bulk,herald.events,herald.periodic
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from herald.logs import MaskingFilter

app = Celery("herald")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["workers"], related_name="tasks", force=True)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_phone_numbers(logger: logging.Logger, **_: object) -> None:
    for handler in logger.handlers:
        handler.addFilter(MaskingFilter())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("twilio").setLevel(logging.WARNING)
