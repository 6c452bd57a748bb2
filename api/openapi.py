"""The OpenAPI 3.1 document served at /openapi.json (kept in step with the README)."""

from __future__ import annotations

from typing import Any

_error = {"$ref": "#/components/schemas/Error"}


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"description": description}
    if schema:
        body["content"] = {"application/json": {"schema": schema}}
    return body


_errors = {
    "400": _resp("Malformed JSON, invalid fields, or a NUL in the URL", _error),
    "401": _resp("No or bad credentials", _error),
    "404": _resp("Unknown id (or another tenant's)", _error),
    "413": _resp("Body too large", _error),
}
_rate_limited = _resp("Tenant quota reached (`Retry-After`)", _error)


def _json_body(properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties}
    return {"content": {"application/json": {"schema": schema}}}


def _form_body(properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties}
    return {"content": {"application/x-www-form-urlencoded": {"schema": schema}}}


def _header(name: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "schema": {"type": "string"}}


_string = {"type": "string"}
# The seeds' clients send no key when HERALD_LEGACY_TENANT is set; a key is also accepted.
_seed_security: list[dict[str, list[str]]] = [{"bearer": []}, {}]
_seed_error = _resp("{error}")
_envelope_error = _resp("{type: '3', message, data: null}")
_twilio_form = {
    name: _string
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
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Herald",
        "version": "0.1.0",
        "description": "Asynchronous WhatsApp and SMS dispatch through Twilio and Meta.",
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "metricsToken": {"type": "http", "scheme": "bearer"},
        },
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "fields": {"type": "object"},
                        },
                    }
                },
            },
            "MessageRequest": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "to": {"type": "string", "description": "E.164, exclusive with contact_id"},
                    "contact_id": {"type": "string"},
                    "channel": {"enum": ["whatsapp", "sms"], "default": "whatsapp"},
                    "provider": {"enum": ["twilio", "meta"]},
                    "body": {
                        "type": "string",
                        "maxLength": 4096,
                        "description": "Meta: 4,096 as text, 1,024 as a caption; "
                        "Twilio: 1,600 (an emoji counts 2)",
                    },
                    "media_url": {
                        "oneOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}, "maxItems": 10},
                        ]
                    },
                    "media_type": {"enum": ["image", "document", "audio", "video"]},
                    "preview_url": {"type": "boolean"},
                    "template": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "language": {"type": "string"},
                            "variables": {"type": "array", "items": {"type": "string"}},
                            "components": {"type": "array", "items": {"type": "object"}},
                            "content_sid": {"type": "string"},
                            "content_variables": {"type": "object"},
                        },
                    },
                    "interactive": {"type": "object"},
                    "send_at": {"type": "string", "format": "date-time"},
                    "callback_url": {"type": "string", "format": "uri"},
                    "metadata": {"type": "object"},
                },
            },
            "Contact": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "description": "your id for the contact"},
                    "phone": {"type": "string"},
                    "name": {"type": ["string", "null"]},
                    "opted_out": {"type": "boolean"},
                    "window_open": {"type": "boolean", "readOnly": True},
                    "last_inbound_at": {"type": ["string", "null"], "readOnly": True},
                },
            },
            "CampaignRequest": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "channel": {"enum": ["whatsapp", "sms"]},
                    "provider": {"enum": ["twilio", "meta"]},
                    "body": {"type": "string"},
                    "media_url": {"type": "string"},
                    "template": {"type": "object"},
                    "recipients": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "to": {"type": "string"},
                                "contact_id": {"type": "string"},
                                "variables": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    },
                    "send_at": {"type": "string", "format": "date-time"},
                    "rate": {"type": "number", "minimum": 0.1, "maximum": 1000, "default": 10},
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
            "Message": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string"},
                    "channel": {"type": "string"},
                    "provider": {"type": "string"},
                    "to": {"type": "string"},
                    "provider_message_id": {"type": ["string", "null"]},
                    "error": {"type": ["object", "null"]},
                    "attempts": {"type": "integer"},
                    "campaign_id": {"type": ["string", "null"]},
                    "metadata": {"type": "object"},
                    "created_at": {"type": "string"},
                    "updated_at": {"type": "string"},
                    "events": {"type": "array", "items": {"type": "object"}},
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/messages": {
            "post": {
                "summary": "Validate, persist and enqueue one message",
                "parameters": [
                    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/MessageRequest"}
                        }
                    },
                },
                "responses": {
                    "202": _resp("Accepted", {"$ref": "#/components/schemas/Message"}),
                    "200": _resp("Idempotent replay", {"$ref": "#/components/schemas/Message"}),
                    "409": _resp("Idempotency key reused with another body", _error),
                    "422": _resp("Policy refusal", _error),
                    "429": _rate_limited,
                    **_errors,
                },
            },
            "get": {
                "summary": "A page of messages, newest first",
                "parameters": [
                    {"name": n, "in": "query", "schema": {"type": "string"}}
                    for n in ("status", "to", "campaign_id", "limit", "cursor")
                ],
                "responses": {"200": _resp("A page"), **_errors},
            },
        },
        "/v1/messages/{id}": {
            "get": {
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _resp("The message", {"$ref": "#/components/schemas/Message"}),
                    **_errors,
                },
            }
        },
        "/v1/messages/{id}/cancel": {
            "post": {
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _resp("Canceled"),
                    "409": _resp("Too late", _error),
                    **_errors,
                },
            }
        },
        "/v1/contacts": {
            "post": {
                "summary": "Create a contact (or complete the one an inbound message created)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Contact"}}
                    },
                },
                "responses": {
                    "201": _resp("Created", {"$ref": "#/components/schemas/Contact"}),
                    "200": _resp("Completed an existing contact"),
                    "409": _resp("Id or phone taken", _error),
                    **_errors,
                },
            }
        },
        "/v1/contacts/{id}": {
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": {
                "responses": {
                    "200": _resp("The contact", {"$ref": "#/components/schemas/Contact"}),
                    **_errors,
                }
            },
            "patch": {
                "summary": "Change name, phone or opted_out",
                "requestBody": {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Contact"}}
                    }
                },
                "responses": {
                    "200": _resp("Updated"),
                    "409": _resp("Id or phone taken", _error),
                    **_errors,
                },
            },
        },
        "/v1/campaigns": {
            "post": {
                "summary": "Create a campaign from JSON recipients or a CSV upload (multipart: "
                "`campaign` = the JSON fields, `file` = the CSV)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/CampaignRequest"}
                        },
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "campaign": {"type": "string"},
                                    "file": {"type": "string", "format": "binary"},
                                },
                            }
                        },
                    },
                },
                "responses": {
                    "201": _resp("Created", {"$ref": "#/components/schemas/Campaign"}),
                    "422": _resp("window_closed, provider_not_configured", _error),
                    **_errors,
                },
            }
        },
        "/v1/campaigns/{id}": {
            "get": {
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _resp("Progress", {"$ref": "#/components/schemas/Campaign"}),
                    **_errors,
                },
            }
        },
        "/v1/campaigns/{id}/{action}": {
            "post": {
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["pause", "resume", "cancel"]},
                    },
                ],
                "responses": {
                    "200": _resp("Done", {"$ref": "#/components/schemas/Campaign"}),
                    "409": _resp("Not in a state that allows it", _error),
                    **_errors,
                },
            }
        },
        "/api/twilio/message": {
            "post": {
                "security": _seed_security,
                "summary": "Seed 000: {to, message}; to = contact id or number",
                "parameters": [_header("Idempotency-Key")],
                "requestBody": _json_body({"to": _string, "message": _string}),
                "responses": {
                    "200": _resp("{message: 'Message sent', id}"),
                    "400": _seed_error,
                    "401": _seed_error,
                    "405": _resp("{message: 'Wrong request method'}"),
                    "409": _seed_error,
                    "413": _resp("Body too large", _error),
                    "422": _seed_error,
                    "429": _seed_error,
                },
            }
        },
        "/api/whatsapp/send": {
            "post": {
                "security": _seed_security,
                "summary": "Seed 002: {toPhoneNumber, messageBody, imageUrl?}",
                "parameters": [_header("Idempotency-Key")],
                "requestBody": _json_body(
                    {"toPhoneNumber": _string, "messageBody": _string, "imageUrl": _string}
                ),
                "responses": {
                    "200": _resp("{success: true, messageId, cost}"),
                    "400": _seed_error,
                    "401": _seed_error,
                    "413": _resp("Body too large", _error),
                    "429": _seed_error,
                },
            }
        },
        "/api/whatsapp/status/{messageId}": {
            "get": {
                "security": _seed_security,
                "parameters": [
                    {
                        "name": "messageId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _resp("Status, SID and cost"),
                    "400": _seed_error,
                    "401": _seed_error,
                    "404": _seed_error,
                },
            }
        },
        "/api/v1/whatsapp/send-message": {
            "post": {
                "security": _seed_security,
                "summary": "Seed 003: {to, text, previewUrl?}",
                "parameters": [_header("Idempotency-Key")],
                "requestBody": _json_body(
                    {"to": _string, "text": _string, "previewUrl": {"type": "boolean"}}
                ),
                "responses": {
                    "200": _resp("{type: '1', message, data}"),
                    "400": _envelope_error,
                    "401": _envelope_error,
                    "413": _resp("Body too large", _error),
                },
            }
        },
        "/api/v1/whatsapp/send-template": {
            "post": {
                "security": _seed_security,
                "summary": "Seed 003 templates: {to, templateName, languageCode?, parameters?, "
                "components?}",
                "parameters": [_header("Idempotency-Key")],
                "requestBody": _json_body(
                    {
                        "to": _string,
                        "templateName": _string,
                        "languageCode": _string,
                        "parameters": {"type": "array", "items": _string},
                        "components": {"type": "array", "items": {"type": "object"}},
                    }
                ),
                "responses": {
                    "200": _resp("{type: '1', message, data}"),
                    "400": _envelope_error,
                    "401": _envelope_error,
                    "413": _resp("Body too large", _error),
                },
            }
        },
        "/webhooks/twilio/status": {
            "post": {
                "security": [],
                "summary": "Twilio status callback",
                "parameters": [
                    _header("X-Twilio-Signature"),
                    {"name": "message_id", "in": "query", "schema": _string},
                ],
                "requestBody": _form_body(_twilio_form),
                "responses": {
                    "204": _resp("Recorded"),
                    "400": _resp("A NUL in the URL, or signed but not a Twilio callback", _error),
                    "403": _resp("Bad signature", _error),
                    "413": _resp("Body too large", _error),
                },
            }
        },
        "/webhooks/twilio/inbound": {
            "post": {
                "security": [],
                "summary": "Twilio inbound message",
                "parameters": [_header("X-Twilio-Signature")],
                "requestBody": _form_body(_twilio_form),
                "responses": {
                    "200": _resp("TwiML <Response/> (also when kept unrouted)"),
                    "400": _resp("A NUL in the URL, or signed but not a Twilio message", _error),
                    "403": _resp("Bad signature", _error),
                    "413": _resp("Body too large", _error),
                },
            }
        },
        "/webhooks/meta": {
            "get": {
                "security": [],
                "summary": "Meta subscription check",
                "parameters": [
                    {"name": "hub.mode", "in": "query", "schema": {"enum": ["subscribe"]}},
                    {"name": "hub.verify_token", "in": "query", "schema": _string},
                    {"name": "hub.challenge", "in": "query", "schema": _string},
                ],
                "responses": {
                    "200": _resp("hub.challenge echoed"),
                    "400": _resp("A NUL in the URL", _error),
                    "403": _resp("Wrong verify token", _error),
                },
            },
            "post": {
                "security": [],
                "summary": "Meta statuses and messages",
                "parameters": [_header("X-Hub-Signature-256")],
                "requestBody": _json_body(
                    {"object": _string, "entry": {"type": "array", "items": {"type": "object"}}}
                ),
                "responses": {
                    "200": _resp("Recorded: counts per outcome"),
                    "400": _resp("Signed, but not a JSON object", _error),
                    "403": _resp("Bad signature", _error),
                    "413": _resp("Body too large", _error),
                },
            },
        },
        "/healthz": {"get": {"security": [], "responses": {"200": _resp("Alive")}}},
        "/readyz": {
            "get": {"security": [], "responses": {"200": _resp("Ready"), "503": _resp("Not ready")}}
        },
        "/metrics": {
            "get": {
                "security": [{"metricsToken": []}, {}],
                "description": "With HERALD_METRICS_TOKEN set, `Authorization: Bearer <it>`.",
                "responses": {
                    "200": _resp("Prometheus metrics"),
                    "401": _resp("HERALD_METRICS_TOKEN is set and was not sent", _error),
                },
            }
        },
    },
}

from api.admin_openapi import ADMIN_PATHS  # noqa: E402  (the admin API, documented beside it)

OPENAPI["paths"].update(ADMIN_PATHS)
