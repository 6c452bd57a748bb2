"""Accepting, reading and cancelling messages: the path behind `POST /v1/messages`,
the seeds' endpoints and the `herald.send_message` task."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from herald.config import get_settings
from models import Contact, Message, MessageEvent, Tenant, new_id, utcnow
from services.contacts import get_contact
from services.conversations import accept_options
from services.dispatch import enqueue_after_commit
from services.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PolicyRefused,
    RateLimited,
)
from services.expiry import expires_at_for
from services.inputs import text_problem
from services.limits import take_quota
from services.phones import mask
from services.policy import check_send_policy
from services.schemas import check_for_provider
from services.senders import pick_sender, sender_provider
from services.status import apply_status
from services.templates import refuse_unusable_template
from services.tenants import cached_account

log = logging.getLogger(__name__)

SEND_QUEUE = "herald.send"
BULK_QUEUE = "herald.bulk"


def request_hash(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _existing(
    session: Session, tenant_id: str, key: str, digest: str, origin: str = "api"
) -> Message | None:
    message = session.scalars(
        select(Message).where(
            Message.tenant_id == tenant_id,
            Message.origin == origin,
            Message.idempotency_key == key,
        )
    ).first()
    if message is not None and message.request_hash != digest:
        raise Conflict(
            "This Idempotency-Key was used with a different request.", code="idempotency_conflict"
        )
    return message


def resolve_contact(session: Session, tenant_id: str, contact_id: str) -> Contact:
    """A recipient by contact id; unknown is a policy refusal (422), not a missing URL (404)."""
    try:
        return get_contact(session, tenant_id, contact_id)
    except NotFound:
        raise PolicyRefused(
            f"No contact with id {contact_id!r}.", code="contact_not_found"
        ) from None


def choose_provider(tenant: Tenant, channel: str, requested: str | None) -> str:
    if requested:
        return requested
    default = (
        tenant.default_whatsapp_provider if channel == "whatsapp" else tenant.default_sms_provider
    )
    if not default:
        raise PolicyRefused(
            f"No provider is configured for {channel} on this tenant.",
            code="provider_not_configured",
        )
    return default


def accept_message(
    session: Session,
    tenant: Tenant,
    data: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    raw: Any = None,
    campaign_id: str | None = None,
    origin: str = "api",
    own_transaction: bool = False,
) -> tuple[Message, bool]:
    """Persist a validated request as a `queued` (or `scheduled`) message and
    enqueue its delivery after commit. Returns (message, created); a created
    message is built from the inserted values (with its one event), not loaded.

    `own_transaction=True` says this is the only write of the session's
    transaction (the API's POST, the seeds' routes, the task): a quota refusal or a
    lost idempotency race then rolls back the whole transaction instead of a
    savepoint, two round trips fewer. Otherwise the insert runs in a savepoint.

    With an idempotency key, a replay returns the first message (created=False)
    and a different body under the same key is a Conflict; two racing requests
    with one key create one row, thanks to the unique (tenant, origin, key)
    constraint. `origin` 'legacy' (unauthenticated seed callers) is a key space of
    its own: such a caller can neither replay nor block the tenant's keys.
    """
    if tenant.disabled_at is not None:  # the task and the seeds' routes carry no key to refuse
        raise Forbidden("This tenant is disabled.", code="tenant_disabled")
    digest = request_hash(raw if raw is not None else data)
    if idempotency_key:
        if len(idempotency_key) > 255:
            raise InvalidRequest("Idempotency-Key is at most 255 characters.")
        if text_problem(idempotency_key):
            raise InvalidRequest(f"Idempotency-Key {text_problem(idempotency_key)}.")
        found = _existing(session, tenant.id, idempotency_key, digest, origin)
        if found is not None:
            return found, False

    channel = data.get("channel", "whatsapp")
    # senders: `from` (or the tenant's default sender) picks the sender and its provider
    sender = pick_sender(session, tenant, channel, data)
    provider = sender_provider(session, tenant, channel, data, sender) or choose_provider(
        tenant, channel, data.get("provider")
    )
    check_for_provider(data, provider)
    template = data.get("template")
    account = cached_account(session, tenant.id, provider)
    if account is None:
        raise PolicyRefused(
            f"This tenant has no {provider} account.", code="provider_not_configured"
        )
    if template:  # unknown, unapproved, other language, wrong variables: 400 (templates)
        refuse_unusable_template(session, tenant.id, account.id, provider, data)

    contact_id = None
    to = data.get("to")
    if "contact_id" in data:
        contact = resolve_contact(session, tenant.id, data["contact_id"])
        to, contact_id = contact.phone, contact.external_id or contact.id
    check_send_policy(session, tenant.id, channel=channel, to=to, free_form=not template)

    now = utcnow()
    send_at = data.get("send_at")
    status = "scheduled" if send_at is not None and send_at > now else "queued"
    options = {k: data[k] for k in ("preview_url", "interactive", "media_type") if k in data}
    if data.get("media_id"):  # uploaded media: resolved now, refused now (services/media.py)
        from services.media import resolve_media_id

        options.update(resolve_media_id(session, tenant.id, data, account.id, send_at))
    if sender is not None:  # senders: kept on the row, so every retry uses the same one
        options["sender"] = sender.snapshot()
    # Replies, reactions, locations, contacts, stickers (services/conversations.py).
    options.update(accept_options(session, tenant.id, data, to=to, account_id=account.id))
    values: dict[str, Any] = {
        "id": new_id("msg"),
        "tenant_id": tenant.id,
        "direction": "outbound",
        "channel": channel,
        "provider": provider,
        "provider_account_id": sender.account_id if sender is not None else account.id,
        "to_number": to,
        "contact_id": contact_id,
        "body": data.get("body"),
        "media_urls": data.get("media_url"),
        "template": template,
        "options": options or None,
        "status": status,
        "campaign_id": campaign_id,
        "meta": data.get("metadata") or {},
        "callback_url": data.get("callback_url"),
        "idempotency_key": idempotency_key,
        "origin": origin,
        "request_hash": digest if idempotency_key else None,
        "from_number": sender.number if sender is not None else None,  # senders
        "send_at": send_at,
        "expires_at": expires_at_for(data, now),
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }
    event_values = {
        "message_id": values["id"],
        "status": status,
        "source": "api",
        "applied": True,
        "at": now,
    }
    # Core inserts (the ORM unit of work was ~17 % of the accept path's CPU). Quota
    # only for a row that is in: a refusal (429) rolls the insert back, and an insert
    # that failed (a lost idempotency race) took no quota.
    try:
        if own_transaction:
            _insert(session, values, event_values, campaign_id is None, tenant)
        else:
            with session.begin_nested():
                _insert(session, values, event_values, campaign_id is None, tenant)
    except IntegrityError:
        if own_transaction:
            session.rollback()
        if not idempotency_key:
            raise
        found = _existing(session, tenant.id, idempotency_key, digest, origin)
        if found is None:
            raise
        return found, False
    except RateLimited:
        if own_transaction:
            session.rollback()
        raise
    message = Message(**values)
    message.events = [MessageEvent(**event_values)]
    if status == "queued":
        enqueue_after_commit(session, [message.id], BULK_QUEUE if campaign_id else SEND_QUEUE)
    log.info(
        "message accepted id=%s tenant=%s channel=%s provider=%s to=%s status=%s",
        message.id,
        tenant.id,
        channel,
        provider,
        mask(to),
        status,
    )
    return message, True


_MESSAGES = Message.__table__
_EVENTS = MessageEvent.__table__


def _insert(
    session: Session,
    values: dict[str, Any],
    event_values: dict[str, Any],
    quota: bool,
    tenant: Tenant,
) -> None:
    row = dict(values)
    row["metadata"] = row.pop("meta")  # the column's name
    session.execute(insert(_MESSAGES).values(row))
    if quota:  # campaigns are paced by their own release rate
        _take_tenant_quota(tenant)
    session.execute(insert(_EVENTS).values(event_values))


def _take_tenant_quota(tenant: Tenant) -> None:
    settings = get_settings()
    hourly, daily = tenant.hourly_limit, tenant.daily_limit
    hourly = settings.default_hourly_limit if hourly is None else hourly
    daily = settings.default_daily_limit if daily is None else daily
    wait = take_quota(tenant.id, hourly, daily)
    if wait is not None:
        raise RateLimited(
            f"Rate limit reached ({hourly}/hour, {daily}/day); retry in {wait} s.",
            headers={"Retry-After": str(wait)},
        )


def get_message(
    session: Session, tenant_id: str, message_id: str, origin: str | None = None
) -> Message:
    """A tenant's message with its events; another tenant's id is NotFound, like a
    missing one. With `origin`, only a message of that origin is found."""
    query = (
        select(Message)
        .options(selectinload(Message.events))
        .where(Message.id == message_id, Message.tenant_id == tenant_id)
    )
    if origin is not None:
        query = query.where(Message.origin == origin)
    message = session.scalars(query).first()
    if message is None:
        raise NotFound(f"No message {message_id!r}.")
    return message


def list_messages(
    session: Session,
    tenant_id: str,
    *,
    status: str | None = None,
    to: str | None = None,
    campaign_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Message], str | None]:
    """A page of messages, newest first. Ids are time-ordered, so the cursor is the last id."""
    query = select(Message).where(Message.tenant_id == tenant_id)
    if status:
        query = query.where(Message.status == status)
    if to:
        query = query.where(Message.to_number == to)
    if campaign_id:
        query = query.where(Message.campaign_id == campaign_id)
    if cursor:
        query = query.where(Message.id < cursor)
    rows = list(session.scalars(query.order_by(Message.id.desc()).limit(limit + 1)))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


def cancel_message(session: Session, tenant_id: str, message_id: str) -> Message:
    message = get_message(session, tenant_id, message_id)
    status = message.status
    if not apply_status(session, message.id, "canceled", source="api"):
        session.rollback()
        raise Conflict(
            f"A message in status {status!r} can no longer be canceled.",
            code="not_cancelable",
        )
    session.flush()
    session.refresh(message)
    return message
