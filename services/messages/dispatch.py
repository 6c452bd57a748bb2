"""Enqueue work only after the transaction that created its rows commits.

A task published before the commit can reach a worker that cannot see the row
yet. The broker is only a doorbell: if publishing fails (Redis down, the process
killed before it published), the rows stay as they are and the sweeper rings
again, so nothing is lost.

Doorbells rung after a commit go to a per-process publisher thread, so a request
never waits on the broker: whatever ids are pending when it wakes go out as one
`herald.deliver_batch` per queue (a burst of single POSTs costs one publish, and a
worker moves the batch with a handful of statements). It publishes at most once per
`HERALD_PUBLISH_INTERVAL_MS` (200 ms): idle, a doorbell leaves at once; under load,
the doorbells of that interval share one task, so a worker pays its per-task and
per-batch costs once for many messages. `dispatch_now` publishes in the caller's
thread and says whether the broker took it.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue as queue_module
import threading
import time
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger(__name__)

DELIVER_TASK = "herald.deliver"
BATCH_TASK = "herald.deliver_batch"
# Test messages' simulated statuses (services/messages/simulation.py): a list of ids per
# task, like a delivery batch, so a test campaign is a few tasks, not one per row.
SIMULATE_TASK = "herald.simulate"
# The most ids one batch task carries: a worker sends a batch's rows concurrently, so a
# burst spread over several tasks also spreads over the worker's threads.
BATCH_LIMIT = 50
# (task name, message ids, queue)
Dispatcher = Callable[[str, list[str], str], None]
_dispatcher: Dispatcher | None = None
_KEY = "herald_enqueue"


def set_dispatcher(fn: Dispatcher | None) -> None:
    """Replace how work is handed to workers (tests record it instead, synchronously:
    with a dispatcher set, nothing goes through the background publisher)."""
    global _dispatcher
    _dispatcher = fn


def _coalesce(work: list[tuple[str, list[str], str]]) -> list[tuple[str, list[str], str]]:
    """Deliveries (and simulations) to one queue become batches of at most BATCH_LIMIT
    ids; other tasks (events) are grouped per task and queue. In order, each id once."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for task, ids, queue in work:
        name = BATCH_TASK if task in (DELIVER_TASK, BATCH_TASK) else task
        grouped.setdefault((name, queue), []).extend(ids)
    out: list[tuple[str, list[str], str]] = []
    for (task, queue), ids in grouped.items():
        unique = list(dict.fromkeys(ids))
        if task not in (BATCH_TASK, SIMULATE_TASK):
            out.append((task, unique, queue))
            continue
        for start in range(0, len(unique), BATCH_LIMIT):
            out.append((task, unique[start : start + BATCH_LIMIT], queue))
    return out


def _celery_dispatch(task: str, message_ids: list[str], queue: str) -> None:
    from core.queue import app

    if task in (DELIVER_TASK, BATCH_TASK, SIMULATE_TASK):  # one task per batch of ids
        for batch_task, ids, batch_queue in _coalesce([(task, message_ids, queue)]):
            app.send_task(
                batch_task,
                args=[ids],
                queue=batch_queue,
                ignore_result=True,
                argsrepr=_ids_repr(ids),
                kwargsrepr="{}",
            )
        return
    for message_id in message_ids:
        app.send_task(
            task,
            args=[message_id],
            queue=queue,
            ignore_result=True,
            argsrepr=f"[{message_id!r}]",
            kwargsrepr="{}",
        )


def _ids_repr(ids: list[str]) -> str:
    """What a batch task's arguments look like in the worker's logs and events. Celery's
    own (saferepr of the list) was a third of a publish's CPU."""
    if len(ids) <= 2:
        return repr([ids])
    return f"[[{ids[0]!r}, ... {ids[-1]!r}]] ({len(ids)} ids)"


def dispatch_now(message_ids: list[str], queue: str, task: str = DELIVER_TASK) -> bool:
    """Publish now; False (and a log line) when the broker is unreachable."""
    try:
        (_dispatcher or _celery_dispatch)(task, message_ids, queue)
        return True
    except Exception as exc:  # the sweeper re-enqueues; the request must not fail
        log.warning("enqueue failed, the sweeper will retry: %s", type(exc).__name__)
        return False


class _Publisher:
    """One thread per process publishing doorbells handed over after commits. It takes
    everything pending at each wake-up, at most once per interval, so under load many
    commits share one publish; idle, a doorbell leaves as soon as it is handed over."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # The interval is measured on `clock` and waited out with `sleep`: a test gives
        # its own pair and decides when the interval has passed.
        self._clock, self._sleep = clock, sleep
        self._queue: queue_module.SimpleQueue[tuple[str, list[str], str] | None] = (
            queue_module.SimpleQueue()
        )
        self._idle = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, task: str, ids: list[str], queue: str) -> None:
        self._ensure_thread()
        with self._idle:
            self._pending += 1
        self._queue.put((task, ids, queue))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything handed over so far was published (or given up)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _ensure_thread(self) -> None:
        pid = os.getpid()
        if self._thread is not None and self._pid == pid and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._pid == pid and self._thread.is_alive():
                return
            if self._pid != pid:  # forked: the parent's thread and queue are not ours
                self._queue = queue_module.SimpleQueue()
                self._idle = threading.Condition()
                self._pending = 0
            self._pid = pid
            self._thread = threading.Thread(target=self._run, name="herald-publisher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        from core.config import get_settings

        last = float("-inf")
        while True:
            first = self._queue.get()
            pause = last + get_settings().publish_interval - self._clock()
            if pause > 0 and first is not None:
                self._sleep(pause)  # published a moment ago: let this interval's doorbells gather
            last = self._clock()
            work = [first]
            while True:
                try:
                    work.append(self._queue.get_nowait())
                except queue_module.Empty:
                    break
            items = [w for w in work if w is not None]
            try:
                for task, ids, queue in _coalesce(items):
                    dispatch_now(ids, queue, task)
            finally:
                with self._idle:
                    self._pending -= len(items)
                    self._idle.notify_all()


_publisher = _Publisher()


def publish_later(message_ids: list[str], queue: str, task: str = DELIVER_TASK) -> None:
    """Hand the doorbell to the background publisher (synchronously to a dispatcher a
    test set). Never blocks on the broker; a lost doorbell is the sweeper's."""
    if _dispatcher is not None:
        dispatch_now(message_ids, queue, task)
        return
    _publisher.submit(task, list(message_ids), queue)


def flush(timeout: float = 5.0) -> bool:
    """Wait for the background publisher to publish what it was handed (shutdown)."""
    return _publisher.flush(timeout)


atexit.register(flush, 2.0)


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
        publish_later(ids, queue, task)


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
