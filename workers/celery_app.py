"""The Celery application. Start a worker with a threads pool: sends are I/O-bound.

    celery -A workers.celery_app worker --pool threads --concurrency 32 \
        -Q herald,herald.send,herald.bulk,herald.events,herald.periodic
"""

from __future__ import annotations

from core.queue import app

__all__ = ["app"]

app.autodiscover_tasks(["workers"], related_name="tasks", force=True)
