"""Inbound messages, whichever provider brought them: stored for the one tenant that
claims them, or kept `unrouted` (never given to a guessed tenant); the contact touched,
its window opened, keywords applied."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.errors import HeraldError
from core.logs import mask
from models import Contact, Message, MessageEvent, Tenant, WebhookEvent
from providers import error_name
from services.callbacks.receipts import dedup_key, record_once
from services.policy.consent import apply_inbound_keyword, person_for
from services.policy.keywords import keyword_of, reply_for
from services.tenancy.tenants import (
    AccountCredentials,
)

log = logging.getLogger(__name__)


def touch_contact(
    session: Session,
    tenant_id: str,
    phone: str | None,
    name: str | None,
    at: datetime,
    channel: str,
    *,
    user_id: str | None = None,
    username: str | None = None,
) -> Contact:
    """Find or create the sender's contact; a WhatsApp message opens (or refreshes)
    its 24-hour window. An SMS does not: it opens no WhatsApp conversation. A WhatsApp
    sender is its WhatsApp id: kept on the contact, which may have been dialled in
    another form of the same number (see `services.content.phones.whatsapp_forms`).
    Meta also names the sender by business-scoped user id (`user_id`), and a user with a
    username may come with that alone (`phone` None): one person, one contact, whichever
    arrives (`services.policy.consent.person_for`)."""
    contact = person_for(session, tenant_id, phone=phone, user_id=user_id)
    if contact is None:
        contact = Contact(tenant_id=tenant_id, phone=phone, wa_user_id=user_id)
        session.add(contact)
    if phone is not None:
        if contact.phone is None:
            contact.phone = phone  # the number a username user shares again
        if channel == "whatsapp" and contact.wa_id != phone:
            contact.wa_id = phone
    if user_id is not None and contact.wa_user_id != user_id:
        contact.wa_user_id = user_id
    if username and contact.wa_username != username:
        contact.wa_username = username[:64]
    if name and not contact.name:
        contact.name = name[:200]
    if channel == "whatsapp" and (contact.last_inbound_at is None or contact.last_inbound_at < at):
        contact.last_inbound_at = at
    return contact


def keep_unrouted(
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
    receipt = record_once(
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


def store_inbound(
    session: Session,
    account: AccountCredentials,
    *,
    channel: str,
    provider_id: str,
    phone: str | None,
    recipient: str | None,
    body: str | None,
    media: list[str],
    profile_name: str | None,
    at: datetime,
    detail: dict[str, Any],
    error: tuple[str, str | None] | None = None,
    options: dict[str, Any] | None = None,
    user_id: str | None = None,
    username: str | None = None,
) -> Message | None:
    """Store one inbound message. `error`: (provider code, title) the provider attached
    to it (Meta `messages[].errors`), kept on the message and its event. `user_id` and
    `username`: the WhatsApp sender's BSUID and username (Meta); with no `phone` (a
    username user sharing no number) the BSUID is the sender's address."""
    receipt = record_once(
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
    contact = touch_contact(
        session,
        account.tenant_id,
        phone,
        profile_name,
        at,
        channel,
        user_id=user_id,
        username=username,
    )
    sender = phone or user_id or ""
    tenant = session.get(Tenant, account.tenant_id)
    own_words = tenant.keywords if tenant is not None else None
    keyword = apply_inbound_keyword(
        session, account.tenant_id, sender, contact, body, at, own_words
    )
    if keyword:
        log.info("contact %s by keyword from=%s", keyword, mask(sender))
    message = Message(
        tenant_id=account.tenant_id,
        direction="inbound",
        channel=channel,
        provider=account.provider,
        provider_account_id=account.id,
        to_number=(recipient or "")[:32],
        from_number=sender,
        wa_user_id=user_id,
        wa_username=username[:64] if username else None,
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
    log.info("inbound stored id=%s provider=%s from=%s", message.id, account.provider, mask(sender))
    if tenant is not None:
        answer_keyword(session, tenant, account, message)
    return message


def answer_keyword(
    session: Session, tenant: Tenant, account: AccountCredentials, inbound: Message
) -> Message | None:
    """Answer a STOP, START or HELP keyword where the provider does not
    (services/policy/keywords.py): a message from the number written to, queued in this
    transaction. Best effort: a refusal (quota, a disabled tenant) is logged, and the
    inbound message is stored whatever happens here."""
    found = keyword_of(inbound.body, tenant.keywords)
    if found is None:
        return None
    kind, own_word = found
    text = reply_for(kind, own_word, inbound.channel, account.provider, tenant.keyword_replies)
    if text is None:
        return None
    data: dict[str, Any] = {
        "to": inbound.from_number,
        "channel": inbound.channel,
        "provider": account.provider,
        "body": text,
        "metadata": {"keyword": kind, "in_reply_to": inbound.id},
    }
    sender = _written_to(account, inbound.to_number)
    from services.messages.accept import accept  # the inbound path sits below sending

    for attempt in ({**data, "from": sender}, data) if sender else (data,):
        try:
            with session.begin_nested():
                item = accept(
                    session, tenant, attempt, idempotency_key=inbound.id, origin="keyword"
                )
        except HeraldError as exc:
            if "from" in attempt and exc.code not in ("rate_limited", "tenant_disabled"):
                continue  # the number written to is not a sender of its own: the default
            log.warning(
                "keyword %s not answered tenant=%s to=%s: %s",
                kind,
                tenant.id,
                mask(inbound.from_number or ""),
                exc.code,
            )
            return None
        log.info(
            "keyword %s answered id=%s to=%s",
            kind,
            item.values and item.values["id"],
            mask(inbound.from_number or ""),
        )
        return item.message()
    return None


def _written_to(account: AccountCredentials, to_number: str | None) -> str | None:
    """The sender to answer from: the number the person wrote to (Twilio), or the
    business number itself (Meta's phone number id)."""
    if account.provider == "meta":
        return account.external_id
    if to_number:
        return to_number.removeprefix("whatsapp:")
    return None


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
