"""Enqueue work only after the transaction that created its rows commits.

A task published before the commit can reach a worker that cannot see the row
yet. The broker is only a doorbell: if publishing fails (Redis down), the rows
stay as they are and the sweeper rings again, so nothing is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

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
    """Publish once the outermost transaction commits; forget it if the transaction,
    or the savepoint it was registered in, rolls back."""
    registered_in = session.get_nested_transaction() or session.get_transaction()
    session.info.setdefault(_KEY, []).append((registered_in, task, list(message_ids), queue))


def _inside(transaction: SessionTransaction | None, boundary: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is boundary:
            return True
        transaction = transaction.parent
    return False


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    # Also fired when a savepoint is released: the rows are not committed yet.
    if session.in_nested_transaction():
        return
    for _, task, ids, queue in session.info.pop(_KEY, []):
        dispatch_now(ids, queue, task)


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, previous: SessionTransaction) -> None:
    """A savepoint rollback drops only what was registered inside that savepoint;
    the outermost rollback drops everything."""
    boundary: SessionTransaction | None = previous
    while boundary is not None and not boundary.nested and boundary.parent is not None:
        boundary = boundary.parent  # a failed flush rolls back its savepoint or the root
    pending = session.info.get(_KEY)
    if not pending or boundary is None:
        return
    if not boundary.nested:
        session.info.pop(_KEY, None)
        return
    session.info[_KEY] = [entry for entry in pending if not _inside(entry[0], boundary)]


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction ended without a commit (closed, not rolled back):
    # its rows are gone, so are its doorbells. After a commit this finds nothing.
    if transaction.parent is None:
        session.info.pop(_KEY, None)
