"""The OpenAPI document at /openapi.json, generated from the code at app start.

Request bodies come from the marshmallow schemas the views load with (services/), so a
rule added there is in the document; each view's operation (summary, parameters, the
statuses it answers) is the YAML section of its docstring, read by apispec's FlaskPlugin.
What app-wide hooks answer is added here, once, rather than repeated in every docstring:
a 400 for a NUL in the URL (api/inputs.py), a 413 for a body over the size limit, a 503
(`unavailable`) where the view uses the database (api/errors.py), and the admin prefix's
401/404 (api/admin.py). Only response bodies are described by hand (they are built by
dict serializers, not schemas).
"""

from __future__ import annotations

import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec_webframeworks.flask import FlaskPlugin
from flask import Flask
from marshmallow import fields

from core.errors import RETRY_AFTER_SECONDS
from services.campaigns.campaigns import CampaignSchema
from services.content.schemas import MAX_MEDIA, MediaUrls, MessageRequestSchema
from services.policy.contacts import ContactSchema
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

_error = {"$ref": "#/components/schemas/Error"}
_retry_after = {
    "Retry-After": {
        "description": f"Seconds to wait before retrying (Herald answers {RETRY_AFTER_SECONDS})",
        "schema": {"type": "integer"},
    }
}


def _answer(description: str, schema: dict[str, Any] | None = _error, **extra: Any) -> dict:
    body: dict[str, Any] = {"description": description, **extra}
    if schema is not None:
        body["content"] = {"application/json": {"schema": schema}}
    return body


_seed = {"type": "object", "properties": {"error": {"type": "string"}}}
_envelope = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["3"]},
        "message": {"type": "string"},
        "data": {"nullable": True},
    },
}

# Referenced from the docstrings by name, e.g. `401: Unauthorized`.
RESPONSES: dict[str, dict[str, Any]] = {
    "Invalid": _answer("Malformed JSON, invalid fields (`fields` says which), or a NUL in the URL"),
    "Unauthorized": _answer("No or bad credentials"),
    "Forbidden": _answer("Bad signature or verify token"),
    "NotFound": _answer("Unknown id (or another tenant's)"),
    "Conflict": _answer("Conflicts with the current state"),
    "Refused": _answer("Refused by policy (opted out, window closed, no provider configured…)"),
    "TooLarge": _answer("Body too large"),
    "RateLimited": _answer("The tenant's quota is reached (`rate_limited`)", headers=_retry_after),
    "Unavailable": _answer(
        "The database is unreachable (`unavailable`); nothing was done", headers=_retry_after
    ),
    "AdminOff": _answer("The admin API is off (HERALD_ADMIN_TOKEN unset), or an unknown id"),
    "SeedError": _answer("The seed's error shape: `{error}`", _seed),
    "SeedUnavailable": _answer(
        "The database is unreachable, in the seed's shape", _seed, headers=_retry_after
    ),
    "Envelope": _answer("The seed's error envelope: `{type: '3', message, data: null}`", _envelope),
    "EnvelopeUnavailable": _answer(
        "The database is unreachable, in the seed's envelope", _envelope, headers=_retry_after
    ),
}

# Response bodies (the views build them with dict serializers).
RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "fields": {"type": "object", "description": "per field, what is wrong"},
                },
            }
        },
    },
    "Message": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string"},
            "channel": {"type": "string"},
            "provider": {"type": "string"},
            "to": {"type": "string"},
            "from": {"type": "string", "nullable": True},
            "sender_id": {"type": "string", "nullable": True},  # senders
            "provider_message_id": {"type": "string", "nullable": True},
            "error": {"type": "object", "nullable": True},
            "attempts": {"type": "integer"},
            "campaign_id": {"type": "string", "nullable": True},
            "metadata": {"type": "object"},
            "created_at": {"type": "string"},
            "updated_at": {"type": "string"},
            "events": {"type": "array", "items": {"type": "object"}},
            "media": {
                "type": "array",
                "nullable": True,
                "description": "inbound media: Herald's URL and the content type of each",
                "items": {
                    "type": "object",
                    "properties": {
                        "url": {"type": "string"},
                        "content_type": {"type": "string", "nullable": True},
                    },
                },
            },
        },
    },
    "MediaView": {
        "type": "object",
        "properties": {
            name: {"type": "string", "nullable": name == "filename"}
            for name in (
                "id",
                "provider",
                "provider_media_id",
                "type",
                "mime_type",
                "filename",
                "sha256",
                "created_at",
                "expires_at",
            )
        }
        | {"size": {"type": "integer"}},
    },
    "MessagePage": {
        "type": "object",
        "properties": {
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}},
            "next_cursor": {"type": "string", "nullable": True},
        },
    },
    "ContactView": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "phone": {"type": "string"},
            "name": {"type": "string", "nullable": True},
            "opted_out": {"type": "boolean"},
            "window_open": {"type": "boolean"},
            "last_inbound_at": {"type": "string", "nullable": True},
        },
    },
    "Campaign": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string"},
            "total": {"type": "integer"},
            "counts": {"type": "object"},
            "progress": {"type": "number"},
            "invalid": {"type": "integer"},
            "invalid_rows": {"type": "array", "items": {"type": "object"}},
            "duplicates": {"type": "integer"},
        },
    },
    "Usage": {
        "type": "object",
        "properties": {
            "from": {"type": "string"},
            "to": {"type": "string"},
            "group_by": {"type": "array", "items": {"type": "string"}},
            "data": {
                "type": "array",
                "items": {"type": "object", "description": "the group's keys, counts and cost"},
            },
            "totals": {"type": "object"},
            "estimated": {"type": "boolean"},
        },
    },
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
REQUEST_SCHEMAS = {
    "MessageRequest": MessageRequestSchema,
    "ContactRequest": ContactSchema,
    "CampaignRequest": CampaignSchema,
    "TenantRequest": TenantSchema,
    "SenderRequest": SenderSchema,  # senders
    "SenderUpdate": SenderUpdateSchema,
}


def _media_urls(self: Any, field: fields.Field, **_: Any) -> dict[str, Any]:
    """`media_url` is one URL or a list of them (services/content/schemas.py MediaUrls)."""
    if not isinstance(field, MediaUrls):
        return {}
    url = {"type": "string", "format": "uri"}
    many = {"type": "array", "items": url, "minItems": 1, "maxItems": MAX_MEDIA}
    return {"oneOf": [url, many]}


def _path_parameters(rule_arguments: set[str], operation: dict[str, Any]) -> None:
    declared = {p.get("name") for p in operation.get("parameters", []) if isinstance(p, dict)}
    for name in sorted(rule_arguments - declared):
        operation.setdefault("parameters", []).append(
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        )


def _app_wide_answers(endpoint: str, operation: dict[str, Any]) -> None:
    """The statuses that hooks around every view can answer (see the module docstring)."""
    responses = operation.setdefault("responses", {})
    responses.setdefault("400", "Invalid")
    if "requestBody" in operation:
        responses.setdefault("413", "TooLarge")
    if endpoint not in WITHOUT_DATABASE:
        responses.setdefault("503", "Unavailable")
    blueprint = endpoint.split(".", 1)[0]
    operation.setdefault("tags", [TAGS.get(blueprint, blueprint)])
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
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("adminToken", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("metricsToken", {"type": "http", "scheme": "bearer"})
    for name, schema in {**RESPONSE_SCHEMAS, **FORM_SCHEMAS}.items():
        spec.components.schema(name, schema)
    for name, schema in REQUEST_SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    for name, response in RESPONSES.items():
        spec.components.response(name, response)

    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint.startswith(UNDOCUMENTED):
            continue
        view = app.view_functions[rule.endpoint]
        spec.path(view=view, app=app)
    document = spec.to_dict()
    _complete(app, document)
    return document


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
