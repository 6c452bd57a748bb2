"""The message request schema, shared by `POST /v1/messages` and the
`herald.send_message` Celery task so both validate identically."""

from __future__ import annotations

from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from services.errors import InvalidRequest
from services.inputs import value_problem
from services.phones import normalize_e164, parse_e164

CHANNELS = ("whatsapp", "sms")
PROVIDERS = ("twilio", "meta")
BODY_LIMITS = {"whatsapp": 4096, "sms": 1600}
MAX_MEDIA = 10

_url = validate.URL(schemes={"http", "https"}, require_tld=False)


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
    variables = fields.List(fields.String(validate=validate.Length(max=1024)), load_default=list)
    components = fields.List(fields.Dict())
    content_sid = fields.String(validate=validate.Regexp(r"^HX[0-9a-fA-F]{32}$"))
    content_variables = fields.Dict(keys=fields.String(), values=fields.String())

    @validates_schema
    def _name_or_sid(self, data: dict[str, Any], **_: Any) -> None:
        if not data.get("name") and not data.get("content_sid"):
            raise ValidationError(
                "A template needs a name (Meta) or a content_sid (Twilio).", "name"
            )


class MessageRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    to = fields.String(validate=validate.Length(max=64))
    contact_id = fields.String(validate=validate.Length(min=1, max=128))
    channel = fields.String(load_default="whatsapp", validate=validate.OneOf(CHANNELS))
    provider = fields.String(validate=validate.OneOf(PROVIDERS))
    body = fields.String(validate=validate.Length(min=1))
    media_url = MediaUrls()
    media_type = fields.String(validate=validate.OneOf(("image", "document", "audio", "video")))
    preview_url = fields.Boolean()
    template = fields.Nested(TemplateSchema)
    interactive = fields.Dict()
    send_at = fields.AwareDateTime()
    callback_url = fields.String(validate=[validate.Length(max=2048), _url])
    metadata = fields.Dict(keys=fields.String(validate=validate.Length(max=64)), load_default=dict)

    @validates_schema
    def _rules(self, data: dict[str, Any], **_: Any) -> None:
        errors: dict[str, list[str]] = {}
        if ("to" in data) == ("contact_id" in data):
            errors.setdefault("to", []).append("Give exactly one of 'to' or 'contact_id'.")
        if "to" in data:
            try:
                parse_e164(data["to"])
            except ValueError as exc:
                errors.setdefault("to", []).append(str(exc))
        if not any(k in data for k in ("body", "media_url", "template", "interactive")):
            errors.setdefault("body", []).append(
                "Give one of 'body', 'media_url', 'template' or 'interactive'."
            )
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

    @post_load
    def _normalize(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        if "to" in data:
            data["to"] = normalize_e164(data["to"])
        return data


_schema = MessageRequestSchema()


def check_for_provider(data: dict[str, Any], provider: str) -> None:
    """What the chosen provider needs of validated content, the same for one message
    and for a campaign (both know the provider only once the tenant's default is
    applied): Meta serves WhatsApp only, takes one media and sends templates by
    name; Twilio sends templates by content_sid."""
    errors: dict[str, list[str]] = {}
    if provider == "meta" and data.get("channel", "whatsapp") != "whatsapp":
        errors["provider"] = ["Meta serves the whatsapp channel only."]
    if provider == "meta" and len(data.get("media_url") or []) > 1:
        errors["media_url"] = ["At most 1 media URL with provider meta."]
    template = data.get("template")
    if template and provider == "twilio" and not template.get("content_sid"):
        errors["template"] = ["Twilio templates are sent by ContentSid: give template.content_sid."]
    if template and provider == "meta" and not template.get("name"):
        errors["template"] = ["Meta templates are sent by name: give template.name."]
    if errors:
        raise InvalidRequest(
            f"The request does not suit provider {provider}.", code="invalid_fields", fields=errors
        )


def load_message_request(payload: Any) -> dict[str, Any]:
    """Validate a request body; raise InvalidRequest with per-field messages."""
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    problem = value_problem(payload)  # the task's kwargs never went through api/inputs.py
    if problem:
        raise InvalidRequest(f"The request cannot be stored: {problem}.", code="malformed_json")
    try:
        return _schema.load(payload)
    except ValidationError as exc:
        raise InvalidRequest(
            "The request has invalid fields.",
            code="invalid_fields",
            fields=exc.normalized_messages(),
        ) from None
