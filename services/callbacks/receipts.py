"""What every provider callback shares: its receipt in `webhook_events` under a dedup
key, and the message it is about.

Each callback item is written to `webhook_events` under a unique dedup key in the same
transaction that applies it, so a duplicate delivery (even two at the same instant in
two API processes) changes nothing the second time, and a failure while applying rolls
the receipt back so the provider's retry is not mistaken for a duplicate. The key names
the provider account the item belongs to (or that signed it), so one tenant's secret
cannot pre-record another's callback. Nothing a provider (or anyone) posts answers 500."""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import Message, WebhookEvent
from models.fast import Statement, json_rows
from services.content.phones import normalize_e164
from services.messages.status import apply_status
from services.tenancy.tenants import (
    AccountCredentials,
)

log = logging.getLogger(__name__)


def dedup_key(provider: str, scope: str, *parts: str) -> str:
    """A receipt's unique key, scoped to the account that signed it (or the message's
    account): a tenant signing with its own secret cannot pre-record, and so drop,
    another tenant's callback."""
    return ":".join((provider, scope, *parts))


def signer_scope(accounts: list[AccountCredentials] | list[str]) -> str:
    return min(_ids(accounts))


def _ids(accounts: list[AccountCredentials] | list[str]) -> list[str]:
    return [a if isinstance(a, str) else a.id for a in accounts]


def record_once(session: Session, **values: Any) -> WebhookEvent | None:
    """Insert the receipt; None if its dedup key was already recorded (a duplicate)."""
    receipt = WebhookEvent(**values)
    try:
        with session.begin_nested():
            session.add(receipt)
            session.flush()
    except IntegrityError:
        return None
    return receipt


def find_message(
    session: Session,
    accounts: list[AccountCredentials] | list[str],
    herald_id: str | None,
    provider_id: str | None,
    *,
    provider: str,
) -> Message | None:
    """The outbound message a callback is about: by Herald's own id (known before
    the provider's id is stored), else by `provider`'s id (named, so the lookup is one
    entry of the provider-id index, not a scan of it); only among messages of the
    accounts (or account ids) that signed the callback."""
    query = select(Message).where(
        Message.provider_account_id.in_(_ids(accounts)), Message.direction == "outbound"
    )
    if isinstance(herald_id, str) and herald_id:
        message = session.scalars(query.where(Message.id == herald_id)).first()
        if message is not None:
            return message
    if provider_id:
        return session.scalars(
            query.where(Message.provider == provider, Message.provider_message_id == provider_id)
        ).first()
    return None


def apply_callback_status(
    session: Session, message: Message, new: str, *, provider_message_id: str, **facts: Any
) -> None:
    """Apply a callback's status; its provider id is copied only if no other message
    holds it (unique): the callback's own correlation (Herald's id) is what matched
    it, so a clash is logged and noted, never a 500."""
    provider = message.provider
    if provider_message_id and message.provider_message_id != provider_message_id:
        holder = session.scalar(
            select(Message.id).where(
                Message.provider == provider,
                Message.provider_message_id == provider_message_id,
                Message.id != message.id,
            )
        )
        if holder is not None:
            log.warning(
                "%s callback for id=%s names provider id %s held by id=%s: not copied",
                provider,
                message.id,
                provider_message_id,
                holder,
            )
            facts["detail"] = {**(facts.get("detail") or {}), "provider_id_conflict": True}
            provider_message_id = ""
    try:
        with session.begin_nested():
            apply_status(
                session,
                message.id,
                new,
                source=provider,
                provider_message_id=provider_message_id or None,
                **facts,
            )
    except IntegrityError:  # another row took the id since the check
        facts["detail"] = {**(facts.get("detail") or {}), "provider_id_conflict": True}
        apply_status(session, message.id, new, source=provider, **facts)


def parse_price(value: Any) -> Decimal | None:
    try:
        price = abs(Decimal(str(value))) if value not in (None, "") else None
    except InvalidOperation:
        return None
    # The column holds 12 digits, 5 after the point.
    return price if price is not None and price.is_finite() and price < 10**7 else None


def short_text(value: Any, limit: int) -> str | None:
    """`value` if it is a non-empty string of at most `limit` characters, else None."""
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def reported_sender(raw: Any) -> str | None:
    """The sender a Twilio status callback names, as Twilio wrote it (`whatsapp:` kept,
    like the sender the worker records): with a Messaging Service only the callback says
    which number the service chose. Anything that does not look like a sender (E.164, a
    short code, an alphanumeric sender id) is ignored, never an error."""
    value = short_text(raw, 64)
    if value is None:
        return None
    bare = value.removeprefix("whatsapp:")
    e164 = bare.startswith("+") and bare[1:].isdigit() and 8 <= len(bare) <= 16
    short = bare.isascii() and bare.replace(" ", "").isalnum() and 0 < len(bare) <= 11
    return value if e164 or (short and not value.startswith("whatsapp:")) else None


def sender_phone(raw: Any) -> str | None:
    """The E.164 form of an inbound sender, or the raw sender when it is short enough
    to be a short code or an id (kept as the provider sent it); None if unusable."""
    if not isinstance(raw, str):
        return None
    return normalize_e164(raw) or short_text(raw.removeprefix("whatsapp:").strip(), 32)


_RECEIPT_COLUMNS = (
    "provider",
    "kind",
    "dedup_key",
    "message_id",
    "tenant_id",
    "provider_message_id",
    "payload",
    "received_at",
)
# Many receipts, one statement (models.fast): their rows as one JSON array, inserted in
# the order given; RETURNING names the keys that were new.
_RECEIPTS = Statement(
    f"""
    INSERT INTO webhook_events ({", ".join(_RECEIPT_COLUMNS)})
    SELECT {", ".join(f"r.{name}" for name in _RECEIPT_COLUMNS)}
    FROM ROWS FROM (json_to_recordset(:rows::json) AS (
        provider text, kind text, dedup_key text, message_id text, tenant_id text,
        provider_message_id text, payload json, received_at timestamp
    )) WITH ORDINALITY AS r({", ".join(_RECEIPT_COLUMNS)}, ord)
    ORDER BY r.ord
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING dedup_key
    """
)


def record_receipts(session: Session, receipts: list[dict[str, Any]]) -> set[str]:
    """Insert many receipts at once; the dedup keys that were new (the others had been
    recorded before: duplicates)."""
    if not receipts:
        return set()
    return set(_RECEIPTS.scalars(session, {"rows": json_rows(receipts)}))


def status_receipt(
    session: Session,
    provider: str,
    accounts: list[AccountCredentials] | list[str],
    herald_id: str | None,
    provider_id: str,
    native: str,
    payload: dict[str, Any],
    *,
    tenant_id: str | None = None,
    at: datetime | None = None,
) -> tuple[Message | None, bool]:
    """The message a status callback is about (or None) and whether its receipt is new
    (False: a duplicate, changing nothing). The receipt's key is scoped to the message's
    account, else to the signers; kept without a message under `tenant_id` if given."""
    message = find_message(session, accounts, herald_id, provider_id, provider=provider)
    receipt = record_once(
        session,
        provider=provider,
        kind="status",
        dedup_key=dedup_key(
            provider,
            message.provider_account_id if message else signer_scope(accounts),
            provider_id,
            native,
        ),
        message_id=message.id if message else None,
        tenant_id=message.tenant_id if message else tenant_id,
        provider_message_id=provider_id,
        payload=payload,
        **({"received_at": at} if at else {}),
    )
    return message, receipt is not None
