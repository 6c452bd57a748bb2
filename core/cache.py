"""A per-process cache of what the accept path would otherwise read from the database
for every message (a tenant's senders, an account's templates)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ReadCache(Generic[K, V]):
    """Values kept for `seconds` after their read began, at most `size` of them (the
    least recently stored go first). `forget()` drops them all, and a value whose read
    began before a forget is not kept: it may predate the change that called it."""

    def __init__(self, seconds: float, size: int | None = None) -> None:
        self.seconds = seconds
        self.size = size
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0

    def get(self, key: K, read: Callable[[], V]) -> V:
        """The value kept for `key`, else `read()` (outside the lock), kept."""
        now = time.monotonic()
        with self._lock:
            hit = self._data.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
            generation = self._generation
        value = read()
        with self._lock:
            if generation == self._generation:
                self._data[key] = (now + self.seconds, value)
                self._data.move_to_end(key)
                while self.size is not None and len(self._data) > self.size:
                    self._data.popitem(last=False)
        return value

    def forget(self) -> None:
        with self._lock:
            self._generation += 1
            self._data.clear()
