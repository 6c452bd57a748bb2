"""The Celery application. Start workers with a threads pool (sends are I/O-bound), and
events out to tenants' callback URLs on a worker of their own, so that a slow receiver
never holds a thread a send needs:

    celery -A workers.celery_app worker --pool threads --concurrency 32 \
        -Q herald,herald.send,herald.bulk,herald.periodic
    celery -A workers.celery_app worker --pool threads --concurrency 8 -Q herald.events
"""

from __future__ import annotations

from core.queue import app

__all__ = ["app"]

app.autodiscover_tasks(["workers"], related_name="tasks", force=True)
