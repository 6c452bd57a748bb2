"""Provider webhooks: signature checks, de-duplication, status and inbound handling.

Each callback item is written to `webhook_events` under a unique dedup key in
the same transaction that applies it, so a duplicate delivery (even two at the
same instant in two API processes) changes nothing the second time, and a
failure while applying rolls the receipt back so the provider's retry is not
mistaken for a duplicate. The key names the provider account the item belongs to
(or that signed it), so one tenant's secret cannot pre-record another's callback.

An inbound message goes to the one tenant that claims it, or is kept `unrouted`:
never to a guessed tenant. Nothing a provider (or anyone) posts answers 500.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from core.config import get_settings
from core.errors import Forbidden, InvalidRequest
from models import Contact, Message, MessageEvent, ProviderAccount, WebhookEvent, utcnow
from models.fast import Statement, json_rows
from providers import error_name
from providers.meta import OPT_OUT as META_OPT_OUT
from services.callbacks.meta_events import (
    account_changes,
    account_secrets,
    has_account_changes,
    is_account_change,
    record_account_change,
)
from services.content import templates
from services.content.conversations import inbound_extras, link_inbound
from services.content.media import inbound_media_options
from services.content.phones import mask, normalize_e164
from services.messages.status import apply_status
from services.policy.consent import apply_keyword, contact_for
from services.reporting.usage import record_meta_pricing
from services.tenancy.tenants import (
    AccountCredentials,
    accounts_by_external_id,
    accounts_by_external_ids,
    cached_accounts_by_external_id,
)
from services.tenancy.tenants import credentials as _credentials

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
META_STATUS = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed"}


# ---------------------------------------------------------------- signatures

# Before a Meta signature is checked, the body may only name the secrets to try: at
# most this many distinct phone number ids are looked up (one query), so an unsigned
# body costs the same whatever it lists. A real delivery names its own number first.
MAX_SIGNER_PHONE_IDS = 8
# Meta's deliveries nest about ten levels; anything far deeper is not one.
MAX_JSON_DEPTH = 64
MAX_ID_LENGTH = 128  # provider_message_id columns


def credentials(account: Any) -> AccountCredentials | None:
    """Decrypted credentials, or None (logged) for a row this process cannot decrypt,
    so one misconfigured account never breaks webhooks for the others."""
    try:
        return _credentials(account)
    except RuntimeError as exc:
        log.error("skipping provider account %s: %s", account.id, exc)
        return None


def same_text(given: str, expected: str) -> bool:
    """Constant-time comparison of any two strings (`hmac.compare_digest` raises on
    non-ASCII `str`, which a forged header or query can carry)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


class _SignedParams(dict[str, str]):
    """A callback's form as RequestValidator reads it: `getall` is the first accessor it
    tries for each field, so no AttributeError is raised and caught per field (a plain
    dict costs two). The same values, so the same signature."""

    __slots__ = ()

    def getall(self, name: str) -> list[str]:
        return [self[name]]


def verify_twilio(
    session: Session, url: str, form: dict[str, str], signature: str
) -> list[AccountCredentials]:
    """The accounts whose auth token signed this request (one Twilio account may
    serve several tenants); Forbidden if none did. Each distinct token is tried once.
    The accounts come from a per-process cache (services.tenancy.tenants.CACHE_SECONDS): a
    rotated auth token is refused by every process within that many seconds, and the
    session is used only when the cache does not hold them."""
    matched = []
    verdicts: dict[str, bool] = {}
    if signature:
        sid = form.get("AccountSid", "")
        params = _SignedParams(form)
        for creds in cached_accounts_by_external_id(session, "twilio", sid, credentials):
            token = creds.secrets.get("auth_token", "")
            if not token:
                continue
            if token not in verdicts:
                verdicts[token] = _twilio_signed(token, url, params, signature)
            if verdicts[token]:
                matched.append(creds)
    if not matched:
        raise Forbidden("Invalid or missing X-Twilio-Signature.")
    return matched


def _twilio_signed(token: str, url: str, form: dict[str, str], signature: str) -> bool:
    """Twilio's check, the URL as received first: `RequestValidator.validate` always
    computes two signatures (with and without the port), one is enough when it matches."""
    validator = RequestValidator(token)
    if same_text(signature, validator.compute_signature(url, form)):
        return True
    return validator.validate(url, form, signature)


@dataclass(frozen=True)
class MetaSigner:
    """Who signed a Meta delivery: the app secret, whether it is the deployment-wide
    one (`META_APP_SECRET`, any account), and the accounts named in the body that hold it."""

    secret: str = field(repr=False)
    app_wide: bool
    accounts: tuple[AccountCredentials, ...]

    def may_touch(self, account: AccountCredentials) -> bool:
        return self.app_wide or account.secrets.get("app_secret") == self.secret

    @property
    def scope(self) -> str:
        """What this signer's receipts are keyed under when no account is known."""
        return "app" if self.app_wide else min(a.id for a in self.accounts)


def parse_meta_body(raw: bytes) -> dict[str, Any] | None:
    """The delivery as a JSON object, or None for anything else (not JSON, not an
    object, nested deeper than any delivery: a RecursionError is never raised)."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict) or _depth_exceeds(payload, MAX_JSON_DEPTH):
        return None
    return _clean(payload)


def verify_meta(
    session: Session, raw: bytes, payload: dict[str, Any] | None, signature: str
) -> MetaSigner:
    """Check `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with an app secret).
    The secrets tried are those of the first few phone number ids the body names (one
    query) plus the deployment-wide one, each once; the signer scopes what the body
    may touch."""
    given = signature[len("sha256=") :] if signature.startswith("sha256=") else ""
    if given and given.isascii():
        holders: dict[str, list[AccountCredentials]] = {}
        ids = _meta_phone_ids(payload or {}, MAX_SIGNER_PHONE_IDS)
        for account in accounts_by_external_ids(session, "meta", ids):
            creds = credentials(account)
            secret = creds.secrets.get("app_secret") if creds else None
            if creds and isinstance(secret, str) and secret:
                holders.setdefault(secret, []).append(creds)
        if has_account_changes(payload or {}):  # WABA-level: no phone number to narrow by
            for secret, creds in account_secrets(session):
                holders.setdefault(secret, []).append(creds)
        app_secret = get_settings().meta_app_secret
        for secret in [*([app_secret] if app_secret else []), *holders]:
            expected = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected.encode(), given.encode()):
                return MetaSigner(secret, secret == app_secret, tuple(holders.get(secret, ())))
    raise Forbidden("Invalid or missing X-Hub-Signature-256.")


def meta_verify_challenge(session: Session, mode: str | None, token: str | None) -> bool:
    """Meta's subscription handshake: accept a verify token any Meta account (or config) holds."""
    if mode != "subscribe" or not token:
        return False
    if get_settings().meta_verify_token and same_text(token, get_settings().meta_verify_token):
        return True
    for account in session.scalars(
        select(ProviderAccount).where(ProviderAccount.provider == "meta")
    ):
        creds = credentials(account)
        stored = creds.secrets.get("verify_token") if creds else None
        if isinstance(stored, str) and stored and same_text(token, stored):
            return True
    return False


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests deeper than `limit`, without recursing."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in children)
    return False


def _clean(value: Any) -> Any:
    """The same JSON with every string storable: NUL removed, a lone surrogate replaced
    (PostgreSQL refuses both, and a provider's text is kept, not refused)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def clean_text(text: str) -> str:
    """`text` without NUL and with any lone surrogate replaced by U+FFFD."""
    if text.isascii() and "\x00" not in text:  # a callback's fields, nearly always
        return text
    text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _changes(payload: Any) -> Iterator[dict[str, Any]]:
    """Each change of a Meta delivery that is an object; any other shape is skipped."""
    entries = payload.get("entry") if isinstance(payload, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            if isinstance(change, dict):
                yield change


def _change_value(change: dict[str, Any]) -> dict[str, Any]:
    value = change.get("value")
    return value if isinstance(value, dict) else {}


def _phone_id(value: dict[str, Any]) -> str:
    metadata = value.get("metadata")
    phone_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if isinstance(phone_id, bool) or not isinstance(phone_id, str | int):
        return ""
    text = str(phone_id)
    return text if len(text) <= 64 else ""


def _meta_phone_ids(payload: Any, limit: int) -> set[str]:
    """The first `limit` distinct phone number ids the delivery names."""
    ids: set[str] = set()
    for change in _changes(payload):
        phone_id = _phone_id(_change_value(change))
        if phone_id:
            ids.add(phone_id)
            if len(ids) >= limit:
                break
    return ids


# ---------------------------------------------------------------- helpers


def dedup_key(provider: str, scope: str, *parts: str) -> str:
    """A receipt's unique key, scoped to the account that signed it (or the message's
    account): a tenant signing with its own secret cannot pre-record, and so drop,
    another tenant's callback."""
    return ":".join((provider, scope, *parts))


def _signer_scope(accounts: list[AccountCredentials] | list[str]) -> str:
    return min(_ids(accounts))


def _ids(accounts: list[AccountCredentials] | list[str]) -> list[str]:
    return [a if isinstance(a, str) else a.id for a in accounts]


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


def _apply_callback_status(
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


def _price(value: Any) -> Decimal | None:
    try:
        price = abs(Decimal(str(value))) if value not in (None, "") else None
    except InvalidOperation:
        return None
    # The column holds 12 digits, 5 after the point.
    return price if price is not None and price.is_finite() and price < 10**7 else None


def _short(value: Any, limit: int) -> str | None:
    """`value` if it is a non-empty string of at most `limit` characters, else None."""
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def _reported_sender(raw: Any) -> str | None:
    """The sender a Twilio status callback names, as Twilio wrote it (`whatsapp:` kept,
    like the sender the worker records): with a Messaging Service only the callback says
    which number the service chose. Anything that does not look like a sender (E.164, a
    short code, an alphanumeric sender id) is ignored, never an error."""
    value = _short(raw, 64)
    if value is None:
        return None
    bare = value.removeprefix("whatsapp:")
    e164 = bare.startswith("+") and bare[1:].isdigit() and 8 <= len(bare) <= 16
    short = bare.isascii() and bare.replace(" ", "").isalnum() and 0 < len(bare) <= 11
    return value if e164 or (short and not value.startswith("whatsapp:")) else None


def _sender_phone(raw: Any) -> str | None:
    """The E.164 form of an inbound sender, or the raw sender when it is short enough
    to be a short code or an id (kept as the provider sent it); None if unusable."""
    if not isinstance(raw, str):
        return None
    return normalize_e164(raw) or _short(raw.removeprefix("whatsapp:").strip(), 32)


def touch_contact(
    session: Session, tenant_id: str, phone: str, name: str | None, at: datetime, channel: str
) -> Contact:
    """Find or create the sender's contact; a WhatsApp message opens (or refreshes)
    its 24-hour window. An SMS does not: it opens no WhatsApp conversation. A WhatsApp
    sender is its WhatsApp id: kept on the contact, which may have been dialled in
    another form of the same number (see `services.content.phones.whatsapp_forms`)."""
    contact = contact_for(session, tenant_id, phone)
    if contact is None:
        contact = Contact(tenant_id=tenant_id, phone=phone)
        session.add(contact)
    if channel == "whatsapp" and contact.wa_id != phone:
        contact.wa_id = phone
    if name and not contact.name:
        contact.name = name[:200]
    if channel == "whatsapp" and (contact.last_inbound_at is None or contact.last_inbound_at < at):
        contact.last_inbound_at = at
    return contact


def _keep_unrouted(
    session: Session,
    provider: str,
    scope: str,
    provider_id: str,
    reason: str,
    recipient: str | None,
    detail: dict[str, Any],
) -> bool:
    """Keep an inbound message no single tenant owns (`webhook_events` kind `unrouted`,
    listed by `herald inbound unrouted`, counted in `/metrics`): answered, never guessed.
    Returns whether it was new."""
    receipt = _record_once(
        session,
        provider=provider,
        kind="unrouted",
        dedup_key=dedup_key(provider, scope, "in", provider_id),
        provider_message_id=provider_id,
        payload={"reason": reason, "to": recipient, "item": detail},
    )
    if receipt is not None:
        log.warning(
            "inbound unrouted provider=%s reason=%s to=%s id=%s",
            provider,
            reason,
            recipient,
            provider_id,
        )
    return receipt is not None


def _store_inbound(
    session: Session,
    account: AccountCredentials,
    *,
    channel: str,
    provider_id: str,
    phone: str,
    recipient: str | None,
    body: str | None,
    media: list[str],
    profile_name: str | None,
    at: datetime,
    detail: dict[str, Any],
    error: tuple[str, str | None] | None = None,
    options: dict[str, Any] | None = None,
) -> Message | None:
    """Store one inbound message. `error`: (provider code, title) the provider attached
    to it (Meta `messages[].errors`), kept on the message and its event."""
    receipt = _record_once(
        session,
        provider=account.provider,
        kind="inbound",
        dedup_key=dedup_key(account.provider, account.id, "in", provider_id),
        tenant_id=account.tenant_id,
        provider_message_id=provider_id,
        payload=detail,
    )
    if receipt is None:
        return None
    held = session.scalar(
        select(Message.id).where(
            Message.provider == account.provider, Message.provider_message_id == provider_id
        )
    )
    if held is not None:
        # Another account's delivery already stored this provider id (unique): keep the
        # receipt, store nothing twice.
        log.warning("inbound %s id %s already stored as id=%s", account.provider, provider_id, held)
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
        to_number=(recipient or "")[:32],
        from_number=phone,
        body=body,
        media_urls=media or None,
        options=options,  # the media's content types (services/content/media.py)
        status="received",
        provider_message_id=provider_id,
        meta={"profile_name": profile_name} if profile_name else {},
        created_at=at,
        updated_at=at,
    )
    if error is not None:
        message.provider_error_code, message.error_message = error
        message.error_code = error_name(account.provider, error[0]) or error[0]
    session.add(message)
    session.flush()
    receipt.message_id = message.id
    session.add(
        MessageEvent(
            message_id=message.id,
            status="received",
            source=account.provider,
            at=at,
            error_code=error[0] if error else None,
            detail={"errors": detail.get("errors")} if error else None,
        )
    )
    log.info("inbound stored id=%s provider=%s from=%s", message.id, account.provider, mask(phone))
    return message


def unrouted_inbound(session: Session, limit: int = 100) -> list[dict[str, Any]]:
    """The newest inbound messages kept without a tenant, for operators (numbers masked)."""
    rows = session.scalars(
        select(WebhookEvent)
        .where(WebhookEvent.kind == "unrouted")
        .order_by(WebhookEvent.id.desc())
        .limit(limit)
    )
    listed = []
    for row in rows:
        payload = row.payload if isinstance(row.payload, dict) else {}
        item = payload.get("item") if isinstance(payload.get("item"), dict) else {}
        sender = item.get("From") or item.get("from")
        listed.append(
            {
                "id": row.id,
                "provider": row.provider,
                "received_at": row.received_at.isoformat(),
                "reason": payload.get("reason"),
                "to": payload.get("to"),
                "from": mask(str(sender)) if sender else None,
                "provider_message_id": row.provider_message_id,
            }
        )
    return listed


def count_unrouted(session: Session) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(WebhookEvent).where(WebhookEvent.kind == "unrouted")
        )
        or 0
    )


# ---------------------------------------------------------------- Twilio


TWILIO_STATUS_KIND = "twilio_status"  # its rows in the inbox (services/callbacks/inbox.py)


def _twilio_status_fields(form: dict[str, str]) -> tuple[dict[str, str], str, str]:
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

    form, sid, native = _twilio_status_fields(form)
    return inbox.store(
        {
            "provider": "twilio",
            "kind": TWILIO_STATUS_KIND,
            "dedup_key": dedup_key("twilio", _signer_scope(accounts), sid, native),
            "accounts": sorted(a.id for a in accounts),
            "ref": _herald_ref(herald_id),
            "payload": form,
        }
    )


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
    form, sid, native = _twilio_status_fields(form)
    message = _find_message(session, accounts, herald_id, sid, provider="twilio")
    receipt = _record_once(
        session,
        provider="twilio",
        kind="status",
        dedup_key=dedup_key(
            "twilio",
            message.provider_account_id if message else _signer_scope(accounts),
            sid,
            native,
        ),
        message_id=message.id if message else None,
        tenant_id=message.tenant_id if message else None,
        provider_message_id=sid,
        payload=form,
        **({"received_at": at} if at else {}),
    )
    if receipt is None:
        return False
    mapped = TWILIO_STATUS.get(native)
    if message is None or mapped is None:
        log.info("twilio status kept without a message sid=%s status=%s", sid, native)
        return True
    _apply_callback_status(session, message, mapped, **_twilio_facts(form, sid, native, at))
    return True


def _twilio_facts(form: dict[str, str], sid: str, native: str, at: datetime | None) -> dict:
    """What a Twilio status callback tells besides its status (apply_status's arguments)."""
    error_code = _short(form.get("ErrorCode"), 32)
    return {
        "provider_message_id": sid,
        "native_status": native,
        "at": at,
        "error_code": error_name("twilio", error_code),
        "provider_code": error_code,
        "error_message": form.get("ErrorMessage") or None,
        "price": _price(form.get("Price")),
        "price_unit": _short(form.get("PriceUnit"), 8),
        "from_number": _reported_sender(form.get("From")),
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
            form, sid, native = _twilio_status_fields(row.payload)
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
    sid = _short(form.get("MessageSid"), MAX_ID_LENGTH)
    if sid is None:
        raise InvalidRequest("MessageSid is not one Twilio sends.")
    account, reason = route_twilio_inbound(accounts, form)
    if account is None and reason == "no_tenant":  # senders: a number or service of a sender
        from services.tenancy.senders import route_to_sender

        account, reason = route_to_sender(session, accounts, form)
    phone = _sender_phone(form.get("From"))
    if account is None or phone is None:
        _keep_unrouted(
            session,
            "twilio",
            _signer_scope(accounts),
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
    return _store_inbound(
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


# ---------------------------------------------------------------- Meta


def _objects(value: Any) -> tuple[list[dict[str, Any]], int]:
    """The objects of a JSON list, and how many of its items were something else."""
    if not isinstance(value, list):
        return [], 0
    objects = [item for item in value if isinstance(item, dict)]
    return objects, len(value) - len(objects)


def handle_meta_payload(
    session: Session, payload: dict[str, Any], signer: MetaSigner
) -> dict[str, int]:
    """Apply every status and inbound message of every change of every entry, for the
    accounts the signer may touch: a body signed with one tenant's secret cannot touch
    another tenant's phone number. An inbound message for a phone number id that
    several tenants hold is kept unrouted. Items of a shape Meta never sends are
    counted as `invalid` and skipped."""
    counts = dict.fromkeys(
        (
            "statuses",
            "messages",
            "errors",
            "duplicates",
            "unknown",
            "unverified",
            "unrouted",
            "invalid",
        ),
        0,
    )
    for entry, change in account_changes(payload):  # WABA-level: kept, answered 200
        key = "account" if record_account_change(session, entry, change, signer) else "duplicates"
        counts[key] = counts.get(key, 0) + 1
        if key == "account":  # template status updates: services/content/templates.py
            templates.handle_account_change(session, entry, change, signer)
    accounts_of: dict[str, list[AccountCredentials]] = {}
    for change in _changes(payload):
        if is_account_change(change):
            continue
        value = _change_value(change)
        phone_id = _phone_id(value)
        statuses, odd_statuses = _objects(value.get("statuses"))
        messages, odd_messages = _objects(value.get("messages"))
        counts["invalid"] += odd_statuses + odd_messages
        if phone_id not in accounts_of:
            accounts_of[phone_id] = (
                [
                    c
                    for c in map(credentials, accounts_by_external_id(session, "meta", phone_id))
                    if c is not None
                ]
                if phone_id
                else []
            )
            if any(c.external_id != phone_id for c in accounts_of[phone_id]):  # senders
                from services.tenancy.senders import as_phone_number

                accounts_of[phone_id] = as_phone_number(session, accounts_of[phone_id], phone_id)
        accounts = accounts_of[phone_id]
        if not accounts:
            counts["unknown"] += len(statuses) + len(messages)
            digest = hashlib.sha256(repr(value).encode("utf-8", "replace")).hexdigest()
            _record_once(
                session,
                provider="meta",
                kind="orphan",
                dedup_key=dedup_key("meta", signer.scope, "orphan", digest),
                payload=value,
            )
            continue
        creds = [c for c in accounts if signer.may_touch(c)]
        if not creds:
            counts["unverified"] += len(statuses) + len(messages)
            log.warning("meta change for phone id %s not signed by its app secret", phone_id)
            continue
        change_errors, odd_errors = _objects(value.get("errors"))
        counts["invalid"] += odd_errors
        if change_errors:
            counts["errors"] += record_meta_errors(
                session, creds, change_errors, source="change", phone_id=phone_id
            )
        for status in statuses:
            outcome = _meta_status(session, creds, status)
            counts[outcome] += 1
        names: dict[str, str] = {}
        for contact in _objects(value.get("contacts"))[0]:
            profile = contact.get("profile")
            name = profile.get("name") if isinstance(profile, dict) else None
            if isinstance(contact.get("wa_id"), str) and isinstance(name, str):
                names[contact["wa_id"]] = name
        tenants = {c.tenant_id for c in creds}
        for item in messages:
            if len(tenants) > 1:
                wamid = _short(item.get("id"), MAX_ID_LENGTH)
                if wamid is None:
                    counts["invalid"] += 1
                    continue
                new = _keep_unrouted(
                    session, "meta", _signer_scope(creds), wamid, "ambiguous", phone_id, item
                )
                counts["unrouted" if new else "duplicates"] += 1
                continue
            sender = item.get("from")
            outcome = _meta_inbound(
                session, creds[0], item, names.get(sender) if isinstance(sender, str) else None
            )
            counts[outcome] += 1
    return counts


def _ts(value: Any) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return utcnow()


def _meta_status(
    session: Session, accounts: list[AccountCredentials], status: dict[str, Any]
) -> str:
    """Apply one status item; returns which count it goes to."""
    wamid = _short(status.get("id"), MAX_ID_LENGTH)
    native = status.get("status")
    if wamid is None or not isinstance(native, str) or len(native) > 32:
        return "invalid"
    herald_id = _short(status.get("biz_opaque_callback_data"), 32)
    message = _find_message(session, accounts, herald_id, wamid, provider="meta")
    receipt = _record_once(
        session,
        provider="meta",
        kind="status",
        dedup_key=dedup_key(
            "meta",
            message.provider_account_id if message else _signer_scope(accounts),
            wamid,
            native,
        ),
        message_id=message.id if message else None,
        # Kept without a message: applied when its wamid is recorded (meta_events).
        tenant_id=message.tenant_id if message else _only_tenant(accounts),
        provider_message_id=wamid,
        payload=status,
    )
    if receipt is None:
        return "duplicates"
    if message is None:
        return "statuses"
    apply_meta_status(session, message, status)
    return "statuses"


def _only_tenant(accounts: list[AccountCredentials]) -> str | None:
    tenants = {a.tenant_id for a in accounts}
    return tenants.pop() if len(tenants) == 1 else None


def apply_meta_status(session: Session, message: Message, status: dict[str, Any]) -> None:
    """Apply one Meta status item to its message. An opt-out code (131050) by webhook
    opts the contact out as the synchronous answer does; Meta's error details are kept."""
    wamid = _short(status.get("id"), MAX_ID_LENGTH) or ""
    native = status.get("status")
    mapped = META_STATUS.get(native) if isinstance(native, str) else None
    if mapped is None:
        return
    errors, _ = _objects(status.get("errors"))
    error = errors[0] if errors else {}
    code = error.get("code")
    code = str(code) if isinstance(code, int | str) and len(str(code)) <= 32 else None
    title = error.get("title") or error.get("message")
    detail = {k: status[k] for k in ("pricing", "conversation") if k in status} or None
    if isinstance(error.get("error_data"), dict):
        detail = {**(detail or {}), "error_data": error["error_data"]}
    _apply_callback_status(
        session,
        message,
        mapped,
        provider_message_id=wamid,
        native_status=native,
        at=_ts(status.get("timestamp")),
        error_code=error_name("meta", code or ""),
        provider_code=code,
        error_message=title if isinstance(title, str) else None,
        detail=detail,
    )
    record_meta_pricing(
        session, message.id, status
    )  # category and billable (services/reporting/usage.py)
    recipient = status.get("recipient_id")
    if (
        message.wa_id is None
        and isinstance(recipient, str)
        and recipient.isdigit()
        and len(recipient) <= 20
        and f"+{recipient}" != message.to_number
    ):  # the send answer that carried it may never have reached Herald
        from services.messages.delivery import remember_wa_id

        remember_wa_id(session, message, f"+{recipient}")
    if mapped == "failed" and code in {str(c) for c in META_OPT_OUT}:
        from services.messages.delivery import mark_opted_out

        mark_opted_out(session, message.tenant_id, message.to_number)


def _meta_inbound(
    session: Session, account: AccountCredentials, item: dict[str, Any], profile_name: str | None
) -> str:
    """Store one inbound message; returns which count it goes to."""
    wamid = _short(item.get("id"), MAX_ID_LENGTH)
    sender = item.get("from")
    phone = _sender_phone(f"+{sender.lstrip('+')}") if isinstance(sender, str) else None
    if wamid is None or phone is None:
        return "invalid"
    kind = item.get("type", "text")
    content = item.get(kind) if isinstance(kind, str) else None
    content = content if isinstance(content, dict) else {}
    body = None
    media: list[str] = []
    if kind == "text":
        body = content.get("body")
    elif kind == "interactive":
        reply_type = content.get("type")
        reply = content.get(reply_type) if isinstance(reply_type, str) else None
        reply = reply if isinstance(reply, dict) else {}
        body = reply.get("title") or reply.get("id")
    elif kind == "button":
        body = content.get("text")
    else:
        body = content.get("caption")
        if isinstance(content.get("id"), str | int):
            media.append(f"meta-media:{content['id']}")
    errors, _ = _objects(item.get("errors"))  # e.g. 131051: a type the API cannot pass on
    code = errors[0].get("code") if errors else None
    title = errors[0].get("title") or errors[0].get("message") if errors else None
    stored = _store_inbound(
        session,
        account,
        channel="whatsapp",
        provider_id=wamid,
        phone=phone,
        recipient=account.settings.get("display_phone_number") or account.external_id,
        body=body if isinstance(body, str) else None,
        media=media,
        options=inbound_media_options([content.get("mime_type")] if media else []),
        profile_name=profile_name,
        at=_ts(item.get("timestamp")),
        detail=item,
        error=(
            (
                _short(str(code), 32) if code is not None else "unknown",
                title[:500] if isinstance(title, str) else None,
            )
            if errors
            else None
        ),
    )
    if stored is not None:  # replies' context, reactions, locations… (conversations)
        link_inbound(session, stored, inbound_extras(item))
    if stored is not None and errors:
        record_meta_errors(
            session,
            [account],
            errors,
            source="inbound",
            phone_id=account.external_id,
            message_id=stored.id,
            provider_message_id=wamid,
        )
    return "messages" if stored is not None else "duplicates"


ERROR_KIND = "error"


def record_meta_errors(
    session: Session,
    accounts: list[AccountCredentials],
    errors: list[dict[str, Any]],
    *,
    source: str,
    phone_id: str,
    message_id: str | None = None,
    provider_message_id: str | None = None,
) -> int:
    """Keep errors Meta reports outside a status (`value.errors` of a change, `errors`
    of an inbound message) as `webhook_events` of kind `error`, for operators (logged,
    counted in /metrics). A retried delivery is recorded once. Returns how many were new."""
    new = 0
    for error in errors:
        digest = hashlib.sha256(
            json.dumps(
                [source, phone_id, provider_message_id, error], sort_keys=True, default=str
            ).encode()
        ).hexdigest()
        receipt = _record_once(
            session,
            provider="meta",
            kind=ERROR_KIND,
            dedup_key=dedup_key("meta", _signer_scope(accounts), ERROR_KIND, digest),
            tenant_id=_only_tenant(accounts),
            message_id=message_id,
            provider_message_id=provider_message_id,
            payload={"source": source, "phone_number_id": phone_id, "error": error},
        )
        if receipt is not None:
            new += 1
            log.warning(
                "meta webhook error source=%s phone_id=%s code=%s title=%s",
                source,
                phone_id,
                _short(str(error.get("code")), 32),
                _short(str(error.get("title") or error.get("message")), 200),
            )
    return new


def count_webhook_errors(session: Session) -> int:
    """Provider errors recorded from webhooks outside any status (see record_meta_errors)."""
    return (
        session.scalar(
            select(func.count()).select_from(WebhookEvent).where(WebhookEvent.kind == ERROR_KIND)
        )
        or 0
    )
