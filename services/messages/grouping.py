"""Concurrent callers of one process sharing one unit of work (a group commit).

Used where each request would otherwise pay a round trip and a commit of its own: the
accept path (services/messages/accept.py) and the status-callback inbox
(services/callbacks/inbox.py). No thread of its own: the caller that finds no group in
flight leads, runs the work for every caller waiting (itself included), wakes them, and
hands the lead to the first caller that arrived meanwhile; the next group gathers while
one runs. Each caller gets its own outcome, or its own exception; nothing returns before
its group ran.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Ticket:
    """One caller's share of a group: what it brought, and its outcome."""

    __slots__ = ("done", "exc", "payload", "result", "wake")

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self.result: Any = None
        self.exc: BaseException | None = None
        self.done = False
        # Held until the caller may go on: a bare lock is the cheapest wake-up (an
        # Event is a Condition and two locks; its notify showed in profiles).
        self.wake = threading.Lock()
        self.wake.acquire()


class GroupRunner:
    """Subclasses say how many waiting tickets one group takes (`_take`) and run a group
    (`_run`, which sets each ticket's `result` or `exc`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Ticket] = []
        self._busy = False

    def submit(self, payload: Any) -> Ticket:
        """Run `payload` in a group; its ticket once done. Raises the ticket's exception."""
        ticket = Ticket(payload)
        with self._lock:
            self._queue.append(ticket)
            lead = not self._busy
            self._busy = True
        if not lead:
            ticket.wake.acquire()  # released when done, or when this caller leads
        if not ticket.done:  # the lead was handed to this caller
            self._lead()
        if ticket.exc is not None:
            raise ticket.exc
        return ticket

    def _take(self, queue: list[Ticket]) -> int:
        """How many of the waiting tickets (oldest first) the next group takes; at least 1."""
        raise NotImplementedError

    def _run(self, group: list[Ticket]) -> None:
        raise NotImplementedError

    def _lead(self) -> None:
        with self._lock:
            count = max(1, self._take(self._queue))
            group = self._queue[:count]
            del self._queue[:count]
        try:
            self._run(group)
        finally:
            for ticket in group:
                ticket.done = True
            with self._lock:
                nxt = self._queue[0] if self._queue else None
                self._busy = nxt is not None
            for ticket in group:
                if ticket.wake.locked():
                    ticket.wake.release()
            if nxt is not None:
                nxt.wake.release()  # not done: it leads the next group


class PerProcess(Generic[T]):
    """One instance per process (a group committer holding its own connection): a forked
    child builds its own. The parent's is kept, never used nor closed: closing its
    connection would end the parent's session on the shared socket."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._instance = factory()
        self._inherited: list[T] = []
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._inherited.append(self._instance)
        self._instance = self._factory()

    def get(self) -> T:
        return self._instance
