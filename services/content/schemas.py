"""The message request schema, shared by `POST /v1/messages` and the
`herald.send_message` Celery task so both validate identically."""

from __future__ import annotations

import json
import re
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates_schema,
)

from core.errors import InvalidRequest
from providers.meta import UNSENDABLE_SUFFIXES, media_suffix, media_type_for
from services.content import conversations
from services.content.inputs import StrictBoolean, send_at_problem, value_problem
from services.content.phones import (
    TO_FIELD,
    looks_like_bsuid,
    normalize_e164,
    parse_bsuid,
    parse_e164,
)

CHANNELS = ("whatsapp", "sms")
PROVIDERS = ("twilio", "meta")
BODY_LIMITS = {"whatsapp": 4096, "sms": 1600}  # before the provider is known: the most either takes
MAX_MEDIA = 10
# What each provider takes, from its documentation (see check_for_provider).
TWILIO_BODY_LIMIT = 1600  # Twilio's Body, SMS and WhatsApp alike (error 21617)
META_TEXT_LIMIT = 4096  # Meta text.body
META_CAPTION_LIMIT = 1024  # Meta image/video/document caption
WHATSAPP_TEMPLATE_LIMIT = 1024  # a WhatsApp template's text with its variables filled in

_url = validate.URL(schemes={"http", "https"}, require_tld=False)

# A template's parts, capped as Meta caps them: a text header is at most 60 characters
# (developers.facebook.com/documentation/business-messaging/whatsapp/templates/components),
# the body 1,024, the footer 60, and a template has at most 10 buttons (the same page, as
# summarised by docs.ycloud.com "Template components and formats" and Gupshup's "Template
# Button List"). The 2,000 characters of a button's parameter (Meta's URL button limit)
# and the 10 cards of a carousel are Meta's as we know them, not confirmed by those pages.
# Applied to the `components` a send request gives, on every path that takes a template
# (message, batch, campaign, the Celery task): Meta would refuse more, and no more is stored.
TEMPLATE_TEXT_LIMITS = {"header": 60, "body": WHATSAPP_TEMPLATE_LIMIT, "footer": 60}
TEMPLATE_BUTTONS = 10
TEMPLATE_BUTTON_TEXT = 2000  # a button's parameter (a URL's variable part, a payload)
TEMPLATE_CAROUSEL_CARDS = 10
# One header, one body, one footer and the buttons (a carousel counts as the body's peer).
TEMPLATE_COMPONENTS = 3 + TEMPLATE_BUTTONS
# Herald's own bounds, far above any template Meta approves: any one string in the
# components (a media link, say), the components as JSON, and the variables' count.
TEMPLATE_STRING = 2048
TEMPLATE_COMPONENTS_BYTES = 32 * 1024
TEMPLATE_VARIABLES = 100


# What `from` may name (services/tenancy/senders.py resolves it).
MESSAGING_SERVICE = re.compile(r"MG[0-9a-f]{32}")
PHONE_NUMBER_ID = re.compile(r"[0-9]{5,20}")
SENDER_ID = re.compile(r"snd_[0-9A-Z]{26}")


def from_problem(value: Any) -> str | None:
    """Why `from` cannot name a sender, or None: a sender id, an E.164 number, a
    Messaging Service SID (MG + 32 hex) or a Meta phone number id (digits)."""
    if not isinstance(value, str) or not value.strip():
        return "Give a sender id, a number, a Messaging Service SID or a phone number id."
    text = value.strip().removeprefix("whatsapp:").strip()
    if SENDER_ID.fullmatch(text) or MESSAGING_SERVICE.fullmatch(text):
        return None
    if PHONE_NUMBER_ID.fullmatch(text) or normalize_e164(text):
        return None
    return (
        "Not a sender id (snd_…), an E.164 number, a Messaging Service SID (MG + 32 hex) "
        "or a phone number id."
    )


class MediaUrls(fields.Field):
    """`media_url` as one URL or a list of up to 10 (Twilio MMS takes several)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        urls = [value] if isinstance(value, str) else value
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise ValidationError("Must be a URL or a non-empty list of URLs.")
        if len(urls) > MAX_MEDIA:
            raise ValidationError(f"At most {MAX_MEDIA} media URLs.")
        for url in urls:
            _url(url)
        return urls


class TemplateSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(validate=validate.Length(min=1, max=512))
    language = fields.String(load_default="en_US", validate=validate.Length(min=2, max=16))
    variables = fields.List(
        fields.String(validate=validate.Length(max=1024)),
        load_default=list,
        validate=validate.Length(max=TEMPLATE_VARIABLES),
    )
    components = fields.List(fields.Dict())
    content_sid = fields.String(validate=validate.Regexp(r"^HX[0-9a-fA-F]{32}$"))
    content_variables = fields.Dict(
        keys=fields.String(validate=validate.Length(max=64)),
        values=fields.String(validate=validate.Length(max=1024)),
        validate=validate.Length(max=TEMPLATE_VARIABLES),
    )

    @validates_schema
    def _name_or_sid(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("name") and not data.get("content_sid"):
            raise ValidationError(
                "A template needs a name (Meta) or a content_sid (Twilio).", "name"
            )
        problems = components_problems(data.get("components"))
        if problems:
            raise ValidationError(problems, "components")


def _texts(value: Any) -> list[str]:
    """Every string inside a JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []


def components_problems(components: Any) -> list[str]:
    """Why a template's `components` exceed Meta's caps (TEMPLATE_TEXT_LIMITS and the
    rest, above), or nothing: the number of each kind of component, each kind's text,
    a button's parameter, a carousel's cards, and the whole as JSON."""
    if not isinstance(components, list):
        return []
    problems: list[str] = []
    if len(components) > TEMPLATE_COMPONENTS:
        problems.append(
            f"At most {TEMPLATE_COMPONENTS} components (a header, a body, a footer and "
            f"{TEMPLATE_BUTTONS} buttons); got {len(components)}."
        )
    counts: dict[str, int] = {}
    for component in components:
        kind = str(component.get("type") or "").lower()
        counts[kind] = counts.get(kind, 0) + 1
        params = component.get("parameters")
        texts = [
            str(p.get("text"))
            for p in (params if isinstance(params, list) else [])
            if isinstance(p, dict) and p.get("text") is not None
        ]
        if kind in TEMPLATE_TEXT_LIMITS:
            own = component.get("text")
            total = sum(map(len, texts)) + (len(own) if isinstance(own, str) else 0)
            if total > TEMPLATE_TEXT_LIMITS[kind]:
                problems.append(
                    f"The {kind}'s text is at most {TEMPLATE_TEXT_LIMITS[kind]:,} "
                    f"characters; got {total:,}."
                )
        elif kind == "button":
            longest = max(map(len, _texts(params)), default=0)
            if longest > TEMPLATE_BUTTON_TEXT:
                problems.append(
                    f"A button's parameter is at most {TEMPLATE_BUTTON_TEXT:,} characters; "
                    f"got {longest:,}."
                )
        elif kind == "carousel":
            cards = component.get("cards")
            if isinstance(cards, list) and len(cards) > TEMPLATE_CAROUSEL_CARDS:
                problems.append(
                    f"A carousel has at most {TEMPLATE_CAROUSEL_CARDS} cards; got {len(cards)}."
                )
    for kind in ("header", "body", "footer", "carousel"):
        if counts.get(kind, 0) > 1:
            problems.append(f"At most one {kind} component; got {counts[kind]}.")
    if counts.get("button", 0) > TEMPLATE_BUTTONS:
        problems.append(f"At most {TEMPLATE_BUTTONS} buttons; got {counts['button']}.")
    longest = max(map(len, _texts(components)), default=0)
    if longest > TEMPLATE_STRING:
        problems.append(f"A value is at most {TEMPLATE_STRING:,} characters; got {longest:,}.")
    size = len(json.dumps(components, ensure_ascii=False).encode())
    if size > TEMPLATE_COMPONENTS_BYTES:
        problems.append(
            f"The components are at most {TEMPLATE_COMPONENTS_BYTES // 1024} KB as JSON; "
            f"got {size // 1024:,} KB."
        )
    return problems


# Channel failover (services/messages/failover.py): the deadline's bounds, in seconds
# (a day: no code or alert is worth having later than that).
FAILOVER_MIN_SECONDS = 1
FAILOVER_MAX_SECONDS = 24 * 3600


class FailoverSchema(Schema):
    """`failover`: send this WhatsApp message again as an SMS, once, if WhatsApp cannot
    deliver it (services/messages/failover.py says which failures count)."""

    class Meta:
        unknown = RAISE

    channel = fields.String(
        load_default="sms",
        validate=validate.OneOf(("sms",)),
        metadata={"description": "the fallback's channel: sms (through the tenant's SMS sender)"},
    )
    body = fields.String(
        validate=validate.Length(min=1, max=BODY_LIMITS["sms"]),
        metadata={"description": "the fallback's text; default: the message's own body"},
    )
    after_seconds = fields.Integer(
        strict=True,
        validate=validate.Range(min=FAILOVER_MIN_SECONDS, max=FAILOVER_MAX_SECONDS),
        metadata={
            "description": "also fall back if the message is not delivered this many seconds"
            " after it is due (its send_at, else its acceptance)"
        },
    )


class MessageRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    to = fields.String(validate=validate.Length(max=160), metadata=TO_FIELD)
    contact_id = fields.String(validate=validate.Length(min=1, max=128))
    channel = fields.String(load_default="whatsapp", validate=validate.OneOf(CHANNELS))
    provider = fields.String(validate=validate.OneOf(PROVIDERS))
    body = fields.String(validate=validate.Length(min=1))
    media_url = MediaUrls()
    media_type = fields.String(validate=validate.OneOf(("image", "document", "audio", "video")))
    media_id = fields.String(validate=validate.Length(min=1, max=64))  # POST /v1/media's med_ id
    preview_url = StrictBoolean()
    template = fields.Nested(TemplateSchema)
    interactive = fields.Dict()
    send_at = fields.AwareDateTime()
    # Seconds the message may wait once due; past it, `failed` / `expired`
    # (services/messages/expiry.py).
    ttl = fields.Integer(strict=True, validate=validate.Range(min=1, max=14 * 24 * 3600))
    callback_url = fields.String(validate=[validate.Length(max=2048), _url])
    metadata = fields.Dict(keys=fields.String(validate=validate.Length(max=64)), load_default=dict)
    # senders: a sender id, number, Messaging Service SID or phone number id
    # (services/tenancy/senders.py)
    from_ = fields.String(data_key="from", validate=validate.Length(min=1, max=64))
    # Conversations (Meta): reply_to, reaction, location, contacts, sticker, filename,
    # mark_read (services/content/conversations.py).
    reply_to = fields.String(validate=validate.Length(min=1, max=256))
    reaction = fields.Nested(conversations.ReactionSchema)
    location = fields.Nested(conversations.LocationSchema)
    contacts = conversations.ContactCards()
    sticker = fields.Nested(conversations.StickerSchema)
    filename = fields.String(validate=validate.Length(min=1, max=240))
    mark_read = StrictBoolean()
    # null: no fallback, even where the tenant's policy gives one
    failover = fields.Nested(FailoverSchema, allow_none=True)

    @validates_schema
    def _rules(self, data: dict[str, Any], **_: Any) -> None:
        errors: dict[str, list[str]] = conversations.request_problems(data)
        if data.get("failover") is not None and (problem := failover_problem(data)):
            errors.setdefault("failover", []).append(problem)
        if "from_" in data and (problem := from_problem(data["from_"])):  # senders
            errors.setdefault("from", []).append(problem)
        if ("to" in data) == ("contact_id" in data):
            errors.setdefault("to", []).append("Give exactly one of 'to' or 'contact_id'.")
        if "to" in data:
            try:
                # normalized here: parsed once. A BSUID on SMS is refused at accept (422).
                raw = data["to"]
                data["to"] = parse_bsuid(raw) if looks_like_bsuid(raw.strip()) else parse_e164(raw)
            except ValueError as exc:
                errors.setdefault("to", []).append(str(exc))
        content = ("body", "media_url", "media_id", "template", "interactive")
        if not any(k in data for k in (*content, *conversations.CONTENT_KINDS)):
            errors.setdefault("body", []).append(
                "Give one of 'body', 'media_url', 'media_id', 'template' or 'interactive'."
            )
        for other in ("media_url", "media_type", "interactive"):
            if "media_id" in data and other in data:  # the upload says what the media is
                errors.setdefault("media_id", []).append(f"Give 'media_id' or '{other}', not both.")
        if "send_at" in data and (problem := send_at_problem(data["send_at"])):
            errors.setdefault("send_at", []).append(problem)
        channel = data.get("channel", "whatsapp")
        limit = BODY_LIMITS[channel]
        if len(data.get("body") or "") > limit:
            errors.setdefault("body", []).append(f"At most {limit} characters on {channel}.")
        if data.get("provider") == "meta" and channel != "whatsapp":
            errors.setdefault("provider", []).append("Meta serves the whatsapp channel only.")
        if "interactive" in data and channel != "whatsapp":
            errors.setdefault("interactive", []).append("Interactive messages are WhatsApp only.")
        if len(str(data.get("metadata", {}))) > 4096:
            errors.setdefault("metadata", []).append("At most 4 KB of metadata.")
        if errors:
            raise ValidationError(errors)


def failover_problem(data: dict[str, Any]) -> str | None:
    """Why `failover` does not suit this request, or None: only a WhatsApp message
    falls back, and the SMS needs a text of at most 1,600 characters."""
    if data.get("channel", "whatsapp") != "whatsapp":
        return "Only a WhatsApp message falls back to SMS."
    if data["failover"].get("body"):
        return None
    for other in ("reaction", "location", "contacts", "sticker", "interactive"):
        if other in data:
            return f"A {other} message does not fall back to SMS."
    body = data.get("body")
    if not body or "template" in data:
        return "Give 'failover.body': the message has no text an SMS could carry."
    if len(body) > BODY_LIMITS["sms"]:
        return f"Give 'failover.body': an SMS takes at most {BODY_LIMITS['sms']} characters."
    return None


_schema = MessageRequestSchema()


def twilio_length(text: str) -> int:
    """A body's length as Twilio counts it against 1,600: in UTF-16 units, so an emoji
    counts twice (Twilio: "emojis ... will be counted as multiple characters")."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def variables_problem(channel: str, template: dict[str, Any] | None) -> str | None:
    """Why a WhatsApp template's variables cannot fit, or None. The template's own text
    lives at the provider, so only a sure overflow is caught here: variables longer
    together than the whole filled-in text may be (Meta 132005, Twilio 63021)."""
    if channel != "whatsapp" or not template:
        return None
    # What is sent: Twilio takes content_variables over the variables list.
    values = list((template.get("content_variables") or {}).values()) or list(
        template.get("variables") or []
    )
    total = sum(len(str(v)) for v in values)
    if total > WHATSAPP_TEMPLATE_LIMIT:
        return (
            f"Template variables total {total} characters; a WhatsApp template with its "
            f"variables is at most {WHATSAPP_TEMPLATE_LIMIT}."
        )
    return None


def provider_problems(data: dict[str, Any], provider: str) -> dict[str, list[str]]:
    """Per field, what the chosen provider would refuse (or silently drop) in this
    content; empty when it suits. See check_for_provider."""
    errors: dict[str, list[str]] = {}
    channel = data.get("channel", "whatsapp")
    body = data.get("body") or ""
    media = data.get("media_url") or []
    template = data.get("template")
    if provider == "meta" and channel != "whatsapp":
        errors["provider"] = ["Meta serves the whatsapp channel only."]
    if provider == "meta" and len(media) > 1:
        errors["media_url"] = ["At most 1 media URL with provider meta."]
    if template and provider == "twilio" and not template.get("content_sid"):
        errors["template"] = ["Twilio templates are sent by ContentSid: give template.content_sid."]
    if template and provider == "meta" and not template.get("name"):
        errors["template"] = ["Meta templates are sent by name: give template.name."]
    problem = variables_problem(channel, template)
    if problem:
        errors.setdefault("template", []).append(problem)
    if provider == "twilio" and data.get("media_id"):
        errors["media_id"] = [
            "Twilio sends media only from a URL: give media_url (media_id is Meta's upload)."
        ]
    if provider == "twilio":
        if "interactive" in data:
            errors["interactive"] = [
                "Twilio sends buttons and lists only as Content templates: "
                "give template.content_sid instead."
            ]
        if template and media:
            errors.setdefault("media_url", []).append(
                "Twilio refuses MediaUrl with a ContentSid: put the media in the Content template."
            )
        if not template and twilio_length(body) > TWILIO_BODY_LIMIT:
            errors.setdefault("body", []).append(
                f"At most {TWILIO_BODY_LIMIT} characters with provider twilio "
                f"(an emoji counts as 2; this body counts {twilio_length(body)})."
            )
    if provider == "meta" and not template and "interactive" not in data:
        if media:
            kind = media_type_for(media[0], data.get("media_type"))
            suffix = media_suffix(media[0])
            if suffix in UNSENDABLE_SUFFIXES:
                errors.setdefault("media_url", []).append(
                    f"Meta cannot send a {suffix} file: images are JPEG or PNG "
                    "(send an animation as MP4 video)."
                )
            elif kind == "image" and suffix == ".webp":
                errors.setdefault("media_type", []).append(
                    "Meta images are JPEG or PNG: a .webp goes as a sticker (leave media_type out)."
                )
            elif body and kind == "sticker":
                errors.setdefault("body", []).append("Meta sends a sticker without a caption.")
            elif body and kind != "audio" and len(body) > META_CAPTION_LIMIT:
                errors.setdefault("body", []).append(
                    f"At most {META_CAPTION_LIMIT} characters as a Meta {kind} caption."
                )
        elif len(body) > META_TEXT_LIMIT:
            errors.setdefault("body", []).append(
                f"At most {META_TEXT_LIMIT} characters in a Meta text message."
            )
    kind = media_type_for(media[0], data.get("media_type")) if media else None
    for field, texts in conversations.provider_problems(data, provider, kind).items():
        errors.setdefault(field, []).extend(texts)
    return errors


def check_for_provider(data: dict[str, Any], provider: str) -> None:
    """What the chosen provider takes of validated content, the same for one message
    and for a campaign (both know the provider only once the tenant's default is
    applied), so nothing the provider would refuse or drop is answered 202.

    Meta: WhatsApp only, one media, templates by name, text up to 4,096 characters, a
    caption up to 1,024, images JPEG/PNG (a .webp goes as a sticker, a .gif is refused).
    Twilio: templates by content_sid, no MediaUrl beside a ContentSid, no interactive
    (Content templates only), Body up to 1,600 (SMS and WhatsApp). WhatsApp templates:
    variables together within the 1,024 characters of the filled-in text."""
    errors = provider_problems(data, provider)
    if errors:
        raise InvalidRequest(
            f"The request does not suit provider {provider}.", code="invalid_fields", fields=errors
        )


def load_message_request(
    payload: Any, *, walked: bool = False, schema: Schema | None = None
) -> dict[str, Any]:
    """Validate a request body; raise InvalidRequest with per-field messages.
    `walked`: the API's JSON parser (api/inputs.py) already refused what cannot be
    stored, so the value is not walked twice."""
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if not walked:
        problem = value_problem(payload)  # the task's kwargs never went through api/inputs.py
        if problem:
            raise InvalidRequest(f"The request cannot be stored: {problem}.", code="malformed_json")
    return load_object(schema or _schema, payload)


MAX_BATCH = 1000


class MessageBatchItemSchema(MessageRequestSchema):
    """One message of `POST /v1/messages/batch`: the fields of `POST /v1/messages`, and
    its own idempotency key (the header's role for a single message)."""

    idempotency_key = fields.String(validate=validate.Length(min=1, max=255))


class MessageBatchRequestSchema(Schema):
    """`POST /v1/messages/batch`: up to 1,000 messages, each answered on its own."""

    class Meta:
        unknown = RAISE

    messages = fields.List(
        fields.Nested(MessageBatchItemSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_BATCH),
    )


_batch_item_schema = MessageBatchItemSchema()


def load_batch_item(item: Any) -> dict[str, Any]:
    """One batch entry, validated like a single message (its key included)."""
    return load_message_request(item, walked=True, schema=_batch_item_schema)


def load_object(
    schema: Schema,
    payload: Any,
    *,
    partial: bool = False,
    required: str | None = None,
    what: str | None = None,
) -> dict[str, Any]:
    """`payload` loaded by `schema`, or the API's 400: not an object, or `invalid_fields`
    with a message per field. `required`: a field a create must give and an update
    (`partial`) may leave out. `what` names the payload in the messages ("campaign");
    by default they speak of the request."""
    if not isinstance(payload, dict):
        raise InvalidRequest(f"The {what or 'request body'} must be a JSON object.")
    try:
        data = schema.load(payload, partial=partial)
    except ValidationError as exc:
        raise InvalidRequest(
            f"The {what or 'request'} has invalid fields.",
            code="invalid_fields",
            fields=exc.normalized_messages(),
        ) from None
    if required and not partial and required not in data:
        raise InvalidRequest(
            f"{required} is required.",
            code="invalid_fields",
            fields={required: ["Missing data for required field."]},
        )
    return data
