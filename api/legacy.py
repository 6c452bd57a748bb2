"""The seeds' endpoints, kept working for their existing clients.

Each route only translates its seed's request into a `/v1/messages` request and
Herald's answer into the seed's response shape; validation, policy and delivery
are the same path as `POST /v1/messages`. The seeds' clients carry no Herald key:
with HERALD_LEGACY_TENANT set, a request without `Authorization` belongs to that
tenant; otherwise these routes authenticate like `/v1`. Such an unauthenticated
caller is not the tenant: it reads only the messages unauthenticated seed calls
created (origin 'legacy') and has an Idempotency-Key space of its own.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import exc as sa_exc

from api.auth import db
from core.config import get_settings
from core.errors import (
    RETRY_AFTER_SECONDS,
    HeraldError,
    InvalidRequest,
    NotFound,
    Unauthorized,
    database_unavailable,
)
from models import Message, Tenant
from services.content.schemas import load_message_request
from services.messages.service import accept_message, get_message
from services.tenancy.tenants import authenticate_caller

log = logging.getLogger(__name__)
bp = Blueprint("legacy", __name__)


def _caller() -> tuple[Tenant, str]:
    """The tenant, and the origin of what this caller creates and may read:
    'legacy' for an unauthenticated call under HERALD_LEGACY_TENANT, else 'api'. A test
    key's call is in test mode (`g.test`), as on /v1."""
    header = request.headers.get("Authorization")
    legacy = get_settings().legacy_tenant
    if not header and legacy:
        tenant = db().get(Tenant, legacy)
        if tenant is not None:
            return tenant, "legacy"
    tenant, g.test = authenticate_caller(db(), header)
    return tenant, "api"


def _accept(fields: dict[str, Any]) -> Message:
    """The /v1/messages path, from a request built out of a seed's body."""
    session = db()
    tenant, origin = _caller()
    message, _ = accept_message(
        session,
        tenant,
        load_message_request(fields),
        idempotency_key=request.headers.get("Idempotency-Key") or None,
        raw=fields,
        origin=origin,
        test=bool(g.get("test", False)),
    )
    session.commit()
    g.tenant = tenant
    return message


def _body() -> dict[str, Any]:
    """The seed's JSON object ({} when there is none); unreadable JSON is a 400."""
    raw = request.get_data()
    if not raw:
        return {}
    try:
        payload = current_app.json.loads(raw)
    except ValueError as exc:  # api/inputs.py: too deep, NUL, lone surrogate, NaN…
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}.", code="malformed_json"
        ) from None
    return payload if isinstance(payload, dict) else {}


@bp.errorhandler(HeraldError)
def _seed_error(exc: HeraldError):  # type: ignore[no-untyped-def]
    """An error outside a route's own handling (an unreadable body, a NUL in the URL),
    answered in that route's seed shape rather than Herald's."""
    if request.endpoint in ("legacy.meta_send_message", "legacy.meta_send_template"):
        return _envelope_error(exc)
    return jsonify({"error": _first_error(exc)}), exc.status, exc.headers


def _phone(value: Any) -> Any:
    """The seeds accept numbers with or without the leading `+` (`^\\+?[1-9]\\d{1,14}$`)."""
    if isinstance(value, str) and value.isdigit():
        return "+" + value
    return value


def _first_error(exc: HeraldError) -> str:
    if exc.fields:
        field, messages = next(iter(exc.fields.items()))
        text = messages[0] if isinstance(messages, list) and messages else messages
        return f"{field}: {text}"
    return exc.message


def cost_of(message: Message) -> float:
    """What the provider reported, else the configured price for the channel; 0 for a
    test message, which is never priced (docs/api.md "Test keys")."""
    if message.test:
        return 0.0
    settings = get_settings()
    fallback = settings.price_whatsapp if message.channel == "whatsapp" else settings.price_sms
    return float(message.price if message.price is not None else Decimal(fallback))


# ---------------------------------------------------------------- seed 000 (Next.js, Twilio)


@bp.route("/api/twilio/message", methods=["GET", "PUT", "PATCH", "DELETE", "POST"])
def twilio_message():  # type: ignore[no-untyped-def]
    """Seed 000's send route: `{to, message}`, `to` a contact id or a number.
    ---
    post:
      summary: "Seed 000: {to, message}; to = contact id or number"
      requestBody: {content: {application/json: {schema: Seed000Request}}}
      responses:
        200: {description: Sent, content: {application/json: {schema: SeedSent}}}
        400: SeedError
        401: SeedError
        404: SeedError
        405: {description: Not POST, content: {application/json: {schema: SeedMethod}}}
        409: SeedError
        413: TooLarge
        422: SeedError
        429: SeedError
        503: SeedUnavailable
    """
    if request.method != "POST":
        return jsonify({"message": "Wrong request method"}), 405
    body = _body()
    to = body.get("to")
    fields: dict[str, Any] = {"channel": "whatsapp", "provider": "twilio"}
    if isinstance(to, str) and (to.startswith("+") or to.isdigit()):
        fields["to"] = _phone(to)
    else:
        fields["contact_id"] = to  # seed 000 addresses users by their database id
    if body.get("message") is not None:
        fields["body"] = body["message"]
    try:
        message = _accept(fields)
    except HeraldError as exc:
        status = exc.status if exc.status < 500 else 500
        return jsonify({"error": _first_error(exc)}), status, exc.headers
    except Exception as exc:
        if database_unavailable(exc):
            raise  # a 503 in this seed's shape (below), not its generic 500
        return jsonify({"error": "Failed to send WhatsApp message."}), 500
    return jsonify({"message": "Message sent", "id": message.id}), 200


# ---------------------------------------------------------------- seed 002 (.NET, Twilio WhatsApp)


@bp.post("/api/whatsapp/send")
def whatsapp_send():  # type: ignore[no-untyped-def]
    """Seed 002's send route.
    ---
    post:
      summary: "Seed 002: {toPhoneNumber, messageBody, imageUrl?}"
      requestBody: {content: {application/json: {schema: Seed002Request}}}
      responses:
        200: {description: Sent, content: {application/json: {schema: WhatsAppSent}}}
        400: SeedError
        401: SeedError
        413: TooLarge
        429: SeedError
        503: SeedUnavailable
    """
    body = _body()
    fields: dict[str, Any] = {"channel": "whatsapp", "provider": "twilio"}
    if body.get("toPhoneNumber") is not None:
        fields["to"] = _phone(body["toPhoneNumber"])
    if body.get("messageBody") is not None:
        fields["body"] = body["messageBody"]
    if body.get("imageUrl"):
        fields["media_url"] = body["imageUrl"]
    try:
        message = _accept(fields)
    except Unauthorized as exc:
        return jsonify({"error": exc.message}), 401
    except HeraldError as exc:
        status = 429 if exc.status == 429 else 400
        return jsonify({"error": _first_error(exc)}), status, exc.headers
    return jsonify({"success": True, "messageId": message.id, "cost": cost_of(message)})


@bp.get("/api/whatsapp/status/<message_id>")
def whatsapp_status(message_id: str):  # type: ignore[no-untyped-def]
    """By Herald's id, or by the Twilio SID the seed's clients may have stored.
    ---
    get:
      summary: "Seed 002: a message's status, SID and cost"
      security: [{bearer: []}, {}]
      responses:
        200:
          description: Status, SID and cost
          content: {application/json: {schema: WhatsAppStatus}}
        400: SeedError
        401: SeedError
        404: SeedError
        503: SeedUnavailable
    """
    try:
        tenant, origin = _caller()
        readable = origin if origin == "legacy" else None  # the tenant itself reads all
        test = bool(g.get("test", False))  # a test key reads test messages only, as on /v1
        session = db()
        try:
            message = get_message(session, tenant.id, message_id, origin=readable, test=test)
        except NotFound:
            query = session.query(Message).filter_by(
                tenant_id=tenant.id, provider_message_id=message_id, test=test
            )
            if readable:
                query = query.filter_by(origin=readable)
            message = query.first()
            if message is None:
                raise
    except Unauthorized as exc:
        return jsonify({"error": exc.message}), 401
    except NotFound as exc:
        return jsonify({"error": exc.message}), 404
    return jsonify(
        {
            "success": True,
            "messageId": message.id,
            "status": message.status,
            "twilioMessageSid": message.provider_message_id,
            "toPhoneNumber": message.to_number,
            "cost": cost_of(message),
            "errorMessage": message.error_message,
            "attemptCount": message.attempts,
            "createdAt": _iso(message.created_at),
            "sentAt": _iso(message.sent_at),
            "deliveredAt": _iso(message.delivered_at),
        }
    )


def _iso(value: Any) -> str | None:
    from core.ids import iso

    return iso(value)


# ---------------------------------------------------------------- seed 003 (Node, Meta Cloud API)


def _envelope_error(exc: HeraldError):  # type: ignore[no-untyped-def]
    status = 401 if exc.status == 401 else 400 if exc.status < 500 else 500
    return jsonify({"type": "3", "message": _first_error(exc), "data": None}), status


def _envelope_ok(message: Message, to: str):  # type: ignore[no-untyped-def]
    # Meta's own answer shape; the id is Herald's (the wamid comes later, asynchronously).
    return jsonify(
        {
            "type": "1",
            "message": "Message sent successfully",
            "data": {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": message.to_number.lstrip("+")}],
                "messages": [{"id": message.id, "message_status": message.status}],
            },
        }
    )


@bp.post("/api/v1/whatsapp/send-message")
def meta_send_message():  # type: ignore[no-untyped-def]
    """Seed 003's text route, answered in Meta's envelope.
    ---
    post:
      summary: "Seed 003: {to, text, previewUrl?}"
      requestBody: {content: {application/json: {schema: Seed003TextRequest}}}
      responses:
        200: {description: Sent, content: {application/json: {schema: SeedEnvelopeSent}}}
    """
    body = _body()
    if missing := _envelope_missing(body, "to", "text"):
        return missing
    fields: dict[str, Any] = {"body": body["text"]}
    if "previewUrl" in body:
        fields["preview_url"] = body["previewUrl"]
    return _envelope_send(body["to"], fields, number_error=True)


@bp.post("/api/v1/whatsapp/send-template")
def meta_send_template():  # type: ignore[no-untyped-def]
    """`{"to", "templateName", "languageCode"?, "parameters"?: [...], "components"?: [...]}`.
    ---
    post:
      summary: "Seed 003 templates: {to, templateName, languageCode?, parameters?, components?}"
      requestBody: {content: {application/json: {schema: Seed003TemplateRequest}}}
      responses:
        200: {description: Sent, content: {application/json: {schema: SeedEnvelopeSent}}}
    """
    body = _body()
    if missing := _envelope_missing(body, "to", "templateName"):
        return missing
    template: dict[str, Any] = {
        "name": body["templateName"],
        "language": body.get("languageCode") or "en_US",
    }
    if body.get("parameters") is not None:
        template["variables"] = body["parameters"]
    if body.get("components") is not None:
        template["components"] = body["components"]
    return _envelope_send(body["to"], {"template": template})


def _envelope_missing(body: dict[str, Any], *names: str):  # type: ignore[no-untyped-def]
    """Seed 003's 400 when a required field is empty or absent, else None."""
    if all(body.get(name) for name in names):
        return None
    text = f"Missing required fields: {', '.join(names)}"
    return jsonify({"type": "3", "message": text, "data": None}), 400


def _envelope_send(to: Any, fields: dict[str, Any], *, number_error: bool = False):  # type: ignore[no-untyped-def]
    """Accept a Seed 003 send to `to` through Meta, answered in its envelope; with
    `number_error`, a refused number is the seed's own E.164 message."""
    try:
        message = _accept({"channel": "whatsapp", "provider": "meta", "to": to, **fields})
    except HeraldError as exc:
        if number_error and exc.fields and "to" in exc.fields:
            text = "Phone number must be in E.164 format (e.g., +1234567890)"
            return jsonify({"type": "3", "data": None, "message": text}), 400
        return _envelope_error(exc)
    return _envelope_ok(message, to)


# ---------------------------------------------------------------- the database unreachable


@bp.errorhandler(sa_exc.DBAPIError)
@bp.errorhandler(sa_exc.TimeoutError)
@bp.errorhandler(sa_exc.DisconnectionError)
def _database_error(exc: Exception):  # type: ignore[no-untyped-def]
    """503 with Retry-After in the seed's own shape while the database is unreachable
    (its clients retry a 5xx), and the seed's 500 for any other database error."""
    unavailable = database_unavailable(exc)
    if unavailable:
        log.warning("database unavailable: %s", type(exc).__name__)
        text = "Service temporarily unavailable; retry later."
    else:
        log.exception("database error on %s", request.path)
        text = "Failed to send WhatsApp message."
    seed_003 = (f"{bp.name}.meta_send_message", f"{bp.name}.meta_send_template")
    if request.endpoint in seed_003:
        body: dict[str, Any] = {"type": "3", "message": text, "data": None}
    else:
        body = {"error": text}
    response: Response = jsonify(body)
    response.status_code = 503 if unavailable else 500
    if unavailable:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
