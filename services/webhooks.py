"""Provider webhooks: signature checks, de-duplication, status and inbound handling.

Each callback item is written to `webhook_events` under a unique dedup key in
the same transaction that applies it, so a duplicate delivery (even two at the
same instant in two API processes) changes nothing the second time, and a
failure while applying rolls the receipt back so the provider's retry is not
mistaken for a duplicate.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from herald.config import get_settings
from models import Contact, Message, MessageEvent, WebhookEvent, utcnow
from providers import error_name
from services.errors import Forbidden
from services.phones import mask, normalize_e164
from services.policy import apply_keyword, contact_for
from services.status import apply_status
from services.tenants import AccountCredentials, accounts_by_external_id
from services.tenants import credentials as _credentials

log = logging.getLogger(__name__)

# Twilio's statuses onto CONTRACT §2. `canceled` at Twilio means it will never be
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
META_STATUS = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed"}


# ---------------------------------------------------------------- signatures


def credentials(account: Any) -> AccountCredentials | None:
    """Decrypted credentials, or None (logged) for a row this process cannot decrypt,
    so one misconfigured account never breaks webhooks for the others."""
    try:
        return _credentials(account)
    except RuntimeError as exc:
        log.error("skipping provider account %s: %s", account.id, exc)
        return None


def verify_twilio(
    session: Session, url: str, form: dict[str, str], signature: str
) -> list[AccountCredentials]:
    """The accounts whose auth token signed this request (one Twilio account may
    serve several tenants); Forbidden if none did."""
    matched = []
    for account in accounts_by_external_id(session, "twilio", form.get("AccountSid", "")):
        creds = credentials(account)
        token = creds.secrets.get("auth_token", "") if creds else ""
        if creds and signature and token and RequestValidator(token).validate(url, form, signature):
            matched.append(creds)
    if not matched:
        raise Forbidden("Invalid or missing X-Twilio-Signature.")
    return matched


def _meta_secrets(
    session: Session, payload: dict[str, Any]
) -> list[tuple[str, AccountCredentials | None]]:
    candidates: list[tuple[str, AccountCredentials | None]] = []
    for phone_id in _meta_phone_ids(payload):
        for account in accounts_by_external_id(session, "meta", phone_id):
            creds = credentials(account)
            if creds and creds.secrets.get("app_secret"):
                candidates.append((creds.secrets["app_secret"], creds))
    if get_settings().meta_app_secret:
        candidates.append((get_settings().meta_app_secret, None))
    return candidates


def verify_meta(session: Session, raw: bytes, payload: dict[str, Any], signature: str) -> str:
    """Check `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with the app secret);
    returns the secret that signed it, which scopes what the body may touch."""
    if signature.startswith("sha256="):
        given = signature[len("sha256=") :]
        for secret, _ in _meta_secrets(session, payload):
            expected = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected, given):
                return secret
    raise Forbidden("Invalid or missing X-Hub-Signature-256.")


def meta_verify_challenge(session: Session, mode: str | None, token: str | None) -> bool:
    """Meta's subscription handshake: accept a verify token any Meta account (or config) holds."""
    if mode != "subscribe" or not token:
        return False
    if get_settings().meta_verify_token and hmac.compare_digest(
        token.encode(), get_settings().meta_verify_token.encode()
    ):
        return True
    from models import ProviderAccount

    for account in session.scalars(
        select(ProviderAccount).where(ProviderAccount.provider == "meta")
    ):
        creds = credentials(account)
        stored = creds.secrets.get("verify_token") if creds else None
        if stored and hmac.compare_digest(str(stored).encode(), token.encode()):
            return True
    return False


def _meta_phone_ids(payload: dict[str, Any]) -> list[str]:
    ids = []
    for entry in payload.get("entry") or []:
        for change in entry.get("changes") or []:
            phone_id = ((change.get("value") or {}).get("metadata") or {}).get("phone_number_id")
            if phone_id and str(phone_id) not in ids:
                ids.append(str(phone_id))
    return ids


# ---------------------------------------------------------------- helpers


def _record_once(session: Session, **values: Any) -> WebhookEvent | None:
    """Insert the receipt; None if its dedup key was already recorded (a duplicate)."""
    receipt = WebhookEvent(**values)
    try:
        with session.begin_nested():
            session.add(receipt)
            session.flush()
    except IntegrityError:
        return None
    return receipt


def _find_message(
    session: Session,
    accounts: list[AccountCredentials],
    herald_id: str | None,
    provider_id: str | None,
) -> Message | None:
    """The outbound message a callback is about: by Herald's own id (known before
    the provider's id is stored), else by the provider's id; only among messages
    of the accounts that signed the callback."""
    query = select(Message).where(
        Message.provider_account_id.in_([a.id for a in accounts]), Message.direction == "outbound"
    )
    if herald_id:
        message = session.scalars(query.where(Message.id == herald_id)).first()
        if message is not None:
            return message
    if provider_id:
        return session.scalars(query.where(Message.provider_message_id == provider_id)).first()
    return None


def _price(value: Any) -> Decimal | None:
    try:
        return abs(Decimal(str(value))) if value not in (None, "") else None
    except InvalidOperation:
        return None


def touch_contact(
    session: Session, tenant_id: str, phone: str, name: str | None, at: datetime, channel: str
) -> Contact:
    """Find or create the sender's contact; a WhatsApp message opens (or refreshes)
    its 24-hour window. An SMS does not: it opens no WhatsApp conversation."""
    contact = contact_for(session, tenant_id, phone)
    if contact is None:
        contact = Contact(tenant_id=tenant_id, phone=phone)
        session.add(contact)
    if name and not contact.name:
        contact.name = name
    if channel == "whatsapp" and (contact.last_inbound_at is None or contact.last_inbound_at < at):
        contact.last_inbound_at = at
    return contact


def _store_inbound(
    session: Session,
    account: AccountCredentials,
    *,
    channel: str,
    provider_id: str,
    sender: str,
    recipient: str | None,
    body: str | None,
    media: list[str],
    profile_name: str | None,
    at: datetime,
    detail: dict[str, Any],
) -> Message | None:
    phone = normalize_e164(sender) or sender
    receipt = _record_once(
        session,
        provider=account.provider,
        kind="inbound",
        dedup_key=f"{account.provider}:in:{provider_id}",
        tenant_id=account.tenant_id,
        provider_message_id=provider_id,
        payload=detail,
    )
    if receipt is None:
        return None
    contact = touch_contact(session, account.tenant_id, phone, profile_name, at, channel)
    keyword = apply_keyword(contact, body, at)
    if keyword:
        log.info("contact %s by keyword from=%s", keyword, mask(phone))
    message = Message(
        tenant_id=account.tenant_id,
        direction="inbound",
        channel=channel,
        provider=account.provider,
        provider_account_id=account.id,
        to_number=recipient or "",
        from_number=phone,
        body=body,
        media_urls=media or None,
        status="received",
        provider_message_id=provider_id,
        meta={"profile_name": profile_name} if profile_name else {},
        created_at=at,
        updated_at=at,
    )
    session.add(message)
    session.flush()
    receipt.message_id = message.id
    session.add(
        MessageEvent(message_id=message.id, status="received", source=account.provider, at=at)
    )
    log.info("inbound stored id=%s provider=%s from=%s", message.id, account.provider, mask(phone))
    return message


# ---------------------------------------------------------------- Twilio


def handle_twilio_status(
    session: Session,
    accounts: list[AccountCredentials],
    form: dict[str, str],
    herald_id: str | None,
) -> bool:
    """Apply one Twilio status callback. Returns whether it was new (not a duplicate)."""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    native = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    receipt = _record_once(
        session,
        provider="twilio",
        kind="status",
        dedup_key=f"twilio:{sid}:{native}",
        message_id=herald_id,
        provider_message_id=sid,
        payload=form,
    )
    if receipt is None:
        return False
    message = _find_message(session, accounts, herald_id, sid)
    mapped = TWILIO_STATUS.get(native)
    if message is None or mapped is None:
        log.info("twilio status kept without a message sid=%s status=%s", sid, native)
        receipt.message_id = None
        return True
    receipt.message_id, receipt.tenant_id = message.id, message.tenant_id
    apply_status(
        session,
        message.id,
        mapped,
        source="twilio",
        native_status=native,
        error_code=error_name("twilio", form.get("ErrorCode")),
        provider_code=form.get("ErrorCode") or None,
        error_message=form.get("ErrorMessage") or None,
        provider_message_id=sid or None,
        price=_price(form.get("Price")),
        price_unit=form.get("PriceUnit") or None,
    )
    return True


def handle_twilio_inbound(
    session: Session, accounts: list[AccountCredentials], form: dict[str, str]
) -> Message | None:
    """Store an inbound message for the account whose sender number it was sent to."""
    to = form.get("To", "").removeprefix("whatsapp:")
    account = next(
        (
            a
            for a in accounts
            if to in (a.settings.get("sms_from"), a.settings.get("whatsapp_from"))
        ),
        accounts[0],
    )
    sender = form.get("From", "")
    channel = "whatsapp" if sender.startswith("whatsapp:") else "sms"
    media = [
        form[f"MediaUrl{i}"]
        for i in range(int(form.get("NumMedia") or 0))
        if form.get(f"MediaUrl{i}")
    ]
    return _store_inbound(
        session,
        account,
        channel=channel,
        provider_id=form.get("MessageSid", ""),
        sender=sender,
        recipient=form.get("To"),
        body=form.get("Body"),
        media=media,
        profile_name=form.get("ProfileName"),
        at=utcnow(),
        detail=form,
    )


# ---------------------------------------------------------------- Meta


def handle_meta_payload(session: Session, payload: dict[str, Any], secret: str) -> dict[str, int]:
    """Apply every status and inbound message of every change of every entry, for the
    accounts whose app secret signed the delivery: a body signed with one tenant's
    secret cannot touch another tenant's phone number."""
    counts = {"statuses": 0, "messages": 0, "duplicates": 0, "unknown": 0, "unverified": 0}
    app_wide = secret == get_settings().meta_app_secret
    for entry in payload.get("entry") or []:
        for change in entry.get("changes") or []:
            value = change.get("value") or {}
            phone_id = str((value.get("metadata") or {}).get("phone_number_id") or "")
            accounts = accounts_by_external_id(session, "meta", phone_id)
            if not accounts:
                counts["unknown"] += len(value.get("statuses") or []) + len(
                    value.get("messages") or []
                )
                _record_once(
                    session,
                    provider="meta",
                    kind="orphan",
                    dedup_key=f"meta:orphan:{hashlib.sha256(repr(value).encode()).hexdigest()}",
                    payload=value,
                )
                continue
            creds = [
                c
                for c in map(credentials, accounts)
                if c is not None and (app_wide or c.secrets.get("app_secret") == secret)
            ]
            if not creds:
                counts["unverified"] += len(value.get("statuses") or []) + len(
                    value.get("messages") or []
                )
                log.warning("meta change for phone id %s not signed by its app secret", phone_id)
                continue
            account = creds[0]
            for status in value.get("statuses") or []:
                new = _meta_status(session, creds, status)
                counts["statuses" if new else "duplicates"] += 1
            names = {
                c.get("wa_id"): (c.get("profile") or {}).get("name")
                for c in value.get("contacts") or []
            }
            for item in value.get("messages") or []:
                new = _meta_inbound(session, account, item, names.get(item.get("from")))
                counts["messages" if new else "duplicates"] += 1
    return counts


def _ts(value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError):
        return utcnow()


def _meta_status(
    session: Session, accounts: list[AccountCredentials], status: dict[str, Any]
) -> bool:
    wamid = status.get("id", "")
    native = status.get("status", "")
    receipt = _record_once(
        session,
        provider="meta",
        kind="status",
        dedup_key=f"meta:{wamid}:{native}",
        message_id=status.get("biz_opaque_callback_data"),
        provider_message_id=wamid,
        payload=status,
    )
    if receipt is None:
        return False
    message = _find_message(session, accounts, status.get("biz_opaque_callback_data"), wamid)
    mapped = META_STATUS.get(native)
    if message is None or mapped is None:
        receipt.message_id = None
        return True
    receipt.message_id, receipt.tenant_id = message.id, message.tenant_id
    errors = status.get("errors") or []
    error = errors[0] if errors else {}
    detail = {k: status[k] for k in ("pricing", "conversation") if k in status} or None
    apply_status(
        session,
        message.id,
        mapped,
        source="meta",
        native_status=native,
        at=_ts(status.get("timestamp")),
        error_code=error_name("meta", str(error.get("code", ""))),
        provider_code=str(error["code"]) if error.get("code") is not None else None,
        error_message=error.get("title") or error.get("message"),
        detail=detail,
        provider_message_id=wamid or None,
    )
    return True


def _meta_inbound(
    session: Session, account: AccountCredentials, item: dict[str, Any], profile_name: str | None
) -> bool:
    kind = item.get("type", "text")
    content = item.get(kind) or {}
    body = None
    media: list[str] = []
    if kind == "text":
        body = content.get("body")
    elif kind == "interactive":
        reply = content.get(content.get("type", "")) or {}
        body = reply.get("title") or reply.get("id")
    elif kind == "button":
        body = content.get("text")
    elif isinstance(content, dict):
        body = content.get("caption")
        if content.get("id"):
            media.append(f"meta-media:{content['id']}")
    sender = item.get("from", "")
    stored = _store_inbound(
        session,
        account,
        channel="whatsapp",
        provider_id=item.get("id", ""),
        sender=sender if sender.startswith("+") else f"+{sender}",
        recipient=account.settings.get("display_phone_number") or account.external_id,
        body=body,
        media=media,
        profile_name=profile_name,
        at=_ts(item.get("timestamp")),
        detail=item,
    )
    return stored is not None
