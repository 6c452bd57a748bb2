"""Delivering one message: claim, call the provider, record the outcome.

The row is the source of truth and the lease is the lock:

* A worker may send only after a conditional UPDATE moves the row to `sending`
  with `lease_until` in the future, from `queued` or from `sending` with an
  expired lease. A redelivered or duplicated task finds nothing to claim.
* Each send carries Herald's id out (Twilio: the StatusCallback URL; Meta:
  `biz_opaque_callback_data`), so a provider callback settles the row even if
  the worker died before recording the provider's id.
* When the provider may have taken the message without Herald knowing (timeout,
  5xx, a worker killed mid-call), the lease is held for HERALD_SETTLE_SECONDS:
  a callback arriving meanwhile moves the row past `sending` and no resend
  happens; only a row nobody has heard of is sent again.

Every delivery moves a batch (of one, or of the ids a publisher coalesced, or a
campaign's): one gate query, one claiming statement per chunk, the provider calls
made concurrently, and one transaction recording the chunk's acceptances with
set-based statements. A message that must wait for its sender's budget, a hold or
pair pacing is parked in its row (`not_before`) for the beat's `release_due`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached
from tenacity import retry, retry_if_exception, wait_fixed

from core.config import get_settings
from core.errors import database_unavailable
from models import (
    Contact,
    Message,
    MessageEvent,
    ProviderAccount,
    session_scope,
    utcnow,
)
from models.base import UTCDateTime
from models.fast import Statement, column_list, naive_utc
from providers import (
    ErrorKind,
    OutboundMessage,
    Provider,
    ProviderError,
    SendResult,
    error_name,
    get_provider,
)
from services.content import conversations
from services.content.phones import mask, whatsapp_forms
from services.content.schemas import provider_problems
from services.messages.dispatch import enqueue_after_commit
from services.messages.expiry import expired_refusal
from services.messages.serialize import message_to_dict
from services.messages.status import allowed_from, apply_status
from services.policy import breaker
from services.policy.consent import contact_for
from services.policy.limits import give_back_pair_slot, reserve_send_slots, take_pair_slot
from services.reporting.events import EVENTS_QUEUE, EVENTS_TASK, listening
from services.tenancy.secrets import decrypt_json
from services.tenancy.senders import outbound_sender, sender_for
from services.tenancy.tenants import AccountCredentials, credentials

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryOutcome:
    action: str  # sent | failed | retry | throttled | held | skipped
    retry_in: float | None = None


SKIPPED = DeliveryOutcome("skipped")
SENT = DeliveryOutcome("sent")


def status_callback_url(message_id: str) -> str:
    return f"{get_settings().public_url}/webhooks/twilio/status?message_id={message_id}"


# The hot statements as fixed SQL over arrays, run on the session's own connection
# (models.fast): a batch of any size is one statement with a handful of parameters,
# and nothing is built, cache-keyed or compiled per call. Timestamps go in and come
# out naive UTC, as the columns store them; JSON comes out decoded.
_MESSAGE_COLUMNS = tuple(Message.__table__.c)
# Each column's attribute on Message (the `metadata` column is `meta`).
_MESSAGE_KEYS = tuple(Message.__mapper__.get_property_by_column(c).key for c in _MESSAGE_COLUMNS)
_MESSAGE_TIMES = tuple(i for i, c in enumerate(_MESSAGE_COLUMNS) if isinstance(c.type, UTCDateTime))
_new_message = Message.__mapper__.class_manager.new_instance
_CLAIM = Statement(
    """
    UPDATE messages SET status = 'sending', attempts = attempts + 1, lease_until = :lease,
           updated_at = :now, not_before = NULL, slot_reserved = false
    WHERE id = ANY(CAST(:ids AS text[])) AND direction = 'outbound'
      AND (status = 'queued' OR (status = 'sending' AND lease_until < :now))
    RETURNING """
    + column_list([c.name for c in _MESSAGE_COLUMNS])
)
# The batch's rows still to send, their accounts, and whether anyone listens for
# their events (the message's callback URL, else its tenant's).
_GATE = Statement(
    """
    SELECT m.id, m.status, m.lease_until, m.provider, m.channel, m.to_number, m.options,
           m.not_before, m.slot_reserved, m.provider_account_id,
           a.tenant_id AS account_tenant_id, a.provider AS account_provider,
           a.external_id, a.settings, a.secrets_enc,
           (coalesce(m.callback_url, t.callback_url) IS NOT NULL
            AND coalesce(m.callback_url, t.callback_url) != '') AS listening
    FROM messages AS m
    JOIN provider_accounts AS a ON a.id = m.provider_account_id
    JOIN tenants AS t ON t.id = m.tenant_id
    WHERE m.id = ANY(CAST(:ids AS text[])) AND m.status IN ('queued', 'sending')
    """
)
# The moved rows whose events someone takes, whole, with where the events go.
_OWED = Statement(
    "SELECT "
    + ", ".join(f'm."{c.name}"' for c in _MESSAGE_COLUMNS)
    + """, coalesce(m.callback_url, t.callback_url) AS url
    FROM messages AS m JOIN tenants AS t ON t.id = m.tenant_id
    WHERE m.id = ANY(CAST(:ids AS text[]))
    """
)
_OWE = Statement(
    """
    INSERT INTO event_deliveries
        (message_id, tenant_id, url, payload, status, attempts, next_attempt_at, created_at)
    SELECT v.id, v.tenant, v.url, CAST(v.payload AS json), 'pending', 0, :now, :now
    FROM unnest(CAST(:ids AS text[]), CAST(:tenants AS text[]), CAST(:urls AS text[]),
                CAST(:payloads AS text[])) AS v(id, tenant, url, payload)
    """
)
_OPTED_OUT = Statement(
    """
    SELECT tenant_id, phone, wa_id FROM contacts
    WHERE tenant_id = ANY(CAST(:tenants AS text[])) AND opted_out
      AND (phone = ANY(CAST(:forms AS text[])) OR wa_id = ANY(CAST(:forms AS text[])))
    """
)
_EVENTS = Statement(
    """
    INSERT INTO message_events
        (message_id, status, native_status, source, applied, error_code, detail, at)
    SELECT v.id, :status, v.native, :source, v.applied, NULL, CAST(v.detail AS json), :at
    FROM unnest(CAST(:ids AS text[]), CAST(:natives AS text[]), CAST(:applied AS boolean[]),
                CAST(:details AS text[])) AS v(id, native, applied, detail)
    """
)
_PARK = Statement(
    """
    UPDATE messages AS m SET not_before = v.due, slot_reserved = v.reserved
    FROM unnest(CAST(:ids AS text[]), CAST(:dues AS timestamp[]), CAST(:reserved AS boolean[]))
         AS v(id, due, reserved)
    WHERE m.id = v.id AND m.status IN ('queued', 'sending')
    """
)
# `apply_status(..., "sent")` for a batch, in one statement: forward only (`moved`:
# from the states `sent` may follow), the provider's facts filled in where still
# empty and the price when given; a row a callback moved past `sent` first keeps its
# status and gets the facts only (`kept`); and each row's `sent` event, in the
# batch's order, applied or not. Returns the moved ids.
_SENT = Statement(
    """
    WITH v AS (
        SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:pids AS text[]),
                             CAST(:prices AS numeric[]), CAST(:units AS text[]),
                             CAST(:senders AS text[]), CAST(:natives AS text[]))
                 WITH ORDINALITY AS v(id, pid, price, unit, sender, native, n)
    ), moved AS (
        UPDATE messages AS m SET status = 'sent', updated_at = :now,
               sent_at = coalesce(m.sent_at, :now), lease_until = NULL,
               provider_message_id = coalesce(m.provider_message_id, v.pid),
               price = CASE WHEN v.price IS NULL THEN m.price ELSE v.price END,
               price_unit = CASE WHEN v.price IS NULL THEN m.price_unit ELSE v.unit END,
               from_number = coalesce(m.from_number, v.sender)
        FROM v
        WHERE m.id = v.id AND m.status = ANY(CAST(:allowed AS text[]))
        RETURNING m.id
    ), kept AS (
        UPDATE messages AS m SET
               provider_message_id = coalesce(m.provider_message_id, v.pid),
               price = CASE WHEN v.price IS NULL THEN m.price ELSE v.price END,
               price_unit = CASE WHEN v.price IS NULL THEN m.price_unit ELSE v.unit END,
               from_number = coalesce(m.from_number, v.sender)
        FROM v
        WHERE m.id = v.id AND m.id NOT IN (SELECT id FROM moved)
    ), events AS (
        INSERT INTO message_events
            (message_id, status, native_status, source, applied, error_code, detail, at)
        SELECT v.id, 'sent', v.native, 'worker', v.id IN (SELECT id FROM moved), NULL, NULL,
               :now
        FROM v ORDER BY v.n
    )
    SELECT id FROM moved
    """
)


def _message(row: Sequence[Any]) -> Message:
    """A Message from a row of `_MESSAGE_COLUMNS`, as the ORM would have loaded it and
    its session's closing left it: detached, every attribute loaded, timestamps aware
    UTC, JSON decoded."""
    values = dict(zip(_MESSAGE_KEYS, row, strict=True))
    for i in _MESSAGE_TIMES:
        if row[i] is not None:
            values[_MESSAGE_KEYS[i]] = row[i].replace(tzinfo=UTC)
    # As the ORM's loader builds an instance: no constructor, the row's values set
    # as its state, then given its identity (every attribute loaded, none changed).
    message = _new_message()
    message.__dict__.update(values)
    make_transient_to_detached(message)
    return message


def insert_events(
    session: Session,
    status: str,
    source: str,
    rows: list[tuple[str, str | None, bool, dict | None]],
    at: datetime,
) -> None:
    """Message events for a batch in one INSERT: (message id, native status, applied,
    detail) each."""
    if not rows:
        return
    _EVENTS.execute(
        session,
        {
            "status": status,
            "source": source,
            "at": naive_utc(at),
            "ids": [r[0] for r in rows],
            "natives": [r[1] for r in rows],
            "applied": [r[2] for r in rows],
            "details": [None if r[3] is None else json.dumps(r[3]) for r in rows],
        },
    )


def claim_for_sending(message_id: str) -> tuple[Message, AccountCredentials] | None:
    """Take the row for one send attempt, or None if another attempt owns or finished it."""
    claimed = claim_many([message_id])
    return claimed[0] if claimed else None


def claim_many(
    message_ids: list[str], known: Gate | None = None
) -> list[tuple[Message, AccountCredentials]]:
    """Take each claimable row of the batch for one send attempt, in one transaction.

    One conditional UPDATE ... RETURNING takes the rows: a row queued, or sending
    with an expired lease, is ours; any other (finished, or leased by a live
    attempt) is left alone, so a redelivered batch claims nothing twice. Rows that
    may not be sent any more (attempts exhausted, recipient opted out since, account
    removed) are failed here and not returned. `known`: what the batch's gate read
    (accounts, listeners), so it is not read again."""
    if not message_ids:
        return []
    settings = get_settings()
    now = utcnow()
    lease = now + timedelta(seconds=settings.send_lease_seconds + settings.http_timeout)
    if known is not None and known.session is not None:
        return _claim(known.session, message_ids, known, now, lease)
    with session_scope() as session:
        return _claim(session, message_ids, known, now, lease)


def _claim(  # type: ignore[no-untyped-def]
    session: Session, message_ids: list[str], known: Gate | None, now, lease
) -> list[tuple[Message, AccountCredentials]]:
    settings = get_settings()
    # The claimed rows come back whole: no second SELECT to load them.
    rows = _CLAIM.tuples(
        session, {"ids": list(message_ids), "now": naive_utc(now), "lease": naive_utc(lease)}
    )
    messages = {m.id: m for m in map(_message, rows)}
    if not messages:
        return []
    opted_out = _opted_out(session, list(messages.values()))
    if known is not None:
        accounts = known.accounts
        heard = known.listening & messages.keys()
    else:
        accounts = {
            a.id: credentials(a)
            for a in session.scalars(
                select(ProviderAccount).where(
                    ProviderAccount.id.in_({m.provider_account_id for m in messages.values()})
                )
            )
        }
        heard = listening(session, list(messages))
    taken: list[tuple[Message, AccountCredentials]] = []
    first_sends: list[str] = []
    sending: list[tuple[str, str | None, bool, dict | None]] = []
    # The rows' events are inserted together at commit, not one flush per row.
    with session.no_autoflush:
        for message_id in message_ids:
            message = messages.get(message_id)
            if message is None:
                continue
            refusal = None
            account = accounts.get(message.provider_account_id)
            if message.attempts > settings.max_attempts:
                refusal = (
                    "retries_exhausted",
                    f"gave up after {settings.max_attempts} attempts",
                )
            elif (message.tenant_id, message.to_number) in opted_out:
                # A STOP that arrived after the message was accepted (a campaign row
                # released hours later, say) still stops it.
                refusal = (
                    "opted_out",
                    "the recipient opted out after the message was accepted",
                )
            elif expired := expired_refusal(message, now):  # its ttl passed while waiting
                refusal = expired
            elif account is None:
                refusal = ("provider_not_configured", "provider account removed")
            elif problem := content_problem(message):
                refusal = ("content_not_sendable", problem)
            if refusal is not None:
                apply_status(
                    session,
                    message_id,
                    "failed",
                    source="worker",
                    error_code=refusal[0],
                    error_message=refusal[1],
                    listening=message_id in heard,
                )
                continue
            assert account is not None
            if message.attempts == 1 and message_id in heard:
                first_sends.append(message_id)  # queued -> sending: an event out
            sending.append((message_id, None, True, {"attempt": message.attempts}))
            taken.append((message, account))
    insert_events(session, "sending", "worker", sending, now)
    _owe_events(session, first_sends)
    return taken


def _opted_out(session, messages: list[Message]) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(tenant, number) pairs among these messages' recipients that have opted out,
    whichever WhatsApp form of the number (or WhatsApp id) the contact holds."""
    if not messages:
        return set()
    forms = {m.to_number: whatsapp_forms(m.to_number) for m in messages}
    every = {form for group in forms.values() for form in group}
    rows = _OPTED_OUT.rows(
        session, {"tenants": list({m.tenant_id for m in messages}), "forms": list(every)}
    )
    out = {(r.tenant_id, r.phone) for r in rows} | {(r.tenant_id, r.wa_id) for r in rows}
    return {
        (m.tenant_id, m.to_number)
        for m in messages
        if any((m.tenant_id, form) in out for form in forms[m.to_number])
    }


def content_problem(message: Message) -> str | None:
    """Why the provider would refuse this row's content, checked again just before
    sending: a row accepted under older rules, or a campaign row, fails here with the
    reason rather than being sent to fail at the provider (or be silently cut)."""
    content = {
        "channel": message.channel,
        "body": message.body,
        "media_url": message.media_urls,
        "template": message.template,
        **(message.options or {}),
    }
    problems = provider_problems(content, message.provider)
    if not problems:
        return None
    return " ".join(f"{field}: {' '.join(texts)}" for field, texts in problems.items())


def outbound_for(message: Message) -> OutboundMessage:
    options = message.options or {}
    return OutboundMessage(
        herald_id=message.id,
        channel=message.channel,
        to=message.to_number,
        body=message.body,
        media_urls=list(message.media_urls or []),
        media_type=options.get("media_type"),
        media_id=options.get("media_id"),
        template=message.template,
        interactive=options.get("interactive"),
        preview_url=bool(options.get("preview_url")),
        status_callback=status_callback_url(message.id) if message.provider == "twilio" else None,
        **outbound_sender(message),  # senders: the sender chosen at accept time
        **conversations.outbound_fields(message),  # reply context, reaction, location…
        expires_at=message.expires_at,
    )


def send_gate(message_id: str) -> float | None:
    """Seconds to wait for the sender's budget (None: nothing to send; 0.0: go).

    Taken before the claim, so a throttled message keeps its attempts: the
    per-sender messages-per-second budget and WhatsApp's pair pacing, both in
    Redis so every worker shares them. A message that must wait is parked: its row
    gets a due time (`not_before`) that the beat's `release_due` acts on, rather
    than a task coming back with a countdown."""
    return send_gates([message_id]).get(message_id)


@dataclass
class Gate:
    """What the gate learned about a batch, so the claim and the record need not ask
    again: the waits (0.0: go), who listens for events, each account's credentials."""

    waits: dict[str, float]
    listening: set[str]
    accounts: dict[str, AccountCredentials]
    # The gate's open transaction, while the batch's first chunk is claimed in it.
    session: Session | None = None


def send_gates(message_ids: list[str]) -> dict[str, float]:
    """`send_gate` for a batch, with one query: ids absent from the answer have nothing
    to send (finished, owned by another attempt, or held for longer than a sweep)."""
    return gate(message_ids).waits


# Decrypted secrets by their ciphertext: a new secret is a new ciphertext, so a cached
# entry is never stale; bounded by the accounts one process sends for.
_secrets: dict[str, dict] = {}
_SECRETS_KEPT = 1000


def _credentials(row) -> AccountCredentials:  # type: ignore[no-untyped-def]
    secrets = _secrets.get(row.secrets_enc)
    if secrets is None:
        if len(_secrets) >= _SECRETS_KEPT:
            _secrets.clear()
        secrets = _secrets[row.secrets_enc] = decrypt_json(row.secrets_enc)
    return AccountCredentials(
        id=row.provider_account_id,
        tenant_id=row.account_tenant_id,
        provider=row.account_provider,
        external_id=row.external_id,
        settings=dict(row.settings or {}),
        secrets=dict(secrets),
    )


def gate(message_ids: list[str], session: Session | None = None) -> Gate:
    """The gate for a batch: one query (the rows, their accounts, who listens), the
    sender holds and budgets in Redis, and one statement parking the rows that must
    wait. A budget slot is reserved for a parked row, so its release sends it without
    asking the budget again; rows parked for a hold or pair pacing ask again. In
    `session`'s transaction when given (the caller commits), else in its own."""
    if session is None:
        with session_scope() as own:
            return gate(message_ids, own)
    rows = _GATE.rows(session, {"ids": list(message_ids)})
    now = utcnow()
    naive_now = naive_utc(now)  # the rows' times are naive UTC
    by_id = {row.id: row for row in rows}
    holds = breaker.holds_for(rows)
    settings = get_settings()
    waits: dict[str, float] = {}
    park: dict[str, tuple[float, bool]] = {}  # id: (seconds, slot reserved)
    budget: dict[tuple[str, str, float], list] = {}
    paced: set[str] = set()
    for message_id in message_ids:  # the caller's order: the oldest takes the budget first
        row = by_id.get(message_id)
        if row is None or message_id in waits or message_id in park:
            continue
        if row.status == "sending" and row.lease_until and row.lease_until > naive_now:
            continue  # another attempt owns it
        if row.slot_reserved and row.not_before and row.not_before > naive_now:
            waits[message_id] = (row.not_before - naive_now).total_seconds()  # parked
            continue
        hold = holds.get(message_id)
        if hold is not None:  # the sender is held (services/policy/breaker.py): not claimed
            breaker.note_held([message_id], hold)
            park[message_id] = (hold.seconds, False)
            if hold.seconds <= settings.sweep_after_seconds:
                waits[message_id] = hold.seconds
            continue
        provider, sender, rate, spacing = _budget(row)
        if spacing > 0:
            pair_wait = take_pair_slot(provider, sender, row.to_number, spacing)
            if pair_wait > 0:
                park[message_id] = (pair_wait, False)
                waits[message_id] = pair_wait
                continue
            paced.add(message_id)
        if row.slot_reserved or rate <= 0:
            waits[message_id] = 0.0  # released: its slot was taken when it was parked
            continue
        budget.setdefault((provider, sender, rate), []).append(row)
    for (provider, sender, rate), group in budget.items():
        for row, wait in zip(
            group, reserve_send_slots(provider, sender, rate, len(group)), strict=True
        ):
            waits[row.id] = wait
            if wait > 0:
                park[row.id] = (wait, True)
                if row.id in paced:  # it does not go now: free the pair slot
                    give_back_pair_slot(provider, sender, row.to_number)
    if park:
        _park(session, park, now)
    go = [mid for mid, wait in waits.items() if wait == 0]
    accounts = {}
    for mid in go:
        row = by_id[mid]
        if row.provider_account_id not in accounts:
            accounts[row.provider_account_id] = _credentials(row)
    return Gate(waits, {r.id for r in rows if r.listening}, accounts)


def _park(session, park: dict[str, tuple[float, bool]], now: datetime) -> None:  # type: ignore[no-untyped-def]
    """Give each row its due time, in one statement."""
    _PARK.execute(
        session,
        {
            "ids": list(park),
            "dues": [naive_utc(now + timedelta(seconds=sec)) for sec, _ in park.values()],
            "reserved": [reserved for _, reserved in park.values()],
        },
    )


def _budget(row) -> tuple[str, str, float, float]:  # type: ignore[no-untyped-def]
    """(provider, sender, messages per second, pair spacing) for a gate row."""
    settings = get_settings()
    account = row.settings or {}
    if row.provider == "meta":
        sender, default_rate = row.external_id, settings.mps_meta
    elif row.channel == "whatsapp":
        sender = account.get("whatsapp_from") or account.get("messaging_service_sid") or ""
        default_rate = settings.mps_twilio_whatsapp
    else:
        sender = account.get("sms_from") or account.get("messaging_service_sid") or ""
        default_rate = settings.mps_twilio_sms
    rate = float(account.get("mps") or default_rate)
    picked = sender_for(row)  # senders: the row's own sender, at its own rate
    if picked is not None:
        sender, rate = picked[0], picked[1] or rate
    spacing = settings.pair_pacing_seconds if row.channel == "whatsapp" else 0.0
    return row.provider, sender, rate, spacing


def release_parked(limit: int = 5000) -> list[tuple[str, str | None]]:
    """Parked rows whose due time has come, released in one statement: (id, campaign)
    of those still to send. The beat runs this every second; a release whose doorbell
    is lost is found by the sweeper like any queued row."""
    now = utcnow()
    due = (
        select(Message.id)
        .where(Message.not_before <= now)
        .order_by(Message.not_before)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    with session_scope() as session:
        rows = session.execute(
            update(Message)
            .where(Message.id.in_(due))
            .values(not_before=None, updated_at=now)
            .returning(Message.id, Message.campaign_id, Message.status)
            .execution_options(synchronize_session=False)
        ).all()
    return [(r.id, r.campaign_id) for r in rows if r.status in ("queued", "sending")]


def deliver(message_id: str) -> DeliveryOutcome:
    """One attempt at sending `message_id`. Safe to call any number of times."""
    return deliver_many([message_id])[0]


def send_claimed(message: Message, account: AccountCredentials) -> SendResult | DeliveryOutcome:
    """The provider call for a claimed row. A fresh acceptance is returned for the
    caller to record (one at a time, or a batch in one transaction); every other
    outcome (adopted earlier copy, retry, failure) is recorded here."""
    provider = get_provider(message.provider)
    outbound = outbound_for(message)
    if message.provider_message_id:
        # A callback (Twilio's `queued`/`sending`, say) already named the provider's
        # copy: the provider has it, whatever happened to the earlier answer.
        known = SendResult(provider_message_id=message.provider_message_id, native_status="known")
        _record_sent(message, known, reconciled=True)
        return SENT
    try:
        if message.attempts > 1:
            # An earlier attempt's outcome is unknown: ask the provider before resending.
            found = reconcile(provider, account, message, outbound)
            if found is not None and _record_sent(message, found, reconciled=True):
                return SENT
        return provider.send(account, outbound)
    except ProviderError as exc:
        return _record_error(message, exc)
    except Exception as exc:  # a bug or an unmapped library error, mid-call
        log.exception("unexpected error sending id=%s", message.id)
        # The request may have gone out: treat it like any ambiguous answer.
        unexpected = ProviderError(ErrorKind.AMBIGUOUS, f"unexpected {type(exc).__name__}")
        return _record_error(message, unexpected)


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
        _record_sent_many(accepted, known.listening)
        if accepted:  # mark the conversation read, when asked (no query otherwise)
            accounts = {message.id: account for message, account in claims}
            for message, _ in accepted:
                conversations.after_send(message, accounts[message.id])
        if not go:
            break
        width = _take_slots(len(go))
        chunk, go = go[:width], go[width:]
        try:
            claims = claim_many(chunk, known)
        except BaseException:
            _release_slots(width)
            raise
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


def _record_sent_many(
    accepted: list[tuple[Message, SendResult]], heard: set[str] | None = None
) -> None:
    """Record a batch's acceptances in one transaction; if that fails, one by one, so
    one bad row cannot leave the others unrecorded (they would settle by callback or
    reconciliation anyway, but later). `heard`: the batch's listening messages, when
    the gate already read them."""
    if not accepted:
        return
    try:
        with session_scope() as session:
            if heard is None:
                heard = listening(session, [message.id for message, _ in accepted])
            record_sent_batch(session, accepted, heard)
    except Exception:
        log.exception("recording a batch of %d sends failed; recording one by one", len(accepted))
        for message, result in accepted:
            try:
                _store_sent(message, result, reconciled=False)
            except Exception:
                log.exception("recording send id=%s failed; left to settle", message.id)
        return
    for message, result in accepted:
        _log_sent(message, result)


def record_sent_batch(
    session: Session, accepted: list[tuple[Message, SendResult]], heard: set[str]
) -> set[str]:
    """`apply_status(..., "sent")` for a batch, set-based: one statement moves every
    row still before `sent` (forward only: a row a callback already moved to delivered,
    read or a failure keeps its status and gets only the provider's facts) and records
    the events, and the listening tenants' events out are owed in one more. Returns the
    ids whose status moved."""
    now = utcnow()
    moved = set(
        _SENT.scalars(
            session,
            {
                "ids": [m.id for m, _ in accepted],
                "pids": [r.provider_message_id for _, r in accepted],
                "prices": [r.price for _, r in accepted],
                "units": [r.price_unit for _, r in accepted],
                "senders": [r.sender for _, r in accepted],
                "natives": [r.native_status for _, r in accepted],
                "now": naive_utc(now),
                "allowed": allowed_from("sent"),
            },
        )
    )
    _owe_events(session, [m.id for m, _ in accepted if m.id in moved and m.id in heard])
    for message, result in accepted:
        if result.recipient_id and result.recipient_id != message.to_number:
            remember_wa_id(session, message, result.recipient_id)
    wamids = {r.provider_message_id: m for m, r in accepted if m.provider == "meta"}
    if wamids:  # statuses that arrived before the wamid was known
        from services.callbacks.meta_events import _orphans, apply_orphan_statuses

        for wamid in {o.provider_message_id for o in _orphans(session, list(wamids))}:
            apply_orphan_statuses(session, wamids[wamid].id, wamid)
    return moved


def _owe_events(session: Session, message_ids: list[str]) -> None:
    """`record_status_event` for a batch of moved rows: one read, one INSERT."""
    if not message_ids:
        return
    owed = [
        (_message(row[:-1]), row[-1])
        for row in _OWED.tuples(session, {"ids": message_ids})
        if row[-1]
    ]
    if owed:
        _OWE.execute(
            session,
            {
                "now": naive_utc(utcnow()),
                "ids": [m.id for m, _ in owed],
                "tenants": [m.tenant_id for m, _ in owed],
                "urls": [url for _, url in owed],
                "payloads": [
                    json.dumps(
                        {"type": "message.status", "message": message_to_dict(m, events=False)}
                    )
                    for m, _ in owed
                ],
            },
        )
        enqueue_after_commit(session, [m.id for m, _ in owed], EVENTS_QUEUE, EVENTS_TASK)


# Attempt outcomes after which the provider certainly did not take the message.
NOT_TAKEN = frozenset({ErrorKind.TRANSIENT.value, ErrorKind.RATE_LIMITED.value})
RECONCILE_AMBIGUOUS = "reconcile_ambiguous"


def reconcile(
    provider: Provider, account: AccountCredentials, message: Message, outbound: OutboundMessage
) -> SendResult | None:
    """The provider's record of this message, if an earlier attempt reached it; None
    when no earlier attempt can have (send it now).

    The provider's listing cannot say which attempt a copy came from (Twilio's Message
    resource returns neither the StatusCallback URL nor anything else only one attempt
    carries), so a copy is adopted only by elimination: a copy with this body,
    recipient and sender that no Herald message holds (the newest, if this message's
    own attempts left several), when no other Herald message alike (same provider
    account, recipient, body, no provider id, tried since) could own it. Otherwise
    nothing is adopted and nothing is sent: ProviderError
    (ambiguous) holds the row for another settle window, in which the copy's own
    callback (Herald's id in its URL) settles whichever message it belongs to.

    Only a message with a body can be recognised (templates and media-only messages
    to one user look alike), and only among sends made since its first attempt."""
    if not outbound.body or outbound.template:
        return None
    with session_scope() as session:
        events = session.execute(
            select(MessageEvent.at, MessageEvent.error_code, MessageEvent.detail)
            .where(
                MessageEvent.message_id == message.id,
                MessageEvent.status == "sending",
                MessageEvent.source == "worker",
            )
            .order_by(MessageEvent.id)
        ).all()
    not_taken = sum(
        1
        for e in events
        if e.error_code == RECONCILE_AMBIGUOUS
        or (isinstance(e.detail, dict) and e.detail.get("kind") in NOT_TAKEN)
    )
    if not_taken >= message.attempts - 1:
        return None  # every earlier attempt was refused before the provider took it
    first_attempt = min((e.at for e in events), default=None)
    since = (first_attempt or message.created_at) - timedelta(seconds=5)  # clock drift
    candidates = provider.find_sent(account, outbound, since)
    if not candidates:
        return None
    with session_scope() as session:
        owned = set(
            session.scalars(
                select(Message.provider_message_id).where(
                    Message.provider == message.provider,
                    Message.provider_message_id.in_([c.provider_message_id for c in candidates]),
                )
            )
        )
        unowned = [c for c in candidates if c.provider_message_id not in owned]
        if not unowned:
            return None
        rivals = session.scalar(
            select(func.count())
            .select_from(Message)
            .join(ProviderAccount, ProviderAccount.id == Message.provider_account_id)
            .where(
                ProviderAccount.provider == account.provider,
                ProviderAccount.external_id == account.external_id,
                Message.id != message.id,
                Message.direction == "outbound",
                Message.status.in_(("sending", "failed")),
                Message.provider == message.provider,
                Message.channel == message.channel,
                Message.to_number == message.to_number,
                Message.body == message.body,
                Message.provider_message_id.is_(None),
                Message.attempts > 0,
                Message.updated_at >= since,
            )
        )
    if not rivals:
        return unowned[0]  # the newest: find_sent lists newest first
    log.warning(
        "reconcile id=%s: %d unclaimed copies at the provider, %d other messages alike; "
        "waiting for a callback",
        message.id,
        len(unowned),
        rivals,
    )
    raise ProviderError(
        ErrorKind.AMBIGUOUS,
        f"{len(unowned)} copies at the provider could be this message "
        f"({rivals} other messages alike): waiting for a callback",
        code=RECONCILE_AMBIGUOUS,
    )


def _record_sent(message: Message, result: SendResult, *, reconciled: bool = False) -> bool:
    """Record the provider's acceptance. False if an adopted id turned out to belong to
    another message (reconciliation raced that message's own record): nothing stored."""
    if reconciled:
        try:
            _store_sent(message, result, reconciled)
        except IntegrityError:
            return False
        return True
    _store_sent(message, result, reconciled)
    return True


def _past_lease_and_settle(state) -> bool:  # type: ignore[no-untyped-def]
    settings = get_settings()
    return state.seconds_since_start > settings.send_lease_seconds + settings.settle_seconds


# Recording what the provider answered must outlive a database blip: the answer exists
# only in this worker's memory, and a row left in `sending` would be settled by a resend
# once its lease expires (Meta cannot be asked). So the write is retried every half
# second while the database is unreachable, until the lease and settle window are over.
_retry_while_database_down = retry(
    retry=retry_if_exception(database_unavailable),
    wait=wait_fixed(0.5),
    stop=_past_lease_and_settle,
    reraise=True,
)


@_retry_while_database_down
def _store_sent(message: Message, result: SendResult, reconciled: bool) -> None:
    with session_scope() as session:
        _apply_sent(session, message, result, reconciled)
    _log_sent(message, result)


def _apply_sent(  # type: ignore[no-untyped-def]
    session, message: Message, result: SendResult, reconciled: bool, heard: bool | None = None
) -> None:
    apply_status(
        session,
        message.id,
        "sent",
        source="worker",
        native_status=result.native_status,
        detail={"reconciled": True} if reconciled else None,
        provider_message_id=result.provider_message_id,
        price=result.price,
        price_unit=result.price_unit,
        from_number=result.sender,
        listening=heard,
    )
    if result.recipient_id and result.recipient_id != message.to_number:
        remember_wa_id(session, message, result.recipient_id)
    if message.provider == "meta":  # statuses that arrived before the wamid was known
        from services.callbacks.meta_events import apply_orphan_statuses

        apply_orphan_statuses(session, message.id, result.provider_message_id)


def remember_wa_id(session, message: Message, wa_id: str) -> None:  # type: ignore[no-untyped-def]
    """Meta reported another WhatsApp id than the number dialled (its send answer, or a
    status's `recipient_id`): keep it on the message and the contact, so a reply from it
    (its `from`) finds this contact."""
    session.execute(
        update(Message)
        .where(Message.id == message.id)
        .values(wa_id=wa_id)
        .execution_options(synchronize_session=False)
    )
    contact = contact_for(session, message.tenant_id, message.to_number)
    if contact is not None and contact.wa_id != wa_id:
        contact.wa_id = wa_id


def _log_sent(message: Message, result: SendResult) -> None:
    log.info(
        "message sent id=%s provider=%s to=%s provider_id=%s",
        message.id,
        message.provider,
        mask(message.to_number),
        result.provider_message_id,
    )


def backoff(attempt: int, hint: float | None = None) -> float:
    """Exponential backoff with full jitter, capped at five minutes; a provider's hint wins."""
    if hint is not None:
        return min(max(hint, 1.0), 900.0)
    return random.uniform(1.0, min(300.0, 2.0 ** min(attempt, 10)))


@_retry_while_database_down
def _record_error(message: Message, exc: ProviderError) -> DeliveryOutcome:
    settings = get_settings()
    hold = breaker.trip(message, exc)
    if hold is not None:  # about the sender, not this message: it waits, queued
        breaker.requeue_tripped(message, hold, exc)
        if hold.seconds <= settings.sweep_after_seconds:
            return DeliveryOutcome("held", retry_in=hold.seconds + 0.5)
        return DeliveryOutcome("held")
    now = utcnow()
    detail = {"kind": exc.kind.value, "message": exc.message, "http_status": exc.http_status}
    detail.update(exc.details or {})
    with session_scope() as session:
        # An ambiguous last attempt still settles first: a callback may prove it sent,
        # and failing it now would make a delivered message terminally `failed`.
        exhausted = (
            message.attempts >= settings.max_attempts and exc.kind is not ErrorKind.AMBIGUOUS
        )
        if exc.kind is ErrorKind.PERMANENT or exhausted:
            if exc.kind is ErrorKind.PERMANENT:
                code = error_name(message.provider, exc.code) or exc.code or exc.kind.value
            else:
                code = "retries_exhausted"
            apply_status(
                session,
                message.id,
                "failed",
                source="worker",
                error_code=code,
                provider_code=exc.code,
                error_message=exc.message,
                detail=detail,
            )
            if exc.opt_out:
                mark_opted_out(session, message.tenant_id, message.to_number)
            log.warning(
                "message failed id=%s provider=%s code=%s kind=%s",
                message.id,
                message.provider,
                code,
                exc.kind.value,
            )
            return DeliveryOutcome("failed")
        if exc.kind is ErrorKind.AMBIGUOUS:
            wait = float(settings.settle_seconds)
        else:
            floor = 5.0 if exc.kind is ErrorKind.RATE_LIMITED else 0.0
            wait = max(floor, backoff(message.attempts, exc.retry_after))
        # Hold the lease until the retry: a callback arriving meanwhile settles it.
        session.execute(
            update(Message)
            .where(Message.id == message.id, Message.status == "sending")
            .values(lease_until=now + timedelta(seconds=wait), updated_at=now)
            .execution_options(synchronize_session=False)
        )
        detail["retry_in"] = round(wait, 2)
        session.add(
            MessageEvent(
                message_id=message.id,
                status="sending",
                source="worker",
                applied=False,
                error_code=exc.code or exc.kind.value,
                detail=detail,
                at=now,
            )
        )
    log.info(
        "message retry id=%s provider=%s kind=%s code=%s in=%.1fs",
        message.id,
        message.provider,
        exc.kind.value,
        exc.code,
        wait,
    )
    return DeliveryOutcome("retry", retry_in=wait + 0.5)


def mark_opted_out(session, tenant_id: str, phone: str) -> None:  # type: ignore[no-untyped-def]
    """The provider says this recipient opted out: remember it on the contact."""
    contact = contact_for(session, tenant_id, phone)  # also its other WhatsApp form
    if contact is None:
        contact = Contact(tenant_id=tenant_id, phone=phone)
        session.add(contact)
    contact.opted_out = True
    contact.opted_out_at = utcnow()


def due_for_sweep(limit: int = 500) -> list[tuple[str, str]]:
    """Rows whose doorbell may have been lost: `queued` untouched for a while, or
    `sending` with an expired lease, and not parked until later. Re-enqueueing is
    safe: the claim dedups."""
    settings = get_settings()
    now = utcnow()
    stale = now - timedelta(seconds=settings.sweep_after_seconds)
    with session_scope() as session:
        rows = session.execute(
            select(Message.id, Message.campaign_id)
            .where(
                Message.direction == "outbound",
                or_(
                    and_(Message.status == "queued", Message.updated_at < stale),
                    and_(Message.status == "sending", Message.lease_until < now),
                ),
                # A parked row is the beat's until its due time (then, if the beat is
                # down, this sweeper's again).
                or_(Message.not_before.is_(None), Message.not_before <= now),
            )
            .order_by(Message.id)
            .limit(limit)
        ).all()
        ids = [r[0] for r in rows]
        if ids:
            session.execute(
                update(Message)
                .where(Message.id.in_(ids), Message.status == "queued")
                .values(updated_at=now)
                .execution_options(synchronize_session=False)
            )
        return [(r[0], r[1]) for r in rows]


def release_scheduled(limit: int = 1000) -> list[str]:
    """Move `scheduled` messages whose time has come to `queued`; returns their ids."""
    now = utcnow()
    with session_scope() as session:
        ids = list(
            session.scalars(
                select(Message.id)
                .where(Message.status == "scheduled", Message.send_at <= now)
                .order_by(Message.send_at)
                .limit(limit)
            )
        )
        released = [i for i in ids if apply_status(session, i, "queued", source="scheduler")]
    return released
