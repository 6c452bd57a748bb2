"""Delivering messages: claim, gate, call the provider, record the outcome.

The row is the source of truth and the lease is the lock (claim.py). Every delivery
moves a batch (of one, or of the ids a publisher coalesced, or a campaign's): one gate
query (gate.py), one claiming statement per chunk, the provider calls made
concurrently in slots of a shared thread pool, and one transaction recording the
chunk's acceptances with set-based statements (record.py)."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from models import (
    Message,
    session_scope,
)
from providers import (
    ErrorKind,
    ProviderError,
    SendResult,
)
from providers.base import AccountCredentials
from services.content import conversations
from services.messages.claim import SENT, SKIPPED, DeliveryOutcome, claim_many, outbound_for
from services.messages.gate import gate
from services.messages.record import reconcile, record_error, record_sent, record_sent_many
from services.messages.simulation import after_sent, provider_for

log = logging.getLogger(__name__)


def deliver(message_id: str) -> DeliveryOutcome:
    """One attempt at sending `message_id`. Safe to call any number of times."""
    return deliver_many([message_id])[0]


def send_claimed(message: Message, account: AccountCredentials) -> SendResult | DeliveryOutcome:
    """The provider call for a claimed row. A fresh acceptance is returned for the
    caller to record (one at a time, or a batch in one transaction); every other
    outcome (adopted earlier copy, retry, failure) is recorded here."""
    provider = provider_for(message)  # a test message: the simulator, never a provider
    outbound = outbound_for(message)
    if message.provider_message_id:
        # A callback (Twilio's `queued`/`sending`, say) already named the provider's
        # copy: the provider has it, whatever happened to the earlier answer.
        known = SendResult(provider_message_id=message.provider_message_id, native_status="known")
        record_sent(message, known, reconciled=True)
        if message.test:
            after_sent([message.id])
        return SENT
    try:
        if message.attempts > 1 and not message.test:
            # An earlier attempt's outcome is unknown: ask the provider before resending.
            found = reconcile(provider, account, message, outbound)
            if found is not None and record_sent(message, found, reconciled=True):
                return SENT
        return provider.send(account, outbound)
    except ProviderError as exc:
        return record_error(message, exc)
    except Exception as exc:  # a bug or an unmapped library error, mid-call
        log.exception("unexpected error sending id=%s", message.id)
        # The request may have gone out: treat it like any ambiguous answer.
        unexpected = ProviderError(ErrorKind.AMBIGUOUS, f"unexpected {type(exc).__name__}")
        return record_error(message, unexpected)


# Provider calls in flight for campaign batches, per worker process: the batch pool's
# threads, each guarded by a slot, so a claimed row always finds a free thread.
BATCH_THREADS = 64
_batch_pool: ThreadPoolExecutor | None = None


class _Slots:
    """Free batch threads, taken a chunk at a time and given back one by one. The one
    batch gathering (under `_slots_lock`) is woken once, when its whole chunk is free,
    not at every release as a semaphore acquired slot by slot would wake it (50
    wake-ups and GIL hand-offs per chunk of 50)."""

    def __init__(self, count: int) -> None:
        self._free = count
        self._count = count
        self._wanted = 0  # what the gathering batch waits for (0: nobody waits)
        self._changed = threading.Condition(threading.Lock())

    def take(self, count: int) -> None:
        with self._changed:
            while self._free < count:
                self._wanted = count
                self._changed.wait()
            self._wanted = 0
            self._free -= count

    def give(self, count: int = 1) -> None:
        with self._changed:
            if self._free + count > self._count:
                raise ValueError("more batch slots given back than taken")
            self._free += count
            if self._wanted and self._free >= self._wanted:
                self._changed.notify()

    @property
    def free(self) -> int:
        return self._free


_batch_slots = _Slots(BATCH_THREADS)
_batch_lock = threading.Lock()
_slots_lock = threading.Lock()  # one batch gathers its slots at a time: no deadlock


def deliver_many(message_ids: list[str]) -> list[DeliveryOutcome]:
    """A batch (transactional messages a publisher coalesced, or a campaign's): the
    steps of one delivery, with the database work done per chunk rather than per
    message and the provider calls made concurrently. Per batch, one gate query (and
    one statement parking the rows that must wait); per chunk, one claiming
    transaction and one transaction recording every acceptance with set-based
    statements.

    A chunk is claimed only once the batch pool has a free thread for each of its
    rows, so every claimed row's call starts at once: a row claimed and then left
    waiting for a thread (behind other batches in this process) could outlive its
    lease and be claimed and sent again elsewhere."""
    global _batch_pool
    if not message_ids:
        return []
    with _batch_lock:
        if _batch_pool is None:
            _batch_pool = ThreadPoolExecutor(BATCH_THREADS, thread_name_prefix="herald-batch")
    pool = _batch_pool
    outcomes = dict.fromkeys(message_ids, SKIPPED)
    go: list[str] = []
    # The first chunk is claimed in the gate's own transaction (one commit, one
    # connection), so its threads are taken before the gate.
    width = _take_slots(len(message_ids))
    try:
        with session_scope() as session:
            known = gate(message_ids, session)
            for message_id, wait in known.waits.items():
                if wait > 0:  # parked: `release_due` rings again when it is due
                    outcomes[message_id] = DeliveryOutcome("throttled", retry_in=wait)
                else:
                    go.append(message_id)
            known.session = session
            try:
                claims = claim_many(go[:width], known) if go else []
            finally:
                known.session = None
    except BaseException:
        _release_slots(width)
        raise
    go = go[width:]
    while True:
        _release_slots(width - len(claims))  # rows another attempt owns or finished
        futures = [pool.submit(_send_in_slot, message, account) for message, account in claims]
        accepted: list[tuple[Message, SendResult]] = []
        for (message, _), future in zip(claims, futures, strict=True):
            result = future.result()
            if isinstance(result, DeliveryOutcome):
                outcomes[message.id] = result
            else:
                accepted.append((message, result))
                outcomes[message.id] = SENT
        record_sent_many(accepted, known.listening)
        if accepted:  # mark the conversation read, when asked (no query otherwise)
            accounts = {message.id: account for message, account in claims}
            for message, _ in accepted:
                if not message.test:  # a test message never reaches a provider
                    conversations.after_send(message, accounts[message.id])
            after_sent([message.id for message, _ in accepted if message.test])
        if not go:
            break
        width = _take_slots(len(go))
        chunk, go = go[:width], go[width:]
        try:
            claims = claim_many(chunk, known)
        except BaseException:
            _release_slots(width)
            raise
    # Rows that waited only for earlier rows of their pair in this batch go next, in
    # order, one round per place in the queue (SMS to one number; paced WhatsApp pairs
    # wait for their pair slot instead). A round that sends nothing ends it: the rest
    # are parked, for the beat.
    later = [mid for mid in message_ids if mid in known.following]
    if later and any(outcomes[mid] is SENT for mid in message_ids if mid not in known.following):
        for message_id, outcome in zip(later, deliver_many(later), strict=True):
            outcomes[message_id] = outcome
    return [outcomes[message_id] for message_id in message_ids]


def _take_slots(wanted: int) -> int:
    """Wait for `wanted` free batch threads (at most all of them) and take them.

    Whole chunks, not whatever is free: a chunk's claim and record are one transaction
    each, so narrow chunks would cost the round trips the batch path exists to save.
    Batches gather under a lock, so two can never each hold part of what they wait for."""
    width = min(wanted, BATCH_THREADS)
    with _slots_lock:
        _batch_slots.take(width)
    return width


def _release_slots(count: int) -> None:
    if count:
        _batch_slots.give(count)


def _send_in_slot(message: Message, account: AccountCredentials) -> SendResult | DeliveryOutcome:
    try:
        return send_claimed(message, account)
    finally:
        _batch_slots.give()
