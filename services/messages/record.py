"""Recording what a send did: acceptances set-based per batch, errors one by one (retry,
hold or fail), and for an outcome nobody knows, the provider asked before a resend.

When the provider may have taken the message without Herald knowing (timeout, 5xx, a
worker killed mid-call), the lease is held for HERALD_SETTLE_SECONDS: a callback
arriving meanwhile moves the row past `sending` and no resend happens; only a row
nobody has heard of is sent again."""

from __future__ import annotations

import logging
import random
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from tenacity import retry, retry_if_exception, wait_fixed

from core.config import get_settings
from core.errors import database_unavailable
from core.logs import mask
from models import (
    Message,
    MessageEvent,
    ProviderAccount,
    session_scope,
    utcnow,
)
from models.fast import Statement, naive_utc
from providers import (
    ErrorKind,
    OutboundMessage,
    Provider,
    ProviderError,
    SendResult,
    error_name,
)
from providers.base import AccountCredentials
from services.messages.campaign_content import same_body
from services.messages.claim import DeliveryOutcome, owe_events
from services.messages.status import allowed_from, apply_status
from services.policy import breaker, health
from services.policy.consent import mark_opted_out
from services.policy.contacts import remember_wa_id
from services.reporting.events import listening

log = logging.getLogger(__name__)

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


def record_sent_many(
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
        _note_accepted(message)


def _note_accepted(message: Message) -> None:
    """A sender in a failover order that the provider took a message from is healthy."""
    ranked = health.ranked_sender(message)
    if ranked is not None:
        health.note_success(*ranked)


def _note_failed(message: Message, exc: ProviderError) -> None:
    """An error about the provider (not the message) counts against its sender's health
    when the sender is in a failover order (services/policy/health.py)."""
    ranked = health.ranked_sender(message)
    if ranked is not None and exc.kind in (ErrorKind.TRANSIENT, ErrorKind.AMBIGUOUS):
        health.note_error(*ranked)


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
    owe_events(session, [m.id for m, _ in accepted if m.id in moved and m.id in heard])
    for message, result in accepted:
        if result.recipient_id and result.recipient_id != message.to_number:
            remember_wa_id(session, message, result.recipient_id)
    wamids = {r.provider_message_id: m for m, r in accepted if m.provider == "meta"}
    if wamids:  # statuses that arrived before the wamid was known
        from services.callbacks.meta_orphans import _orphans, apply_orphan_statuses

        for wamid in {o.provider_message_id for o in _orphans(session, list(wamids))}:
            apply_orphan_statuses(session, wamids[wamid].id, wamid)
    return moved


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
                same_body(message.body),  # a campaign's row: its campaign's body
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


def record_sent(message: Message, result: SendResult, *, reconciled: bool = False) -> bool:
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
    _note_accepted(message)


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
        from services.callbacks.meta_orphans import apply_orphan_statuses

        apply_orphan_statuses(session, message.id, result.provider_message_id)


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
def record_error(message: Message, exc: ProviderError) -> DeliveryOutcome:
    settings = get_settings()
    _note_failed(message, exc)
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
