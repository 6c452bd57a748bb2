"""Signed webhooks from the sandbox back to Herald, delivered late, retried like real providers.

A single dispatcher thread pops a heap of (due_time, callback) and hands due callbacks to a
small thread pool that POSTs them through one shared httpx.Client.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
from twilio.request_validator import RequestValidator

BACKOFF_CAP = 8.0


@dataclass
class Callback:
    """One webhook, with its body and signature fixed at creation (retries resend it as is)."""

    provider: str
    url: str
    kind: str  # "status" | "inbound"
    event: str  # the status name, or the inbound message type
    message_id: str | None
    payload: dict[str, Any]
    body: bytes
    headers: dict[str, str]
    max_retries: int = 5
    backoff: float = 0.5
    attempt: int = 0
    generation: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def twilio_callback(url: str, params: dict[str, str], auth_token: str, **meta: Any) -> Callback:
    """Form-encoded Twilio webhook signed with `X-Twilio-Signature` (HMAC-SHA1 of URL+params)."""
    signature = RequestValidator(auth_token).compute_signature(url, params)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": signature,
        "User-Agent": "TwilioProxy/1.1",
    }
    return Callback(
        "twilio", url, payload=params, body=urlencode(params).encode(), headers=headers, **meta
    )


def meta_callback(url: str, payload: dict[str, Any], app_secret: str, **meta: Any) -> Callback:
    """JSON webhook signed like Meta: `X-Hub-Signature-256: sha256=HMAC(app_secret, raw body)`.

    The body is ASCII-escaped JSON, as Meta sends it, so a receiver that re-serialises the
    parsed JSON instead of hashing the raw bytes fails on non-ASCII text, as it would live.
    """
    body = json.dumps(payload, separators=(",", ":")).encode()
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": f"sha256={digest}",
        "User-Agent": "facebookexternalua",
    }
    return Callback("meta", url, payload=payload, body=body, headers=headers, **meta)


def plan_statuses(
    timeline: list[tuple[float, str]], cfg: dict[str, Any], whatsapp: bool
) -> list[tuple[float, str]]:
    """Turn the true status timeline into the callbacks to send, per the callbacks config.

    `timeline` is [(delay, status)] in real order. Reordering swaps which status goes out at
    which delay, so Herald sees e.g. `read` before `sent`, as happens with real providers.
    """
    if not cfg["enabled"]:
        return []
    events = list(timeline)
    if whatsapp and cfg["skip_delivered"] and any(s == "read" for _, s in events):
        events = [e for e in events if e[1] != "delivered"]
    delays = [d for d, _ in events]
    statuses = [s for _, s in events]
    if cfg["order"] == "reverse":
        statuses.reverse()
    elif cfg["order"] == "shuffle":
        random.shuffle(statuses)
    planned = list(zip(delays, statuses, strict=True))
    if cfg["duplicate"]:
        planned += [(d + 0.01, s) for d, s in planned]
    return sorted(planned)


class CallbackScheduler:
    """Delivers callbacks at their due time; failed ones are retried with capped backoff."""

    def __init__(
        self,
        on_attempt: Callable[[dict[str, Any]], None],
        timeout: float = 5.0,
        workers: int = 4,
    ) -> None:
        self._on_attempt = on_attempt
        self._heap: list[tuple[float, int, Callback]] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._generation = 0
        self._inflight = 0
        self._stopped = False
        self._client = httpx.Client(timeout=timeout)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sandbox-callback")
        self._thread = threading.Thread(target=self._run, name="sandbox-scheduler", daemon=True)
        self._thread.start()

    def schedule(self, callback: Callback, delay: float) -> None:
        with self._cv:
            if self._stopped:
                return
            callback.generation = self._generation
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), callback))
            self._cv.notify()

    def pending(self) -> int:
        """Callbacks not yet finished (waiting, retrying or in flight)."""
        with self._cv:
            return len(self._heap) + self._inflight

    def clear(self) -> None:
        """Drop everything pending; in-flight deliveries finish but are not logged."""
        with self._cv:
            self._heap.clear()
            self._generation += 1

    def send_now(self, callback: Callback) -> dict[str, Any]:
        """Deliver once, synchronously; log and return the attempt record."""
        callback.attempt += 1
        entry: dict[str, Any] = {
            "provider": callback.provider,
            "kind": callback.kind,
            "event": callback.event,
            "message_id": callback.message_id,
            "url": callback.url,
            "attempt": callback.attempt,
            "sent_at": time.time(),
            "payload": callback.payload,
            "status_code": None,
            "error": None,
            "ok": False,
            **callback.extra,
        }
        try:
            response = self._client.post(
                callback.url, content=callback.body, headers=callback.headers
            )
            entry["status_code"] = response.status_code
            entry["ok"] = 200 <= response.status_code < 300
            entry["response_body"] = response.text[:500]
        except httpx.HTTPError as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        with self._cv:
            current = callback.generation == self._generation
        if current:
            self._on_attempt(dict(entry))
        return entry

    def _deliver(self, callback: Callback) -> None:
        try:
            entry = self.send_now(callback)
            if not entry["ok"] and callback.attempt <= callback.max_retries:
                delay = min(BACKOFF_CAP, callback.backoff * 2 ** (callback.attempt - 1))
                with self._cv:
                    if callback.generation != self._generation or self._stopped:
                        return
                    when = time.monotonic() + delay
                    heapq.heappush(self._heap, (when, next(self._seq), callback))
                    self._cv.notify()
        finally:
            with self._cv:
                self._inflight -= 1

    def _run(self) -> None:
        with self._cv:
            while not self._stopped:
                if not self._heap:
                    self._cv.wait()
                    continue
                due = self._heap[0][0] - time.monotonic()
                if due > 0:
                    self._cv.wait(due)
                    continue
                _, _, callback = heapq.heappop(self._heap)
                if callback.generation != self._generation:
                    continue
                self._inflight += 1
                self._pool.submit(self._deliver, callback)

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._heap.clear()
            self._cv.notify_all()
        self._thread.join(timeout=2)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()
