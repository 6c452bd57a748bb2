"""The public JSON shapes of Herald's rows: each serializer, and beside it the response
schema that documents it (core/shapes.py says how the two are held together)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import fields

from core.ids import iso
from core.shapes import Shape, listing
from models import Message, MessageEvent
from services.content.conversations import options_fields, public_fields
from services.content.schemas import TemplateSchema
from services.content.segments import measure


class EventView(Shape):
    """One step of a message's timeline (`event_to_dict`)."""

    class Meta:
        optional = ("error_code",)

    status = fields.String()
    native_status = fields.String(allow_none=True, metadata={"description": "the provider's"})
    at = fields.DateTime()
    source = fields.String(metadata={"description": "api, worker, twilio, meta…"})
    applied = fields.Boolean(metadata={"description": "false: arrived late, status unchanged"})
    error_code = fields.String()


class MessageErrorView(Shape):
    """Why a message failed."""

    code = fields.String()
    message = fields.String(allow_none=True)
    provider_code = fields.String(allow_none=True)


class FailoverView(Shape):
    """The SMS fallback a WhatsApp message asked for (services/messages/failover.py)."""

    class Meta:
        optional = ("body", "after_seconds")

    channel = fields.String(metadata={"description": "sms"})
    body = fields.String(metadata={"description": "the fallback's text, if not the body"})
    after_seconds = fields.Integer(
        metadata={"description": "the deadline for `delivered`, from when the message is due"}
    )


class MediaLinkView(Shape):
    """An inbound message's media as Herald serves it (services/content/media.py
    `media_links`; declared here, since that module imports this one)."""

    url = fields.String()
    content_type = fields.String(allow_none=True)


# The conversation fields (services/content/conversations.py `options_fields`), each
# only on a message that has it: as the request gave it (outbound) or Meta sent it.
class ContextView(Shape):
    """The message an inbound one answers or forwards, as Meta sent it."""

    class Meta:
        optional = ("id", "from_", "forwarded", "frequently_forwarded")

    id = fields.String(metadata={"description": "its wamid"})
    from_ = fields.String(data_key="from")
    forwarded = fields.Boolean()
    frequently_forwarded = fields.Boolean()


class ReactionView(Shape):
    class Meta:
        optional = ("target",)

    message_id = fields.String(
        allow_none=True, metadata={"description": "what it reacts to: a Herald id or a wamid"}
    )
    emoji = fields.String(metadata={"description": '"" removes the reaction'})
    target = fields.String(metadata={"description": "inbound: the Herald id reacted to"})


class LocationView(Shape):
    class Meta:
        optional = ("name", "address", "url")

    latitude = fields.Float()
    longitude = fields.Float()
    name = fields.String()
    address = fields.String()
    url = fields.String()


class StickerView(Shape):
    """Outbound: `link` or `id`; inbound: Meta's `id`, `mime_type`, `sha256`, `animated`."""

    class Meta:
        optional = ("link", "id", "mime_type", "sha256", "animated")

    link = fields.String()
    id = fields.String()
    mime_type = fields.String()
    sha256 = fields.String()
    animated = fields.Boolean()


_DATE = {"description": "ISO 8601, UTC"}


class MessageView(Shape):
    """A message (`message_to_dict`, `new_message_to_dict`): what `/v1/messages` answers
    and what events out carry (services/reporting/events.py)."""

    class Meta:
        optional = (
            "reply_to",
            "context",
            "reaction",
            "location",
            "contacts",
            "sticker",
            "filename",
            "segments",
            "encoding",
            "smart_encoded",
            "resend_of",
            "resent_as",
            "failover",
            "failover_at",
            "failover_id",
            "failover_of",
            "events",
        )

    id = fields.String()
    status = fields.String()
    direction = fields.String(metadata={"description": "outbound, or inbound (received)"})
    channel = fields.String()
    provider = fields.String()
    to = fields.String()
    from_ = fields.String(data_key="from", allow_none=True)
    sender_id = fields.String(allow_none=True)
    contact_id = fields.String(allow_none=True)
    wa_user_id = fields.String(
        allow_none=True,
        metadata={
            "description": "WhatsApp: the person's business-scoped user id (BSUID) where "
            "Meta gave it (a send to it, a status or inbound webhook)",
            "example": "US.13491208655302741918",
        },
    )
    wa_username = fields.String(
        allow_none=True,
        metadata={"description": "WhatsApp: the person's username, where Meta gave it"},
    )
    body = fields.String(allow_none=True)
    media_url = fields.List(fields.String(), allow_none=True)
    template = fields.Nested(TemplateSchema, allow_none=True)
    provider_message_id = fields.String(allow_none=True)
    error = fields.Nested(MessageErrorView, allow_none=True)
    attempts = fields.Integer()
    test = fields.Boolean(
        metadata={"description": "sent with a test key: simulated, never sent nor billed"}
    )
    campaign_id = fields.String(allow_none=True)
    metadata = fields.Dict(metadata={"description": "the request's own, as given"})
    callback_url = fields.String(allow_none=True)
    send_at = fields.DateTime(allow_none=True, metadata=_DATE)
    price = fields.String(allow_none=True, metadata={"description": "a decimal, as text"})
    price_unit = fields.String(allow_none=True)
    pricing_category = fields.String(allow_none=True)
    billable = fields.Boolean(allow_none=True)
    expires_at = fields.DateTime(allow_none=True, metadata=_DATE)
    created_at = fields.DateTime(metadata=_DATE)
    updated_at = fields.DateTime(metadata=_DATE)
    sent_at = fields.DateTime(allow_none=True, metadata=_DATE)
    delivered_at = fields.DateTime(allow_none=True, metadata=_DATE)
    read_at = fields.DateTime(allow_none=True, metadata=_DATE)
    media = fields.List(
        fields.Nested(MediaLinkView),
        allow_none=True,
        metadata={"description": "inbound media: Herald's URL and the content type of each"},
    )
    reply_to = fields.String(metadata={"description": "the Herald id (else wamid) it answers"})
    context = fields.Nested(ContextView)
    reaction = fields.Nested(ReactionView)
    location = fields.Nested(LocationView)
    contacts = fields.List(fields.Dict(), metadata={"description": "Meta's contact cards"})
    sticker = fields.Nested(StickerView)
    filename = fields.String()
    segments = fields.Integer(
        metadata={"description": "SMS with a body: the segments it is billed as"}
    )
    encoding = fields.String(metadata={"description": "SMS with a body: GSM-7 or UCS-2"})
    smart_encoded = fields.Integer(
        metadata={"description": "look-alike characters smart encoding replaced, if any"}
    )
    resend_of = fields.String(metadata={"description": "the failed message this one resends"})
    resent_as = fields.String(metadata={"description": "the message that resent this one"})
    failover = fields.Nested(FailoverView, metadata={"description": "the fallback asked for"})
    failover_at = fields.DateTime(
        metadata={**_DATE, "description": "the fallback's deadline, while it is pending"}
    )
    failover_id = fields.String(metadata={"description": "the SMS sent in this one's place"})
    failover_of = fields.String(metadata={"description": "the WhatsApp message this SMS replaces"})
    events = fields.List(
        fields.Nested(EventView),
        metadata={"description": "the timeline: in the answers about one message only"},
    )


MessagePageView = listing(MessageView, "MessagePage", page=True)


def event_to_dict(event: MessageEvent) -> dict[str, Any]:
    data: dict[str, Any] = {
        "status": event.status,
        "native_status": event.native_status,
        "at": iso(event.at),
        "source": event.source,
        "applied": event.applied,
    }
    if event.error_code:
        data["error_code"] = event.error_code
    return data


def sms_fields(channel: str, body: str | None, options: dict[str, Any] | None) -> dict[str, Any]:
    """`segments` and `encoding` of an SMS with a body (what it is billed as), and
    `smart_encoded` when smart encoding swapped characters in it."""
    if channel != "sms" or not body:
        return {}
    size = measure(body)
    out: dict[str, Any] = {"segments": size.segments, "encoding": size.encoding}
    if options and options.get("smart_encoded"):
        out["smart_encoded"] = options["smart_encoded"]
    return out


def resend_fields(options: dict[str, Any] | None) -> dict[str, Any]:
    """`resend_of` and `resent_as`: a resend and its original, linked both ways."""
    return {k: options[k] for k in ("resend_of", "resent_as") if options and options.get(k)}


def failover_fields(
    options: dict[str, Any] | None,
    *,
    pending: bool | None = None,
    at: datetime | None = None,
    fallback: str | None = None,
    original: str | None = None,
) -> dict[str, Any]:
    """`failover` (what was asked), `failover_at` (the deadline, while pending),
    `failover_id` and `failover_of` (a fallback and its original, linked both ways)."""
    out: dict[str, Any] = {}
    if options and options.get("failover"):
        out["failover"] = options["failover"]
    if pending and at is not None:
        out["failover_at"] = iso(at)
    if fallback:
        out["failover_id"] = fallback
    if original:
        out["failover_of"] = original
    return out


def message_to_dict(message: Message, *, events: bool = True) -> dict[str, Any]:
    error = None
    if message.error_code:
        error = {
            "code": message.error_code,
            "message": message.error_message,
            "provider_code": message.provider_error_code,
        }
    data: dict[str, Any] = {
        "id": message.id,
        "status": message.status,
        "direction": message.direction,
        "channel": message.channel,
        "provider": message.provider,
        "to": message.to_number,
        "from": message.from_number,
        "sender_id": ((message.options or {}).get("sender") or {}).get("id"),  # senders
        "contact_id": message.contact_id,
        "wa_user_id": message.wa_user_id,
        "wa_username": message.wa_username,
        "body": message.body,
        "media_url": message.media_urls,
        "template": message.template,
        "provider_message_id": message.provider_message_id,
        "error": error,
        "attempts": message.attempts,
        "test": bool(message.test),
        "campaign_id": message.campaign_id,
        "metadata": message.meta or {},
        "callback_url": message.callback_url,
        "send_at": iso(message.send_at),
        "price": None if message.price is None else str(message.price),
        "price_unit": message.price_unit,
        "pricing_category": message.pricing_category,
        "billable": message.billable,
        "expires_at": iso(message.expires_at),
        "created_at": iso(message.created_at),
        "updated_at": iso(message.updated_at),
        "sent_at": iso(message.sent_at),
        "delivered_at": iso(message.delivered_at),
        "read_at": iso(message.read_at),
    }
    from services.content.media import media_links  # services.content.media imports this module

    data["media"] = media_links(message)  # Herald's URLs for inbound media
    data.update(public_fields(message))  # reply_to, reaction, location… (conversations)
    data.update(sms_fields(message.channel, message.body, message.options))
    data.update(resend_fields(message.options))
    data.update(
        failover_fields(
            message.options,
            pending=message.failover_pending,
            at=message.failover_at,
            fallback=message.failover_id,
            original=message.failover_of,
        )
    )
    if events:
        data["events"] = [event_to_dict(e) for e in message.events]
    return data


def new_message_to_dict(values: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """`message_to_dict` of a message just inserted, from its row's values and its one
    event: no ORM object is built for the answer of a POST."""
    created = iso(values["created_at"])
    return {
        "id": values["id"],
        "status": values["status"],
        "direction": values["direction"],
        "channel": values["channel"],
        "provider": values["provider"],
        "to": values["to_number"],
        "from": values.get("from_number"),
        "sender_id": ((values.get("options") or {}).get("sender") or {}).get("id"),
        "contact_id": values["contact_id"],
        "wa_user_id": values.get("wa_user_id"),
        "wa_username": None,
        "body": values["body"],
        "media_url": values["media_urls"],
        "template": values["template"],
        "provider_message_id": None,
        "error": (
            {
                "code": values["error_code"],
                "message": values["error_message"],
                "provider_code": None,
            }
            if values.get("error_code")
            else None
        ),
        "attempts": values["attempts"],
        "test": bool(values.get("test")),
        "campaign_id": values["campaign_id"],
        "metadata": values["metadata"] or {},
        "callback_url": values["callback_url"],
        "send_at": iso(values["send_at"]),
        "price": None,
        "price_unit": None,
        "pricing_category": None,
        "billable": None,
        "expires_at": iso(values.get("expires_at")),
        "created_at": created,
        "updated_at": iso(values["updated_at"]),
        "sent_at": None,
        "delivered_at": None,
        "read_at": None,
        "media": None,  # outbound: no inbound media links
        **options_fields(values.get("options")),
        **sms_fields(values["channel"], values["body"], values.get("options")),
        **resend_fields(values.get("options")),
        **failover_fields(
            values.get("options"),
            pending=values.get("failover_pending"),
            at=values.get("failover_at"),
            original=values.get("failover_of"),
        ),
        "events": [
            {
                "status": event["status"],
                "native_status": None,
                "at": iso(event["at"]),
                "source": event["source"],
                "applied": event["applied"],
            }
        ],
    }
