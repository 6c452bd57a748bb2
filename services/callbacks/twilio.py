"""Twilio's webhooks: status callbacks (kept in the inbox, applied in batches) and inbound
messages."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from core.errors import InvalidRequest
from models import Message, utcnow
from providers import error_name
from services.callbacks.inbound import keep_unrouted, store_inbound
from services.callbacks.receipts import (
    apply_callback_status,
    dedup_key,
    parse_price,
    record_receipts,
    reported_sender,
    sender_phone,
    short_text,
    signer_scope,
    status_receipt,
)
from services.callbacks.signatures import MAX_ID_LENGTH, clean_text
from services.content.media import inbound_media_options
from services.content.phones import normalize_e164
from services.tenancy.tenants import (
    AccountCredentials,
)

log = logging.getLogger(__name__)

# Twilio's statuses onto Herald's. `canceled` at Twilio means it will never be
# delivered, which for Herald's caller is a failure; the native value is kept.
TWILIO_STATUS = {
    "accepted": "queued",
    "scheduled": "queued",
    "queued": "queued",
    "sending": "sending",
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "undelivered",
    "failed": "failed",
    "canceled": "failed",
}

TWILIO_STATUS_KIND = "twilio_status"  # its rows in the inbox (services/callbacks/inbox.py)


def twilio_status_fields(form: dict[str, str]) -> tuple[dict[str, str], str, str]:
    """The callback's form made storable, its MessageSid and its (lower-case) status."""
    form = {k: clean_text(v) for k, v in form.items()}
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    native = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    if len(sid) > MAX_ID_LENGTH or len(native) > 32:
        raise InvalidRequest("MessageSid or MessageStatus is not one Twilio sends.")
    return form, sid, native


def _herald_ref(value: Any) -> str | None:
    """Herald's message id as a callback URL names it, or None for anything no message
    id can be (a message id is at most 32 ASCII characters)."""
    ok = isinstance(value, str) and 0 < len(value) <= 32 and value.isascii()
    return value if ok and value.isprintable() else None


def receive_twilio_status(
    accounts: list[AccountCredentials], form: dict[str, str], herald_id: str | None
) -> bool:
    """Ingest one signed Twilio status callback: one row of the inbox, committed on
    return (grouped with the callbacks this process receives at the same moment:
    `inbox.store`), so a 2xx answer is true; applied a few ms later by the applier
    (`apply_twilio_statuses`). Returns whether it was new (a retry of a callback still
    waiting in the inbox is not)."""
    from services.callbacks import inbox

    return inbox.store(twilio_status_row(accounts, form, herald_id))


def twilio_status_row(
    accounts: list[AccountCredentials], form: dict[str, str], herald_id: str | None
) -> dict[str, Any]:
    """A signed status callback as its inbox row (`inbox.insert_rows`); InvalidRequest
    for one no Twilio callback can be."""
    form, sid, native = twilio_status_fields(form)
    return {
        "provider": "twilio",
        "kind": TWILIO_STATUS_KIND,
        "dedup_key": dedup_key("twilio", signer_scope(accounts), sid, native),
        "accounts": sorted(a.id for a in accounts),
        "ref": _herald_ref(herald_id),
        "payload": form,
    }


def handle_twilio_status(
    session: Session,
    accounts: list[AccountCredentials] | list[str],
    form: dict[str, str],
    herald_id: str | None,
    *,
    at: datetime | None = None,
) -> bool:
    """Apply one Twilio status callback now, on its own (accounts: those that signed it,
    or their ids; `at`: when it was received). Returns whether it was new (not a
    duplicate). The applier's path for a row its batch could not apply."""
    form, sid, native = twilio_status_fields(form)
    message, new = status_receipt(session, "twilio", accounts, herald_id, sid, native, form, at=at)
    if not new:
        return False
    mapped = TWILIO_STATUS.get(native)
    if message is None or mapped is None:
        log.info("twilio status kept without a message sid=%s status=%s", sid, native)
        return True
    apply_callback_status(session, message, mapped, **_twilio_facts(form, sid, native, at))
    return True


def _twilio_facts(form: dict[str, str], sid: str, native: str, at: datetime | None) -> dict:
    """What a Twilio status callback tells besides its status (apply_status's arguments)."""
    error_code = short_text(form.get("ErrorCode"), 32)
    return {
        "provider_message_id": sid,
        "native_status": native,
        "at": at,
        "error_code": error_name("twilio", error_code),
        "provider_code": error_code,
        "error_message": form.get("ErrorMessage") or None,
        "price": parse_price(form.get("Price")),
        "price_unit": short_text(form.get("PriceUnit"), 8),
        "from_number": reported_sender(form.get("From")),
    }


def apply_twilio_statuses(session: Session, rows: list[Any]) -> list[Any]:
    """Apply inbox rows of Twilio status callbacks set-based, in arrival order, in the
    caller's transaction: one SELECT ... FOR UPDATE of their messages, one INSERT of
    their receipts (a duplicate's dedup key is already there: it changes nothing), then
    `services.messages.status.apply_statuses`. The per-account receipt keys and the matching
    rules are `handle_twilio_status`'s. Returns the rows to apply one by one instead
    (none unless a row is not one `receive_twilio_status` stores)."""
    from services.messages.status import StatusChange, apply_statuses, lock_messages

    parsed, leftover = [], []
    for row in rows:
        try:
            form, sid, native = twilio_status_fields(row.payload)
            accounts = set(row.accounts)
        except (AttributeError, TypeError, InvalidRequest):
            leftover.append(row)
            continue
        parsed.append((row, form, sid, native, accounts))
    messages = lock_messages(
        session,
        {row.ref for row, *_ in parsed if row.ref},
        "twilio",
        {sid for _, _, sid, *_ in parsed if sid},
    )
    by_provider_id = {
        m["provider_message_id"]: m for m in messages.values() if m["provider_message_id"]
    }
    receipts: dict[str, dict[str, Any]] = {}
    todo = []
    for row, form, sid, native, accounts in parsed:
        message = None
        for candidate in (messages.get(row.ref) if row.ref else None, by_provider_id.get(sid)):
            if (
                candidate is not None
                and candidate["direction"] == "outbound"
                and candidate["provider_account_id"] in accounts
            ):
                message = candidate
                break
        if message is None and sid and sid not in by_provider_id:
            # Found by a provider id an earlier row of this batch may copy: one by one.
            leftover.append(row)
            continue
        scope = message["provider_account_id"] if message else min(accounts)
        key = dedup_key("twilio", scope, sid, native)
        if key in receipts:
            continue  # the same callback twice in this batch
        receipts[key] = {
            "provider": "twilio",
            "kind": "status",
            "dedup_key": key,
            "message_id": message["id"] if message else None,
            "tenant_id": message["tenant_id"] if message else None,
            "provider_message_id": sid,
            "payload": form,
            "received_at": row.received_at,
        }
        todo.append((key, message, form, sid, native, row.received_at))
    new = record_receipts(session, list(receipts.values()))
    changes = []
    for key, message, form, sid, native, at in todo:
        mapped = TWILIO_STATUS.get(native)
        if key not in new:
            continue
        if message is None or mapped is None:
            log.info("twilio status kept without a message sid=%s status=%s", sid, native)
            continue
        changes.append(
            StatusChange(
                message_id=message["id"],
                new=mapped,
                source="twilio",
                **_twilio_facts(form, sid, native, at),
            )
        )
    apply_statuses(session, changes, messages)
    return leftover


def route_twilio_inbound(
    accounts: list[AccountCredentials], form: dict[str, str]
) -> tuple[AccountCredentials | None, str]:
    """The one account an inbound message is for, or None and why ("no_tenant",
    "ambiguous"): the `To` number against the channel's sender (`whatsapp:` ignored
    on both sides), or its `MessagingServiceSid` against the account's service."""
    to = form.get("To", "")
    whatsapp = to.startswith("whatsapp:") or form.get("From", "").startswith("whatsapp:")
    number = _bare(to)
    field = "whatsapp_from" if whatsapp else "sms_from"
    service = form.get("MessagingServiceSid") or ""
    matches = [
        a
        for a in accounts
        if (number and _bare(a.settings.get(field)) == number)
        or (service and a.settings.get("messaging_service_sid") == service)
    ]
    if not matches:
        return None, "no_tenant"
    if len({a.tenant_id for a in matches}) > 1:
        return None, "ambiguous"
    return matches[0], ""


def _bare(number: Any) -> str:
    """A sender as stored or received, without `whatsapp:`, in E.164 when it is valid."""
    if not isinstance(number, str):
        return ""
    text = number.strip().removeprefix("whatsapp:").strip()
    return normalize_e164(text) or text


def handle_twilio_inbound(
    session: Session, accounts: list[AccountCredentials], form: dict[str, str]
) -> Message | None:
    """Store an inbound message for the one tenant it was sent to; keep it unrouted
    when no tenant, or more than one, claims its number or Messaging Service."""
    form = {k: clean_text(v) for k, v in form.items()}
    sid = short_text(form.get("MessageSid"), MAX_ID_LENGTH)
    if sid is None:
        raise InvalidRequest("MessageSid is not one Twilio sends.")
    account, reason = route_twilio_inbound(accounts, form)
    if account is None and reason == "no_tenant":  # senders: a number or service of a sender
        from services.tenancy.senders import route_to_sender

        account, reason = route_to_sender(session, accounts, form)
    phone = sender_phone(form.get("From"))
    if account is None or phone is None:
        keep_unrouted(
            session,
            "twilio",
            signer_scope(accounts),
            sid,
            reason or "bad_sender",
            form.get("To"),
            form,
        )
        return None
    sender = form.get("From", "")
    channel = "whatsapp" if sender.startswith("whatsapp:") else "sms"
    try:
        count = min(int(form.get("NumMedia") or 0), 10)
    except ValueError:
        count = 0
    media = [form[f"MediaUrl{i}"] for i in range(count) if form.get(f"MediaUrl{i}")]
    types = [form.get(f"MediaContentType{i}") for i in range(count) if form.get(f"MediaUrl{i}")]
    return store_inbound(
        session,
        account,
        channel=channel,
        provider_id=sid,
        phone=phone,
        recipient=form.get("To"),
        body=form.get("Body"),
        media=media,
        profile_name=form.get("ProfileName"),
        at=utcnow(),
        detail=form,
        options=inbound_media_options(types),
    )
