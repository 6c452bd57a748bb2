"""Accepting, reading and cancelling messages: the path behind `POST /v1/messages`,
the seeds' endpoints and the `herald.send_message` task."""

from __future__ import annotations

import logging
from typing import Any, Unpack

from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from core.errors import Conflict, NotFound
from models import Message, Tenant
from services.messages.accept import (  # noqa: F401 (the names callers import from here)
    BULK_QUEUE,
    SEND_QUEUE,
    AcceptOptions,
    accept,
    choose_provider,
    request_hash,
)
from services.messages.campaign_content import fill_campaign_content
from services.messages.status import apply_status

log = logging.getLogger(__name__)


def accept_message(
    session: Session, tenant: Tenant, data: dict[str, Any], **options: Unpack[AcceptOptions]
) -> tuple[Message, bool]:
    """Persist a validated request as a `queued` (or `scheduled`) message in the
    caller's transaction and enqueue its delivery after its commit: the seeds' routes
    and the `herald.send_message` task (`POST /v1/messages` goes through
    services.messages.accept's group commit). Returns (message, created).

    With an idempotency key, a replay returns the first message (created=False) and a
    different body under the same key is a Conflict; two racing requests with one key
    create one row (the insert skips a key that is taken). `origin` 'legacy'
    (unauthenticated seed callers) is a key space of its own. No savepoint is needed:
    a refused or skipped row fails no statement."""
    item = accept(session, tenant, data, **options)
    return item.message(), item.created


def get_message(
    session: Session,
    tenant_id: str,
    message_id: str,
    origin: str | None = None,
    test: bool | None = None,
) -> Message:
    """A tenant's message with its events; another tenant's id is NotFound, like a
    missing one. With `origin`, only a message of that origin is found; with `test`
    (the caller's key's mode), only a message of that mode: a test key never reads a
    live message, nor a live key a test one."""
    query = (
        select(Message)
        .options(selectinload(Message.events))
        .where(Message.id == message_id, Message.tenant_id == tenant_id)
    )
    if origin is not None:
        query = query.where(Message.origin == origin)
    if test is not None:
        query = query.where(Message.test == test)
    message = session.scalars(query).first()
    if message is None:
        raise NotFound(f"No message {message_id!r}.")
    fill_campaign_content(session, [message])  # a campaign's row: its campaign's content too
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
    test: bool | None = None,
) -> tuple[list[Message], str | None]:
    """A page of messages, newest first. Ids are time-ordered, so the cursor is the last id.
    `test`: the caller's key's mode; only messages of that mode are listed (None: all,
    the console)."""
    query = select(Message).where(Message.tenant_id == tenant_id)
    if test is not None:
        query = query.where(Message.test == test)
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
    fill_campaign_content(session, rows[:limit])  # one query for the page's campaigns
    return rows[:limit], next_cursor


def cancel_message(
    session: Session, tenant_id: str, message_id: str, test: bool | None = None
) -> Message:
    message = get_message(session, tenant_id, message_id, test=test)
    status = message.status
    if not apply_status(session, message.id, "canceled", source="api"):
        session.rollback()
        raise Conflict(
            f"A message in status {status!r} can no longer be canceled.",
            code="not_cancelable",
        )
    session.flush()
    session.refresh(message)
    fill_campaign_content(session, [message])
    return message


MEDIA_DELETED = "media_deleted"  # the error of a message canceled because its media went


def cancel_messages_using_media(session: Session, tenant_id: str, media_id: str) -> int:
    """Cancel the tenant's messages naming `media_id` that no worker has taken yet
    (`scheduled`, `queued`): sent later, each would fail at Meta (the upload is gone)
    after the tenant was told it was deleted. Each gets a `canceled` event with the
    error `media_deleted`. A campaign's rows carry no media of their own: the API
    cancels those campaigns (services.content.media.campaigns_using). How many were canceled."""
    ids = session.scalars(
        select(Message.id).where(
            Message.tenant_id == tenant_id,
            Message.status.in_(("scheduled", "queued")),
            Message.campaign_id.is_(None),
            Message.options["media"].as_string() == media_id,
        )
    ).all()
    reason = f"Its media {media_id} was deleted before it was sent."
    canceled = [
        message_id
        for message_id in ids
        if apply_status(
            session,
            message_id,
            "canceled",
            source="api",
            error_code=MEDIA_DELETED,
            error_message=reason,
        )
    ]
    if canceled:  # a cancel by the tenant carries no error; this one says why
        session.execute(
            update(Message)
            .where(Message.id.in_(canceled))
            .values(error_code=MEDIA_DELETED, error_message=reason)
            .execution_options(synchronize_session=False)
        )
    return len(canceled)
