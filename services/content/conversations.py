"""Conversations on WhatsApp (Meta): replies, reactions, locations, contact cards,
stickers, a document's file name, inbound context, and read receipts with the
typing indicator.

Kept apart from the accept, send and webhook paths (owned elsewhere): those call in
here through small hooks — `request_problems` and `provider_problems` from
services/content/schemas.py, `accept_options` from services/messages/service.py, `outbound_fields`
and `after_send` from services/messages/delivery.py, `inbound_extras` / `link_inbound` from
services/callbacks/meta.py. Everything travels in `messages.options` (no migration).

Meta's rules, from the Cloud API messages reference: a reply is any message with
`context.message_id` (a `wamid`); a reaction names the `wamid` it reacts to and one
emoji (an empty one removes it), only to a message of the last 30 days; a location
has latitude -90..90 and longitude -180..180; a contacts message holds 1 to 257
cards, each with `name.formatted_name`; a sticker is image/webp; `filename` belongs
to a document only. Twilio has none of these (no reply context, no reactions or read
receipts API): asking for them with provider twilio is a 400 naming the field.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

import emoji as emoji_lib
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.errors import Conflict, InvalidRequest, NotFound, PolicyRefused
from core.logs import mask
from models import Message, MessageEvent, session_scope, utcnow
from services.content.inputs import StrictBoolean, StrictFloat
from services.content.phones import whatsapp_forms

log = logging.getLogger(__name__)

# The request fields this module owns, in `POST /v1/messages` and `herald.send_message`.
FIELDS = ("reply_to", "reaction", "location", "contacts", "sticker", "filename", "mark_read")
# Those that are a message's content of their own (nothing else goes with them).
CONTENT_KINDS = ("reaction", "location", "contacts", "sticker")
OTHER_CONTENT = ("body", "media_url", "template", "interactive")
MAX_CONTACTS = 257  # Meta: "Each message can include information for up to 257 contacts"
REACTION_MAX_AGE = timedelta(days=30)  # Meta reacts only to messages of the last 30 days
WAMID = re.compile(r"^wamid\.[A-Za-z0-9+/=_-]{1,240}$")
HERALD_ID = re.compile(r"^msg_[0-9A-Z]{26}$")
STICKER_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".mp4", ".pdf")  # known and not WebP

_url = validate.URL(schemes={"http", "https"}, require_tld=False)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


def _emoji(value: str) -> None:
    """One emoji (a ZWJ sequence or flag counts as one), or "" to remove a reaction:
    Meta fails anything else with 131009 after accepting it."""
    if value and not emoji_lib.is_emoji(value):
        raise ValidationError('Must be exactly one emoji, or "" to remove the reaction.')


class ReactionSchema(_Strict):
    message_id = fields.String(
        validate=validate.Length(min=1, max=256),
        metadata={"description": "Herald message id (msg_…) or wamid; else `reply_to`"},
    )
    emoji = fields.String(required=True, validate=[validate.Length(max=64), _emoji])


class LocationSchema(_Strict):
    latitude = StrictFloat(required=True, validate=validate.Range(min=-90, max=90))
    longitude = StrictFloat(required=True, validate=validate.Range(min=-180, max=180))
    name = fields.String(validate=validate.Length(min=1, max=1000))
    address = fields.String(validate=validate.Length(min=1, max=1000))


class StickerSchema(_Strict):
    link = fields.String(validate=[validate.Length(max=2048), _url])
    id = fields.String(validate=validate.Length(min=1, max=128))

    @validates_schema
    def _one(self, data: dict[str, Any], **_: Any) -> None:
        if ("link" in data) == ("id" in data):
            raise ValidationError("Give exactly one of 'link' or 'id'.", "link")


class ContactCards(fields.List):
    """Meta's `contacts` array, passed through: 1 to 257 cards, each an object with
    `name.formatted_name` (Meta's one required field)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            fields.Dict(keys=fields.String()),
            validate=validate.Length(min=1, max=MAX_CONTACTS),
            **kwargs,
        )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        cards = super()._deserialize(value, attr, data, **kwargs)
        for n, card in enumerate(cards):
            name = card.get("name")
            formatted = name.get("formatted_name") if isinstance(name, dict) else None
            if not isinstance(formatted, str) or not formatted.strip():
                raise ValidationError(f"Contact {n} needs name.formatted_name (a string).")
            for key in ("phones", "emails", "urls", "addresses"):
                if key in card and not (
                    isinstance(card[key], list) and all(isinstance(x, dict) for x in card[key])
                ):
                    raise ValidationError(f"Contact {n}: {key} must be a list of objects.")
            for key in ("org", "name"):
                if key in card and not isinstance(card[key], dict):
                    raise ValidationError(f"Contact {n}: {key} must be an object.")
        return cards


class ReadRequestSchema(_Strict):
    """`POST /v1/messages/<id>/read`: show the typing indicator too (up to 25 s, or
    until the business answers)."""

    typing = StrictBoolean(load_default=False)


def request_problems(data: dict[str, Any]) -> dict[str, list[str]]:
    """Per field, what is wrong whatever the provider: one content kind at a time,
    WhatsApp only, a reaction with a target, a file name with a document."""
    errors: dict[str, list[str]] = {}
    given = [k for k in FIELDS if k in data]
    if not given:
        return errors
    if data.get("channel", "whatsapp") != "whatsapp":
        for key in given:
            errors.setdefault(key, []).append("WhatsApp only (channel whatsapp).")
    kinds = [k for k in CONTENT_KINDS if k in data]
    for kind in kinds:
        others = [k for k in (*OTHER_CONTENT, *CONTENT_KINDS) if k in data and k != kind]
        if others:
            errors.setdefault(kind, []).append(
                f"A {kind} message carries nothing else: drop {', '.join(others)}."
            )
    reaction = data.get("reaction")
    if reaction is not None:
        if reaction.get("message_id") and data.get("reply_to"):
            errors.setdefault("reply_to", []).append(
                "A reaction names its target once: reaction.message_id or reply_to."
            )
        elif not reaction.get("message_id") and not data.get("reply_to"):
            errors.setdefault("reaction", []).append(
                "A reaction needs the message it reacts to: reaction.message_id or reply_to."
            )
    if "filename" in data and not any(k in data for k in ("media_url", "media_id")):
        errors.setdefault("filename", []).append("A file name goes with a document's media_url.")
    return errors


def provider_problems(data: dict[str, Any], provider: str, kind: str | None) -> dict[str, list]:
    """What the chosen provider cannot send of these fields. `kind`: the Meta type the
    media goes as (`document`, `image`…), when there is media."""
    errors: dict[str, list[str]] = {}
    if provider == "twilio":
        for key in FIELDS:
            if key in data:
                errors[key] = [TWILIO_REFUSALS[key]]
        return errors
    if "filename" in data and kind is not None and kind != "document":
        errors["filename"] = [f"Only a document has a file name; this media goes as {kind}."]
    sticker = data.get("sticker")
    if isinstance(sticker, dict) and sticker.get("link"):
        from providers.meta import media_suffix

        suffix = media_suffix(sticker["link"])
        if suffix in STICKER_SUFFIXES:
            errors["sticker"] = [f"Meta stickers are image/webp; this link is a {suffix} file."]
    return errors


TWILIO_REFUSALS = {
    "reply_to": "Provider twilio cannot send a reply: Twilio has no reply context "
    "(use provider meta).",
    "reaction": "Provider twilio cannot send reactions (use provider meta).",
    "location": "Provider twilio cannot send a location message (use provider meta).",
    "contacts": "Provider twilio cannot send contact cards (use provider meta).",
    "sticker": "Provider twilio cannot send stickers (use provider meta).",
    "filename": "Provider twilio takes no file name (use provider meta).",
    "mark_read": "Provider twilio has no read receipts for inbound messages (use provider meta).",
}


# ---------------------------------------------------------------- accept time


def _bad(field: str, text: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {text}", code="invalid_fields", fields={field: [text]})


def resolve_target(
    session: Session,
    tenant_id: str,
    ref: str,
    *,
    field: str,
    to: str | None,
    account_id: str | None,
    reaction: bool = False,
    test: bool = False,
) -> dict[str, Any]:
    """`ref` (a Herald message id of this tenant, or a raw `wamid.`) as {"id", "wamid"}.
    A Herald id must be a Meta WhatsApp message of the same conversation (the same
    person, the same business number); its wamid may still be unknown (an outbound
    message not yet handed to Meta): it is then read from the row at send time.
    Another tenant's id is unknown, like a missing one, and so is one of the other mode
    (`test`: the new message's): a test message never replies to a live one."""
    if WAMID.match(ref):
        return {"id": None, "wamid": ref}
    if not HERALD_ID.match(ref):
        raise _bad(field, "Give a Herald message id (msg_…) or a WhatsApp message id (wamid.…).")
    row = session.execute(
        select(
            Message.id,
            Message.direction,
            Message.provider,
            Message.channel,
            Message.provider_account_id,
            Message.provider_message_id,
            Message.to_number,
            Message.from_number,
            Message.wa_id,
            Message.wa_user_id,
            Message.status,
            Message.created_at,
        ).where(Message.id == ref, Message.tenant_id == tenant_id, Message.test.is_(test))
    ).first()
    if row is None:
        raise _bad(field, f"No message {ref!r}.")
    if row.provider != "meta" or row.channel != "whatsapp":
        raise _bad(field, f"Message {ref!r} is not a WhatsApp message sent through Meta.")
    if reaction and row.direction != "inbound":
        raise _bad(field, "Meta reacts only to messages received from the WhatsApp user.")
    if reaction and utcnow() - row.created_at > REACTION_MAX_AGE:
        raise _bad(field, "Meta reacts only to messages of the last 30 days.")
    person = {row.from_number} if row.direction == "inbound" else {row.to_number, row.wa_id}
    person.add(row.wa_user_id)  # the same WhatsApp user, named by BSUID
    if to is not None and not (set(whatsapp_forms(to)) & (person - {None})):
        raise _bad(field, f"Message {ref!r} belongs to a conversation with another number.")
    if account_id is not None and row.provider_account_id != account_id:
        raise _bad(field, f"Message {ref!r} went through another business number.")
    if not row.provider_message_id and row.status in ("failed", "undelivered", "canceled"):
        raise _bad(field, f"Message {ref!r} never reached WhatsApp ({row.status}).")
    return {"id": row.id, "wamid": row.provider_message_id}


def accept_options(
    session: Session,
    tenant_id: str,
    data: dict[str, Any],
    *,
    to: str | None,
    account_id: str | None,
    test: bool = False,
) -> dict[str, Any]:
    """What of this request goes in `messages.options` (the hook in accept_message):
    the fields as given, and the reply or reaction target resolved to its wamid (one of
    the message's own mode, `test`). Nothing (and no query) for a request without them."""
    if not any(k in data for k in FIELDS):
        return {}
    options = {k: data[k] for k in FIELDS if k in data}
    reaction = data.get("reaction")
    if reaction is not None:
        ref = reaction.get("message_id") or data.get("reply_to")
        field = "reaction.message_id" if reaction.get("message_id") else "reply_to"
        options["reaction"] = {"message_id": ref, "emoji": reaction["emoji"]}
        options.pop("reply_to", None)
        options["target"] = resolve_target(
            session,
            tenant_id,
            ref,
            field=field,
            to=to,
            account_id=account_id,
            reaction=True,
            test=test,
        )
    elif data.get("reply_to"):
        options["target"] = resolve_target(
            session,
            tenant_id,
            data["reply_to"],
            field="reply_to",
            to=to,
            account_id=account_id,
            test=test,
        )
    return options


# ---------------------------------------------------------------- send time


def target_wamid(message: Message) -> str | None:
    """The replied-to (or reacted-to) message's wamid: as resolved at accept time, else
    read from its row now (it was not yet sent then)."""
    target = (message.options or {}).get("target")
    if not isinstance(target, dict):
        return None
    if target.get("wamid"):
        return str(target["wamid"])
    if not target.get("id"):
        return None
    with session_scope() as session:
        wamid = session.scalar(
            select(Message.provider_message_id).where(
                Message.id == target["id"], Message.tenant_id == message.tenant_id
            )
        )
    if wamid is None:
        log.warning("message %s: its target %s has no wamid yet", message.id, target["id"])
    return wamid


def outbound_fields(message: Message) -> dict[str, Any]:
    """OutboundMessage's conversation fields for a stored row (the hook in
    claim.outbound_for); empty, with no query, for a row without them."""
    options = message.options or {}
    if message.provider != "meta" or not any(k in options for k in FIELDS):
        return {}
    out: dict[str, Any] = {}
    wamid = target_wamid(message) if "target" in options else None
    if "reaction" in options:
        out["reaction"] = {"message_id": wamid, "emoji": options["reaction"].get("emoji", "")}
    elif wamid:
        out["context_message_id"] = wamid
    for key in ("location", "contacts", "sticker", "filename"):
        if key in options:
            out[key] = options[key]
    return out


def after_send(message: Message, account: Any) -> None:
    """After Meta took a reply: mark the conversation's inbound message read when the
    message asks (`mark_read`) or its business number (`account`, the one it went
    through) does (`auto_mark_read`). Done by the worker, best effort: a failure is
    logged and never touches the sent message. No query unless asked."""
    if message.provider != "meta" or account is None:
        return
    wanted = (message.options or {}).get("mark_read")
    if wanted is None:
        wanted = _truthy((account.settings or {}).get("auto_mark_read"))
    if not wanted:
        return
    try:
        with session_scope() as session:
            inbound = _inbound_to_mark(session, message)
            if inbound is None:
                return
            _mark_read(session, account, inbound, typing=False, source="worker")
    except Exception:
        log.warning("marking read after id=%s failed", message.id, exc_info=True)


def _account(session: Session, message: Message) -> Any:
    """The Meta account (decrypted) the message went or came through: the business
    number that must send the read receipt."""
    from models import ProviderAccount
    from services.tenancy.tenants import credentials

    account = session.get(ProviderAccount, message.provider_account_id)
    if account is None or account.provider != "meta" or account.tenant_id != message.tenant_id:
        return None
    return credentials(account)


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def _inbound_to_mark(session: Session, message: Message) -> Message | None:
    """The replied-to message when it is inbound, else the newest inbound message from
    the recipient to this business number (not yet marked read)."""
    target = (message.options or {}).get("target") or {}
    if target.get("id"):
        row = session.get(Message, target["id"])
        if row is not None and row.direction == "inbound" and row.read_at is None:
            return row
        if row is not None and row.direction == "inbound":
            return None
    return session.scalars(
        select(Message)
        .where(
            Message.tenant_id == message.tenant_id,
            Message.direction == "inbound",
            Message.provider == "meta",
            Message.provider_account_id == message.provider_account_id,
            Message.from_number.in_(whatsapp_forms(message.to_number)),
            Message.read_at.is_(None),
        )
        .order_by(Message.id.desc())
        .limit(1)
    ).first()


# ---------------------------------------------------------------- read receipts


def mark_read(
    session: Session, tenant_id: str, message_id: str, *, typing: bool, test: bool | None = None
) -> Message:
    """Mark an inbound Meta message read (blue ticks; Meta marks earlier ones too) and
    optionally show the typing indicator, now, through the tenant's Meta account.

    404 for an unknown or another tenant's id, and for one of the other mode than `test`
    (the caller's key's: inbound messages are live, so a test key, which never reaches
    Meta, finds none); 409 `not_inbound` for an outbound
    message (a business reads only what it received); 422
    `read_receipts_unsupported` for a Twilio message (Twilio has no read-receipt API
    for inbound messages); a refusal by Meta is 422 `provider_refused` with its code."""
    query = select(Message).where(Message.id == message_id, Message.tenant_id == tenant_id)
    if test is not None:
        query = query.where(Message.test.is_(test))
    message = session.scalars(query).first()
    if message is None:
        raise NotFound(f"No message {message_id!r}.")
    if message.direction != "inbound":
        raise Conflict(
            "Only an inbound message can be marked read: this one was sent by the business.",
            code="not_inbound",
        )
    if message.provider != "meta" or not message.provider_message_id:
        raise PolicyRefused(
            f"Provider {message.provider} has no read receipts for inbound messages.",
            code="read_receipts_unsupported",
        )
    account = _account(session, message)
    if account is None:
        raise PolicyRefused(
            "The business number that received this message is no longer configured.",
            code="provider_not_configured",
        )
    _mark_read(session, account, message, typing=typing, source="api")
    return message


def _mark_read(session: Session, account: Any, message: Message, *, typing: bool, source: str):  # type: ignore[no-untyped-def]
    from providers import ProviderError, get_provider

    provider = get_provider("meta")
    try:
        provider.mark_read(account, message.provider_message_id, typing=typing)  # type: ignore[attr-defined]
    except ProviderError as exc:
        log.info("mark read refused id=%s code=%s", message.id, exc.code)
        raise PolicyRefused(
            f"Meta refused to mark the message read: {exc.message}",
            code="provider_refused",
            fields={"provider_code": [exc.code or exc.kind.value]},
        ) from None
    now = utcnow()
    first = message.read_at is None
    session.execute(
        update(Message)
        .where(Message.id == message.id, Message.read_at.is_(None))
        .values(read_at=now)
        .execution_options(synchronize_session=False)
    )
    if first:
        message.read_at = now
    session.add(
        MessageEvent(
            message_id=message.id,
            status=message.status,
            native_status="typing" if typing else "read",
            source=source,
            applied=first,
            detail={"typing_indicator": typing},
            at=now,
        )
    )
    log.info("inbound marked read id=%s from=%s", message.id, mask(message.from_number))


# ---------------------------------------------------------------- inbound


def inbound_extras(item: dict[str, Any]) -> dict[str, Any]:
    """From one Meta inbound message object: what to keep beyond its body and media.
    Returns {"body"?: text to show, "options": {...}} where options may hold
    `context` (the wamid it replies to, and `forwarded`), `reaction`, `location`,
    `contacts` and `sticker` as Meta sent them. Odd shapes are dropped, never fatal."""
    options: dict[str, Any] = {}
    body: str | None = None
    context = item.get("context")
    if isinstance(context, dict):
        kept = {
            k: context[k]
            for k in ("id", "from", "forwarded", "frequently_forwarded")
            if isinstance(context.get(k), str | bool) and len(str(context[k])) <= 256
        }
        if kept:
            options["context"] = kept
    kind = item.get("type")
    content = item.get(kind) if isinstance(kind, str) else None
    if kind == "reaction" and isinstance(content, dict):
        emoji = content.get("emoji")
        target = content.get("message_id")
        options["reaction"] = {
            "message_id": target if isinstance(target, str) and len(target) <= 256 else None,
            "emoji": emoji if isinstance(emoji, str) and len(emoji) <= 64 else "",
        }
        body = options["reaction"]["emoji"] or None
    elif kind == "location" and isinstance(content, dict):
        location = {
            k: content[k]
            for k in ("latitude", "longitude", "name", "address", "url")
            if isinstance(content.get(k), int | float | str) and not isinstance(content[k], bool)
        }
        options["location"] = location
        body = location.get("name") if isinstance(location.get("name"), str) else None
    elif kind == "contacts":
        cards = item.get("contacts")
        if isinstance(cards, list):
            options["contacts"] = [c for c in cards[:MAX_CONTACTS] if isinstance(c, dict)]
    elif kind == "sticker" and isinstance(content, dict):
        options["sticker"] = {
            k: content[k]
            for k in ("id", "mime_type", "sha256", "animated")
            if isinstance(content.get(k), str | bool | int)
        }
    return {"body": body, "options": options} if options or body else {}


def link_inbound(session: Session, message: Message, extras: dict[str, Any]) -> None:
    """Keep `inbound_extras` on a stored inbound message: its options, a body when it
    had none, and which Herald message it answers (`reply_to`, or the reaction's
    target `reaction.target`), by wamid within the tenant."""
    if not extras:
        return
    options = dict(extras.get("options") or {})
    if message.body is None and extras.get("body"):
        message.body = extras["body"]
    wamids = {
        w
        for w in (
            (options.get("context") or {}).get("id"),
            (options.get("reaction") or {}).get("message_id"),
        )
        if isinstance(w, str)
    }
    found = (
        dict(
            session.execute(
                select(Message.provider_message_id, Message.id).where(
                    Message.tenant_id == message.tenant_id,
                    Message.provider == "meta",
                    Message.provider_message_id.in_(wamids),
                )
            ).all()
        )
        if wamids
        else {}
    )
    context = options.get("context")
    if context and found.get(context.get("id")):
        options["reply_to"] = found[context["id"]]
    reaction = options.get("reaction")
    if reaction and found.get(reaction.get("message_id")):
        reaction["target"] = found[reaction["message_id"]]
    message.options = {**(message.options or {}), **options}


def public_fields(message: Message) -> dict[str, Any]:
    """The conversation fields shown on a message (GET /v1/messages/<id>, events out):
    `reply_to` (the Herald id, else the wamid it answers), `context`, `reaction`,
    `location`, `contacts`, `sticker`, `filename`. Empty for a message without them."""
    return options_fields(message.options)


def options_fields(options: dict[str, Any] | None) -> dict[str, Any]:
    """`public_fields` from a row's `options` (a message just inserted has no ORM object)."""
    if not options:
        return {}
    out: dict[str, Any] = {}
    target = options.get("target")
    if isinstance(target, dict) and "reaction" not in options:
        out["reply_to"] = target.get("id") or target.get("wamid")
    elif options.get("reply_to"):
        out["reply_to"] = options["reply_to"]
    for key in ("context", "reaction", "location", "contacts", "sticker", "filename"):
        if key in options:
            out[key] = options[key]
    return out
