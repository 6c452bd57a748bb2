"""The public JSON shapes of Herald's rows."""

from __future__ import annotations

from typing import Any

from core.ids import iso
from models import Message, MessageEvent
from services.content.conversations import options_fields, public_fields


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
        "body": message.body,
        "media_url": message.media_urls,
        "template": message.template,
        "provider_message_id": message.provider_message_id,
        "error": error,
        "attempts": message.attempts,
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
        "body": values["body"],
        "media_url": values["media_urls"],
        "template": values["template"],
        "provider_message_id": None,
        "error": None,
        "attempts": values["attempts"],
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
