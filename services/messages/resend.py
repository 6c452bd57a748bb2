"""Resend what failed: a failed or undelivered message sent again as a new message,
linked both ways (`resend_of` on the new one, `resent_as` on the original), through
every check a new request passes (opt-out, window, quota, the SMS guards).

A resend is idempotent per original: its key is the original's id in an origin of its
own, so a retried `POST …/resend` answers the first resend (200), never a second
message. To try again after a resend failed too, resend the resend. A campaign's
failed rows: services/campaigns/resend.py."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from core.errors import Conflict
from models import Message, Tenant
from services.content.schemas import load_message_request
from services.messages.accept import Item, prepare, store
from services.messages.service import get_message

RESENDABLE = frozenset({"failed", "undelivered"})
ORIGIN = "resend"
# Request fields a row keeps in `options`, given back as they were asked.
_OPTIONS = (
    "preview_url",
    "interactive",
    "media_type",
    "location",
    "contacts",
    "sticker",
    "filename",
)


def request_of(message: Message) -> dict[str, Any]:
    """The request that would make `message` again (its campaign's content filled)."""
    options = message.options or {}
    if "reaction" in options:
        raise Conflict("A reaction is not resent: react again.", code="not_resendable")
    if (message.to_number or "").startswith("erased:"):  # services/privacy/erasure.py
        raise Conflict("The recipient was erased.", code="not_resendable")
    payload: dict[str, Any] = {
        "to": message.to_number,
        "channel": message.channel,
        "provider": message.provider,
    }
    if message.body:
        payload["body"] = message.body
    if options.get("media"):  # uploaded media (POST /v1/media), by its id
        payload["media_id"] = options["media"]
    elif message.media_urls:
        payload["media_url"] = list(message.media_urls)
    if message.template:
        payload["template"] = message.template
    for name in _OPTIONS:
        if name in options:
            payload[name] = options[name]
    if message.meta:
        payload["metadata"] = message.meta
    if message.callback_url:
        payload["callback_url"] = message.callback_url
    sender = options.get("sender") or {}
    if sender.get("id"):
        payload["from"] = sender["id"]
    return payload


def _check(message: Message) -> None:
    if message.direction != "outbound":
        raise Conflict("Only an outbound message is resent.", code="not_resendable")
    if message.status not in RESENDABLE:
        raise Conflict(
            f"Only a failed or undelivered message is resent; this one is {message.status}.",
            code="not_resendable",
        )


def prepared(session: Session, tenant: Tenant, original: Message) -> Item:
    payload = request_of(original)
    data = load_message_request(payload)
    item = prepare(
        session,
        tenant,
        data,
        idempotency_key=original.id,
        raw=payload,
        origin=ORIGIN,
        test=bool(original.test),  # a test message's resend is a test message
    )
    item.options["resend_of"] = original.id
    return item


_LINK = text(
    """
    UPDATE messages
    SET options = ((CASE WHEN json_typeof(options) = 'object' THEN options::jsonb
            ELSE '{}'::jsonb END)
        || jsonb_build_object('resent_as', CAST(:new AS text)))::json
    WHERE id = :original
    """
)


def link(session: Session, original: Message, item: Item) -> None:
    """Name the resend on the original's own row (a replay links nothing new): by
    statement, so a campaign row does not take a copy of its campaign's content. A row
    without options holds SQL NULL or JSON null: either becomes an object."""
    if item.created and item.values is not None:
        session.execute(_LINK, {"new": item.values["id"], "original": original.id})


def resend_message(
    session: Session, tenant: Tenant, message_id: str, test: bool | None = None
) -> Item:
    """Resend one failed or undelivered message in the caller's transaction; the new
    message's item (202), or the first resend's (200) when it was resent before.
    `test`: the caller's mode (a message of the other mode is not found)."""
    original = get_message(session, tenant.id, message_id, test=test)
    _check(original)
    item = prepared(session, tenant, original)
    store(session, [item])
    if item.error is not None:
        raise item.error
    link(session, original, item)
    return item
