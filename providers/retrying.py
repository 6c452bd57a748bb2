"""In-call retries for blips where the request certainly never reached the provider.

Only TRANSIENT errors are retried here, a few times within about two seconds, so
a worker thread is never parked; longer waits go back to Celery with a countdown.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from providers.base import ErrorKind, ProviderError

T = TypeVar("T")


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.kind is ErrorKind.TRANSIENT


# One controller for every call: tenacity keeps a call's state (attempt, start time,
# statistics) per thread, so calls from many threads share it safely, and no
# controller is copied per call as its decorator does (a copy per send).
BLIPS = Retrying(
    retry=retry_if_exception(_is_transient),
    stop=stop_after_attempt(3) | stop_after_delay(2.5),
    wait=wait_random_exponential(multiplier=0.2, max=1.0),
    reraise=True,
)


def retry_blips(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` retried under BLIPS: up to 3 attempts within 2.5 s, TRANSIENT errors only."""

    @functools.wraps(fn)
    def retried(*args: Any, **kwargs: Any) -> T:
        return BLIPS(fn, *args, **kwargs)

    retried.retry = BLIPS  # type: ignore[attr-defined]  # as tenacity's decorator exposes it
    return retried
