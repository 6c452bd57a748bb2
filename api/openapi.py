"""The OpenAPI document at /openapi.json, generated from the code at app start.

Request bodies come from the marshmallow schemas the views load with (services/), so a
rule added there is in the document. Response bodies come from the response schemas
beside the serializers that build them (core/shapes.py: tests hold each serializer to
its schema), registered below under their component names. Each view's operation
(summary, parameters, the statuses it answers) is the YAML section of its docstring,
read by apispec's FlaskPlugin, or, for views documented from their schemas alone
(`answers`, the admin API), made from the decorator's arguments.
What app-wide hooks answer is added here, once, rather than repeated in every docstring:
a 400 for a NUL in the URL (api/inputs.py), a 413 for a body over the size limit, a 503
(`unavailable`) where the view uses the database (api/errors.py), and the admin prefix's
401/404 (api/admin.py).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec_webframeworks.flask import FlaskPlugin
from flask import Flask
from marshmallow import Schema, fields, validate

from core.errors import RETRY_AFTER_SECONDS
from core.shapes import ErrorBodyView, ErrorView, Shape, listing, shape
from services.campaigns.campaigns import CampaignPage, CampaignSchema, CampaignView
from services.campaigns.resend import CampaignResendView
from services.content.media import MediaView
from services.content.schemas import MAX_MEDIA, MediaUrls, MessageRequestSchema
from services.messages.batch import BatchAnswerView
from services.messages.serialize import MessagePageView, MessageView
from services.policy.contacts import ContactSchema, ContactView
from services.reporting.events import MessageFailoverEventView, MessageStatusEventView
from services.reporting.usage import UsageView
from services.tenancy.admin import TenantSchema
from services.tenancy.sender_admin import SenderSchema, SenderUpdateSchema

VERSION = "0.1.0"
# Endpoints documented by hand (HTML pages, static files) or not part of the API.
UNDOCUMENTED = ("static", "console.")
# Views that never open a database session, so cannot answer the database's 503.
WITHOUT_DATABASE = {
    "ops.healthz",
    "ops.metrics",  # its collectors report a dead database as a missing gauge
    "ops.openapi",
    "ops.docs",
    "ops.docs_asset",
}

# Operations are grouped by blueprint in /docs.
TAGS = {"legacy": "seed routes", "ops": "operations"}

_retry_after = {
    "Retry-After": {
        "description": f"Seconds to wait before retrying (Herald answers {RETRY_AFTER_SECONDS})",
        "schema": {"type": "integer"},
    }
}


def _answer(description: str, schema: str = "Error", **extra: Any) -> dict:
    body: dict[str, Any] = {"description": description, **extra}
    body["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    return body


# ---------------------------------------------------------------- shapes built in api/


class SeedErrorView(Shape):
    """The seeds' error shape (api/legacy.py)."""

    error = fields.String()


class EnvelopeErrorView(Shape):
    """Seed 003's error envelope (api/legacy.py `_envelope_error`)."""

    type = fields.String(validate=validate.OneOf(["3"]))
    message = fields.String()
    data = fields.Raw(allow_none=True, metadata={"description": "null"})


class SeedSentView(Shape):
    """Seed 000's answer to a send (api/legacy.py `twilio_message`)."""

    message = fields.String(validate=validate.OneOf(["Message sent"]))
    id = fields.String()


class SeedMethodView(Shape):
    """Seed 000's answer to a method other than POST."""

    message = fields.String(validate=validate.OneOf(["Wrong request method"]))


class WhatsAppSentView(Shape):
    """Seed 002's answer to a send (api/legacy.py `whatsapp_send`)."""

    success = fields.Boolean()
    messageId = fields.String()
    cost = fields.Float()


class WhatsAppStatusView(Shape):
    """Seed 002's status (api/legacy.py `whatsapp_status`)."""

    success = fields.Boolean()
    messageId = fields.String()
    status = fields.String()
    twilioMessageSid = fields.String(allow_none=True)
    toPhoneNumber = fields.String()
    cost = fields.Float()
    errorMessage = fields.String(allow_none=True)
    attemptCount = fields.Integer()
    createdAt = fields.DateTime()
    sentAt = fields.DateTime(allow_none=True)
    deliveredAt = fields.DateTime(allow_none=True)


class EnvelopeSentView(Shape):
    """Seed 003's answer to a send, in Meta's shape (api/legacy.py `_envelope_ok`)."""

    type = fields.String(validate=validate.OneOf(["1"]))
    message = fields.String()
    data = fields.Nested(
        shape(
            "EnvelopeData",
            {
                "messaging_product": fields.String(),
                "contacts": fields.List(
                    fields.Nested(
                        shape(
                            "EnvelopeContact", {"input": fields.String(), "wa_id": fields.String()}
                        )
                    )
                ),
                "messages": fields.List(
                    fields.Nested(
                        shape(
                            "EnvelopeMessage",
                            {"id": fields.String(), "message_status": fields.String()},
                        )
                    )
                ),
            },
        )
    )


class HealthView(Shape):
    """api/ops.py `healthz`."""

    ok = fields.Boolean()


class ReadinessView(Shape):
    """api/ops.py `readyz`: `down` and `error` only when not ready."""

    class Meta:
        optional = ("down", "error")

    ready = fields.Boolean()
    checks = fields.Nested(
        shape(
            "ReadinessChecks",
            {
                "database": fields.Boolean(),
                "redis": fields.Boolean(allow_none=True, metadata={"description": "null: none"}),
            },
        )
    )
    down = fields.List(fields.String())
    error = fields.Nested(ErrorBodyView)


class MetaReceivedView(Shape):
    """api/webhooks.py `meta_events`: how many items had each outcome."""

    received = fields.Dict(keys=fields.String(), values=fields.Integer())


# Response bodies by component name, as the docstrings name them. A schema is listed
# before those that nest it, so they refer to it by this name.
RESPONSE_SCHEMAS: dict[str, type[Schema]] = {
    "Error": ErrorView,
    "Message": MessageView,
    "MessagePage": MessagePageView,
    "MessageBatch": BatchAnswerView,
    "MessageStatusEvent": MessageStatusEventView,
    "MessageFailoverEvent": MessageFailoverEventView,
    "ContactView": ContactView,
    "Campaign": CampaignView,
    "CampaignResend": CampaignResendView,
    "CampaignPage": CampaignPage,
    "MediaView": MediaView,
    "Usage": UsageView,
    "SeedError": SeedErrorView,
    "SeedEnvelopeError": EnvelopeErrorView,
    "SeedSent": SeedSentView,
    "SeedMethod": SeedMethodView,
    "WhatsAppSent": WhatsAppSentView,
    "WhatsAppStatus": WhatsAppStatusView,
    "SeedEnvelopeSent": EnvelopeSentView,
    "Health": HealthView,
    "Readiness": ReadinessView,
    "MetaReceived": MetaReceivedView,
}

# Referenced from the docstrings by name, e.g. `401: Unauthorized`.
RESPONSES: dict[str, dict[str, Any]] = {
    "Invalid": _answer("Malformed JSON, invalid fields (`fields` says which), or a NUL in the URL"),
    "Unauthorized": _answer("No or bad credentials"),
    "Forbidden": _answer("Bad signature or verify token"),
    "LiveKeyOnly": _answer("A test key may not do this (`test_key_not_allowed`): use a live key"),
    "NotFound": _answer("Unknown id (or another tenant's)"),
    "Conflict": _answer("Conflicts with the current state"),
    "Refused": _answer("Refused by policy (opted out, window closed, no provider configured…)"),
    "TooLarge": _answer("Body too large"),
    "NotJson": _answer("A body declared as another type than JSON (`unsupported_media_type`)"),
    "RateLimited": _answer("The tenant's quota is reached (`rate_limited`)", headers=_retry_after),
    "Unavailable": _answer(
        "The database is unreachable (`unavailable`); nothing was done", headers=_retry_after
    ),
    "AdminOff": _answer("The admin API is off (HERALD_ADMIN_TOKEN unset), or an unknown id"),
    "SeedError": _answer("The seed's error shape: `{error}`", "SeedError"),
    "SeedUnavailable": _answer(
        "The database is unreachable, in the seed's shape", "SeedError", headers=_retry_after
    ),
    "Envelope": _answer(
        "The seed's error envelope: `{type: '3', message, data: null}`", "SeedEnvelopeError"
    ),
    "EnvelopeUnavailable": _answer(
        "The database is unreachable, in the seed's envelope",
        "SeedEnvelopeError",
        headers=_retry_after,
    ),
}

# Twilio's form, as both Twilio webhooks receive it.
FORM_SCHEMAS: dict[str, dict[str, Any]] = {
    "TwilioForm": {
        "type": "object",
        "properties": {
            name: {"type": "string"}
            for name in (
                "AccountSid",
                "MessageSid",
                "MessageStatus",
                "ErrorCode",
                "From",
                "To",
                "Body",
                "MessagingServiceSid",
                "NumMedia",
            )
        },
    }
}

# Request bodies: the marshmallow schemas the views validate with.
# The seeds' request bodies (api/legacy.py reads them by hand, as their clients send them).
_string = {"type": "string"}
SEED_REQUESTS: dict[str, dict[str, Any]] = {
    name: {"type": "object", "properties": properties}
    for name, properties in {
        "Seed000Request": {"to": _string, "message": _string},
        "Seed002Request": {"toPhoneNumber": _string, "messageBody": _string, "imageUrl": _string},
        "Seed003TextRequest": {"to": _string, "text": _string, "previewUrl": {"type": "boolean"}},
        "Seed003TemplateRequest": {
            "to": _string,
            "templateName": _string,
            "languageCode": _string,
            "parameters": {"type": "array", "items": _string},
            "components": {"type": "array", "items": {"type": "object"}},
        },
    }.items()
}
# Seed 003's two send routes, whose errors come in its envelope.
SEED_003_SENDS = ("legacy.meta_send_message", "legacy.meta_send_template")
# A seed route's POST: an API key or none (HERALD_LEGACY_TENANT), and an idempotency key.
_SEED_SECURITY = [{"bearer": []}, {}]
_IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}

REQUEST_SCHEMAS = {
    "MessageRequest": MessageRequestSchema,
    "ContactRequest": ContactSchema,
    "CampaignRequest": CampaignSchema,
    "TenantRequest": TenantSchema,
    "SenderRequest": SenderSchema,  # senders
    "SenderUpdate": SenderUpdateSchema,
}

# Where `answers` keeps a view's operation.
OPERATION = "openapi_operation"
View = TypeVar("View", bound=Callable[..., Any])


def answers(
    schema: type[Schema] | None,
    status: int = 200,
    *,
    many: bool = False,
    body: type[Schema] | dict[str, Any] | None = None,
    errors: dict[int, str] | None = None,
) -> Callable[[View], View]:
    """Document a view from its schemas rather than a YAML docstring: the summary is the
    docstring's first line; it answers `status` with `schema` (`{"data": [schema…]}`
    with `many`; no body when None), reads `body`, and may answer `errors` (names of
    RESPONSES by status) beyond those every view of its blueprint may (see
    `_app_wide_answers`)."""

    def document(view: View) -> View:
        summary = (view.__doc__ or "").strip().split("\n", 1)[0].rstrip(".")
        answer: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        if schema is not None:
            name = schema.__name__.removesuffix("View") + "List"
            answered = listing(schema, name) if many else schema
            answer["content"] = {"application/json": {"schema": answered}}
        operation: dict[str, Any] = {"summary": summary, "responses": {status: answer}}
        operation["responses"].update(errors or {})
        if body is not None:
            operation["requestBody"] = {"content": {"application/json": {"schema": body}}}
        setattr(view, OPERATION, operation)
        return view

    return document


def _media_urls(self: Any, field: fields.Field, **_: Any) -> dict[str, Any]:
    """`media_url` is one URL or a list of them (services/content/schemas.py MediaUrls)."""
    if not isinstance(field, MediaUrls):
        return {}
    url = {"type": "string", "format": "uri"}
    many = {"type": "array", "items": url, "minItems": 1, "maxItems": MAX_MEDIA}
    return {"oneOf": [url, many]}


def _null_only(self: Any, field: fields.Field, ret: dict[str, Any], **_: Any) -> dict[str, Any]:
    """A nullable nested schema is `anyOf: [$ref, {type: object, nullable: true}]` in
    apispec's OpenAPI 3.0; that second branch would take any object, so it is narrowed
    to null alone (`enum: [null]`, the 3.0 way) and only the $ref describes the object."""
    for branch in ret.get("anyOf", ()):
        if branch == {"type": "object", "nullable": True}:
            branch["enum"] = [None]
    return {}


def _path_parameters(rule_arguments: set[str], operation: dict[str, Any]) -> None:
    declared = {p.get("name") for p in operation.get("parameters", []) if isinstance(p, dict)}
    for name in sorted(rule_arguments - declared):
        operation.setdefault("parameters", []).append(
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        )


def blueprint_of(endpoint: str) -> str:
    return endpoint.split(".", 1)[0]


def _app_wide_answers(endpoint: str, operation: dict[str, Any]) -> None:
    """The statuses that hooks around every view can answer (see the module docstring)."""
    responses = operation.setdefault("responses", {})
    if endpoint in SEED_003_SENDS:  # Seed 003 answers its errors in Meta's envelope
        for status in ("400", "401"):
            responses.setdefault(status, "Envelope")
        responses.setdefault("503", "EnvelopeUnavailable")
    responses.setdefault("400", "Invalid")
    if "requestBody" in operation:
        responses.setdefault("413", "TooLarge")
        content = operation["requestBody"].get("content") or {}
        if "application/json" in content and blueprint_of(endpoint) not in ("legacy", "webhooks"):
            responses.setdefault("415", "NotJson")  # api/auth.py json_body
    if endpoint not in WITHOUT_DATABASE:
        responses.setdefault("503", "Unavailable")
    blueprint = endpoint.split(".", 1)[0]
    operation.setdefault("tags", [TAGS.get(blueprint, blueprint)])
    if blueprint == "legacy" and "requestBody" in operation:
        operation.setdefault("security", _SEED_SECURITY)
        operation.setdefault("parameters", []).append(_IDEMPOTENCY_KEY)

    if blueprint == "admin":
        operation.setdefault("security", [{"adminToken": []}])
        responses.setdefault("401", "Unauthorized")
        responses.setdefault("404", "AdminOff")


def build(app: Flask) -> dict[str, Any]:
    """The whole document for `app`'s routes."""
    marshmallow = MarshmallowPlugin()
    spec = APISpec(
        title="Herald",
        version=VERSION,
        # 3.0: the Swagger UI vendored for /docs (swagger-ui-bundle) renders 3.0 documents.
        openapi_version="3.0.3",
        plugins=[FlaskPlugin(), marshmallow],
        info={"description": "Asynchronous WhatsApp and SMS dispatch through Twilio and Meta."},
        security=[{"bearer": []}],
    )
    marshmallow.converter.add_attribute_function(_media_urls)
    marshmallow.converter.add_attribute_function(_null_only)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("adminToken", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("metricsToken", {"type": "http", "scheme": "bearer"})
    for name, form in {**FORM_SCHEMAS, **SEED_REQUESTS}.items():
        spec.components.schema(name, form)
    for name, schema in {**RESPONSE_SCHEMAS, **REQUEST_SCHEMAS}.items():
        spec.components.schema(name, schema=schema)
    for name, response in RESPONSES.items():
        spec.components.response(name, response)

    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint.startswith(UNDOCUMENTED):
            continue
        view = app.view_functions[rule.endpoint]
        spec.path(view=view, app=app, operations=_declared(view, rule.methods or set()))
    document = spec.to_dict()
    _complete(app, document)
    return document


def _declared(view: Callable[..., Any], methods: set[str]) -> dict[str, Any]:
    """The operations `answers` made for the view, one per method of its rule (a
    docstring's YAML, read after, would replace them)."""
    operation = getattr(view, OPERATION, None)
    if operation is None:
        return {}
    return {m.lower(): copy.deepcopy(operation) for m in methods - {"HEAD", "OPTIONS"}}


def _complete(app: Flask, document: dict[str, Any]) -> None:
    """Add what the app's hooks answer and each path's parameters, then resolve the
    response names added here the way apispec resolves those of the docstrings."""
    by_path = {}
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith(UNDOCUMENTED):
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            by_path[path] = rule
    for path, item in document["paths"].items():
        rule = by_path[path]
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            _path_parameters(set(rule.arguments), operation)
            _app_wide_answers(rule.endpoint, operation)
            for code, response in operation["responses"].items():
                if isinstance(response, str):
                    operation["responses"][code] = {"$ref": f"#/components/responses/{response}"}


_built: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}


def init_app(app: Flask) -> None:
    """Build the document when the app is made (a bad docstring fails at start, not on a
    request); /openapi.json serves this copy. Apps with the same routes share one."""
    routes = tuple(sorted((rule.rule, rule.endpoint) for rule in app.url_map.iter_rules()))
    if routes not in _built:
        _built[routes] = build(app)
    app.extensions["herald.openapi"] = _built[routes]
