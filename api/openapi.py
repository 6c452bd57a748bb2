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
    "400": _resp("Malformed JSON or invalid fields", _error),
    "401": _resp("No or bad credentials", _error),
    "404": _resp("Unknown id (or another tenant's)", _error),
    "413": _resp("Body too large", _error),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Herald",
        "version": "0.1.0",
        "description": "Asynchronous WhatsApp and SMS dispatch through Twilio and Meta.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
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
                    "body": {"type": "string", "maxLength": 4096},
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
        "/webhooks/twilio/status": {
            "post": {
                "security": [],
                "summary": "Twilio status callback",
                "responses": {"204": _resp("Recorded"), "403": _resp("Bad signature", _error)},
            }
        },
        "/webhooks/twilio/inbound": {
            "post": {
                "security": [],
                "summary": "Twilio inbound message",
                "responses": {
                    "200": _resp("TwiML <Response/>"),
                    "403": _resp("Bad signature", _error),
                },
            }
        },
        "/webhooks/meta": {
            "get": {
                "security": [],
                "summary": "Meta subscription check",
                "responses": {
                    "200": _resp("hub.challenge echoed"),
                    "403": _resp("Wrong verify token", _error),
                },
            },
            "post": {
                "security": [],
                "summary": "Meta statuses and messages",
                "responses": {"200": _resp("Recorded"), "403": _resp("Bad signature", _error)},
            },
        },
        "/healthz": {"get": {"security": [], "responses": {"200": _resp("Alive")}}},
        "/readyz": {
            "get": {"security": [], "responses": {"200": _resp("Ready"), "503": _resp("Not ready")}}
        },
        "/metrics": {"get": {"security": [], "responses": {"200": _resp("Prometheus metrics")}}},
    },
}
