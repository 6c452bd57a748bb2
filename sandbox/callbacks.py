"""Signed webhooks from the sandbox back to Herald, delivered late, retried like real providers.

A single dispatcher thread pops a heap of (due_time, callback) and hands due callbacks to a
small thread pool that POSTs them through one shared httpx.Client.

Retries follow each provider's documented policy, not a kinder one:
* Twilio retries a status callback only when the connection fails, once by default
  (connection overrides: `rc` 1); a 5xx answer is final, so a callback Herald rolls
  back is lost, as it would be in production.
* Meta retries any answer other than 200, with growing delays.
Meta status webhooks are batched: statuses due in the same short window go out in one
body (several entries, changes and statuses), as Meta delivers them.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import math
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
    # "status": any non-2xx answer is retried (Meta); "connection": only a failed
    # connection is (Twilio), never an HTTP error answer.
    retry_on: str = "status"
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
    timeline: list[tuple[float, str]],
    cfg: dict[str, Any],
    whatsapp: bool,
    rng: random.Random | None = None,
) -> list[tuple[float, str]]:
    """Turn the true status timeline into the callbacks to send, per the callbacks config.

    `timeline` is [(delay, status)] in real order. Reordering swaps which status goes out at
    which delay, so Herald sees e.g. `read` before `sent`, as happens with real providers.
    WhatsApp's `delivered` is skipped when `read` follows, always with `skip_delivered`,
    else at `skip_delivered_rate` drawn from `rng` (seeded, so a run is repeatable).
    """
    if not cfg["enabled"]:
        return []
    events = list(timeline)
    rate = cfg.get("skip_delivered_rate", 0.0)
    skip = cfg["skip_delivered"] or (rate > 0 and (rng or random).random() < rate)
    if whatsapp and skip and any(s == "read" for _, s in events):
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
        self._heap: list[tuple[float, int, Callback | Callable[[], None]]] = []
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

    def schedule_call(self, fn: Callable[[], None], delay: float) -> None:
        """Run `fn` on the pool after `delay` (dropped by `clear`, like a callback)."""
        with self._cv:
            if self._stopped:
                return
            entry = (time.monotonic() + delay, next(self._seq), _Call(fn, self._generation))
            heapq.heappush(self._heap, entry)  # type: ignore[arg-type]
            self._cv.notify()

    def current(self, generation: int) -> bool:
        with self._cv:
            return generation == self._generation and not self._stopped

    @property
    def generation(self) -> int:
        with self._cv:
            return self._generation

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
        entry = self.send_now(callback)
        failed = entry["error"] is not None if callback.retry_on == "connection" else True
        if not entry["ok"] and failed and callback.attempt <= callback.max_retries:
            delay = min(BACKOFF_CAP, callback.backoff * 2 ** (callback.attempt - 1))
            with self._cv:
                if callback.generation != self._generation or self._stopped:
                    return
                when = time.monotonic() + delay
                heapq.heappush(self._heap, (when, next(self._seq), callback))
                self._cv.notify()

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
                _, _, item = heapq.heappop(self._heap)
                if item.generation != self._generation:
                    continue
                self._inflight += 1
                self._pool.submit(self._work, item)

    def _work(self, item: Callback | _Call) -> None:
        """Deliver a callback or run a call on the pool; either way it is no longer pending."""
        try:
            if isinstance(item, _Call):
                item.fn()
            else:
                self._deliver(item)
        finally:
            with self._cv:
                self._inflight -= 1

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._heap.clear()
            self._cv.notify_all()
        self._thread.join(timeout=2)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


@dataclass
class _Call:
    fn: Callable[[], None]
    generation: int


@dataclass
class BatchedStatus:
    waba_id: str
    metadata: dict[str, Any]
    status: dict[str, Any]
    message_id: str
    herald_id: str | None
    # The recipient as the change's `contacts[]` names it (BSUID, wa_id, username).
    contact: dict[str, Any] | None = None


class MetaStatusBatcher:
    """Gathers Meta status webhooks due within one window into a single signed body.

    Statuses for one URL and app secret whose due times fall in the same window of
    `window` seconds leave together: one entry per WABA, one change per phone number,
    several statuses per change. A window of 0 sends each status alone.
    """

    def __init__(self, scheduler: CallbackScheduler) -> None:
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._pending: dict[tuple[Any, ...], list[BatchedStatus]] = {}
        self._options: dict[tuple[Any, ...], tuple[int, float]] = {}

    def add(
        self,
        url: str,
        app_secret: str,
        item: BatchedStatus,
        delay: float,
        window: float,
        max_retries: int,
        backoff: float,
    ) -> None:
        generation = self._scheduler.generation
        if window <= 0:
            key: tuple[Any, ...] = (url, app_secret, generation, next(_solo))
            with self._lock:
                self._pending[key] = [item]
                self._options[key] = (max_retries, backoff)
            self._scheduler.schedule_call(lambda: self._flush(key), delay)
            return
        now = time.monotonic()
        bucket = math.ceil((now + delay) / window)
        key = (url, app_secret, generation, bucket)
        with self._lock:
            batch = self._pending.get(key)
            if batch is not None:
                batch.append(item)
                return
            self._pending[key] = [item]
            self._options[key] = (max_retries, backoff)
        self._scheduler.schedule_call(lambda: self._flush(key), max(0.0, bucket * window - now))

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
            self._options.clear()

    def _flush(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            items = self._pending.pop(key, [])
            max_retries, backoff = self._options.pop(key, (5, 0.5))
        if not items or not self._scheduler.current(key[2]):
            return
        url, app_secret = key[0], key[1]
        entries: dict[str, dict[str, list[dict[str, Any]]]] = {}
        metadata: dict[str, dict[str, Any]] = {}
        people: dict[str, dict[str, dict[str, Any]]] = {}
        for it in items:
            phone_id = str(it.metadata["phone_number_id"])
            metadata[phone_id] = it.metadata
            entries.setdefault(it.waba_id, {}).setdefault(phone_id, []).append(it.status)
            if it.contact is not None:
                people.setdefault(phone_id, {})[str(it.contact.get("user_id"))] = it.contact
        payload = {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": waba_id,
                    "changes": [
                        {
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": metadata[phone_id],
                                **(
                                    {"contacts": list(people[phone_id].values())}
                                    if phone_id in people
                                    else {}
                                ),
                                "statuses": statuses,
                            },
                            "field": "messages",
                        }
                        for phone_id, statuses in phones.items()
                    ],
                }
                for waba_id, phones in entries.items()
            ],
        }
        callback = meta_callback(
            url,
            payload,
            app_secret,
            kind="status",
            event=items[0].status["status"],
            message_id=items[0].message_id,
            max_retries=max_retries,
            backoff=backoff,
            extra={
                "herald_id": items[0].herald_id,
                "message_ids": [it.message_id for it in items],
                "events": [it.status["status"] for it in items],
                "herald_ids": [it.herald_id for it in items],
            },
        )
        self._scheduler.schedule(callback, 0.0)


_solo = itertools.count()
