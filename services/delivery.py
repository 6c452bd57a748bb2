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
"""

from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from herald.config import get_settings
from models import Contact, Message, MessageEvent, ProviderAccount, session_scope, utcnow
from providers import (
    ErrorKind,
    OutboundMessage,
    Provider,
    ProviderError,
    SendResult,
    error_name,
    get_provider,
)
from services.events import record_status_event
from services.limits import take_send_slot
from services.phones import mask
from services.policy import contact_for
from services.status import apply_status
from services.tenants import AccountCredentials, credentials

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryOutcome:
    action: str  # sent | failed | retry | throttled | skipped
    retry_in: float | None = None


SKIPPED = DeliveryOutcome("skipped")


def status_callback_url(message_id: str) -> str:
    return f"{get_settings().public_url}/webhooks/twilio/status?message_id={message_id}"


def claim_for_sending(message_id: str) -> tuple[Message, AccountCredentials] | None:
    """Take the row for one send attempt, or None if another attempt owns or finished it."""
    settings = get_settings()
    now = utcnow()
    lease = now + timedelta(seconds=settings.send_lease_seconds + settings.http_timeout)
    with session_scope() as session:
        claimed = session.execute(
            update(Message)
            .where(
                Message.id == message_id,
                Message.direction == "outbound",
                or_(
                    Message.status == "queued",
                    and_(Message.status == "sending", Message.lease_until < now),
                ),
            )
            .values(
                status="sending",
                attempts=Message.attempts + 1,
                lease_until=lease,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:
            return None
        message = session.get(Message, message_id)
        assert message is not None
        session.refresh(message)
        if message.attempts > settings.max_attempts:
            apply_status(
                session,
                message_id,
                "failed",
                source="worker",
                error_code="retries_exhausted",
                error_message=f"gave up after {settings.max_attempts} attempts",
            )
            return None
        contact = contact_for(session, message.tenant_id, message.to_number)
        if contact is not None and contact.opted_out:
            # A STOP that arrived after the message was accepted (a campaign row
            # released hours later, say) still stops it.
            apply_status(
                session,
                message_id,
                "failed",
                source="worker",
                error_code="opted_out",
                error_message="the recipient opted out after the message was accepted",
            )
            return None
        if message.attempts == 1:
            record_status_event(session, message_id)  # queued -> sending
        session.add(
            MessageEvent(
                message_id=message_id,
                status="sending",
                source="worker",
                detail={"attempt": message.attempts},
                at=now,
            )
        )
        account = session.get(ProviderAccount, message.provider_account_id)
        if account is None:
            apply_status(
                session,
                message_id,
                "failed",
                source="worker",
                error_code="provider_not_configured",
                error_message="provider account removed",
            )
            return None
        return message, credentials(account)


def outbound_for(message: Message) -> OutboundMessage:
    options = message.options or {}
    return OutboundMessage(
        herald_id=message.id,
        channel=message.channel,
        to=message.to_number,
        body=message.body,
        media_urls=list(message.media_urls or []),
        media_type=options.get("media_type"),
        template=message.template,
        interactive=options.get("interactive"),
        preview_url=bool(options.get("preview_url")),
        status_callback=status_callback_url(message.id) if message.provider == "twilio" else None,
    )


def send_gate(message_id: str) -> float | None:
    """Seconds to wait for the sender's budget (None: nothing to send; 0.0: go).

    Taken before the claim, so a throttled message keeps its attempts: the
    per-sender messages-per-second bucket and WhatsApp's pair pacing, both in
    Redis so every worker shares them."""
    settings = get_settings()
    with session_scope() as session:
        row = session.execute(
            select(
                Message.status,
                Message.lease_until,
                Message.provider,
                Message.channel,
                Message.to_number,
                ProviderAccount.external_id,
                ProviderAccount.settings,
            )
            .join(ProviderAccount, ProviderAccount.id == Message.provider_account_id)
            .where(Message.id == message_id)
        ).first()
    if row is None or row.status not in ("queued", "sending"):
        return None
    if row.status == "sending" and row.lease_until and row.lease_until > utcnow():
        return None  # another attempt owns it
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
    spacing = settings.pair_pacing_seconds if row.channel == "whatsapp" else 0.0
    return take_send_slot(row.provider, sender, row.to_number, rate, spacing)


def deliver(message_id: str) -> DeliveryOutcome:
    """One attempt at sending `message_id`. Safe to call any number of times."""
    wait = send_gate(message_id)
    if wait is None:
        return SKIPPED
    if wait > 0:
        return DeliveryOutcome("throttled", retry_in=wait)
    claim = claim_for_sending(message_id)
    if claim is None:
        return SKIPPED
    message, account = claim
    provider = get_provider(message.provider)
    outbound = outbound_for(message)
    if message.provider_message_id:
        # A callback (Twilio's `queued`/`sending`, say) already named the provider's
        # copy: the provider has it, whatever happened to the earlier answer.
        known = SendResult(provider_message_id=message.provider_message_id, native_status="known")
        _record_sent(message, known, reconciled=True)
        return DeliveryOutcome("sent")
    try:
        if message.attempts > 1:
            # An earlier attempt's outcome is unknown: ask the provider before resending.
            found = reconcile(provider, account, message, outbound)
            if found is not None and _record_sent(message, found, reconciled=True):
                return DeliveryOutcome("sent")
        result = provider.send(account, outbound)
    except ProviderError as exc:
        return _record_error(message, exc)
    except Exception as exc:  # a bug or an unmapped library error, mid-call
        log.exception("unexpected error sending id=%s", message.id)
        # The request may have gone out: treat it like any ambiguous answer.
        unexpected = ProviderError(ErrorKind.AMBIGUOUS, f"unexpected {type(exc).__name__}")
        return _record_error(message, unexpected)
    _record_sent(message, result)
    return DeliveryOutcome("sent")


_batch_pool: ThreadPoolExecutor | None = None
_batch_lock = threading.Lock()


def deliver_many(message_ids: list[str]) -> list[DeliveryOutcome]:
    """Send a batch concurrently from one task: campaign sends are I/O-bound, and one
    Python round trip per recipient would cap a worker far below the providers' rates."""
    global _batch_pool
    with _batch_lock:
        if _batch_pool is None:
            _batch_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="herald-batch")
    return list(_batch_pool.map(deliver, message_ids))


def reconcile(
    provider: Provider, account: AccountCredentials, message: Message, outbound: OutboundMessage
) -> SendResult | None:
    """The provider's record of this message, if an earlier attempt reached it:
    the newest candidate that no other Herald message already owns.

    Only a message with a body can be recognised (templates and media-only messages
    to one user look alike), and only among sends made since its first attempt."""
    if not outbound.body or outbound.template:
        return None
    with session_scope() as session:
        first_attempt = session.scalar(
            select(func.min(MessageEvent.at)).where(
                MessageEvent.message_id == message.id, MessageEvent.status == "sending"
            )
        )
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
    return next((c for c in candidates if c.provider_message_id not in owned), None)


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


def _store_sent(message: Message, result: SendResult, reconciled: bool) -> None:
    with session_scope() as session:
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
        )
        if result.sender:
            session.execute(
                update(Message)
                .where(Message.id == message.id, Message.from_number.is_(None))
                .values(from_number=result.sender)
                .execution_options(synchronize_session=False)
            )
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


def _record_error(message: Message, exc: ProviderError) -> DeliveryOutcome:
    settings = get_settings()
    now = utcnow()
    detail = {"kind": exc.kind.value, "message": exc.message, "http_status": exc.http_status}
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
    contact = session.scalars(
        select(Contact).where(Contact.tenant_id == tenant_id, Contact.phone == phone)
    ).first()
    if contact is None:
        contact = Contact(tenant_id=tenant_id, phone=phone)
        session.add(contact)
    contact.opted_out = True
    contact.opted_out_at = utcnow()


def due_for_sweep(limit: int = 500) -> list[tuple[str, str]]:
    """Rows whose doorbell may have been lost: `queued` untouched for a while, or
    `sending` with an expired lease. Re-enqueueing is safe: the claim dedups."""
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
