"""In-call retries for blips where the request certainly never reached the provider.

Only TRANSIENT errors are retried here, a few times within about two seconds, so
a worker thread is never parked; longer waits go back to Celery with a countdown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from providers.base import ErrorKind, ProviderError

T = TypeVar("T")


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.kind is ErrorKind.TRANSIENT


def retry_blips(fn: Callable[..., T]) -> Callable[..., T]:
    return retry(
        retry=retry_if_exception(_is_transient),
        stop=stop_after_attempt(3) | stop_after_delay(2.5),
        wait=wait_random_exponential(multiplier=0.2, max=1.0),
        reraise=True,
    )(fn)
