"""Enqueue work only after the transaction that created its rows commits.

A task published before the commit can reach a worker that cannot see the row
yet. The broker is only a doorbell: if publishing fails (Redis down), the rows
stay as they are and the sweeper rings again, so nothing is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

DELIVER_TASK = "herald.deliver"
# (task name, message ids, queue)
Dispatcher = Callable[[str, list[str], str], None]
_dispatcher: Dispatcher | None = None
_KEY = "herald_enqueue"


def set_dispatcher(fn: Dispatcher | None) -> None:
    """Replace how work is handed to workers (tests record it instead)."""
    global _dispatcher
    _dispatcher = fn


BATCH_TASK = "herald.deliver_batch"


def _celery_dispatch(task: str, message_ids: list[str], queue: str) -> None:
    from workers.celery_app import app

    if task == BATCH_TASK:  # one task for the whole batch, sent concurrently by the worker
        app.send_task(task, args=[message_ids], queue=queue, ignore_result=True)
        return
    for message_id in message_ids:
        app.send_task(task, args=[message_id], queue=queue, ignore_result=True)


def dispatch_now(message_ids: list[str], queue: str, task: str = DELIVER_TASK) -> bool:
    """Publish now; False (and a log line) when the broker is unreachable."""
    try:
        (_dispatcher or _celery_dispatch)(task, message_ids, queue)
        return True
    except Exception as exc:  # the sweeper re-enqueues; the request must not fail
        log.warning("enqueue failed, the sweeper will retry: %s", type(exc).__name__)
        return False


def enqueue_after_commit(
    session: Session, message_ids: list[str], queue: str, task: str = DELIVER_TASK
) -> None:
    session.info.setdefault(_KEY, []).append((task, list(message_ids), queue))


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    for task, ids, queue in session.info.pop(_KEY, []):
        dispatch_now(ids, queue, task)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_KEY, None)
