"""`/v1/messages`: accept, read, list, cancel."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api.auth import current_tenant, db, json_body, require_tenant
from services.errors import InvalidRequest
from services.messages import accept_message, cancel_message, get_message, list_messages
from services.schemas import load_message_request
from services.serialize import message_to_dict
from services.status import OUTBOUND

bp = Blueprint("messages", __name__, url_prefix="/v1/messages")


@bp.post("")
@require_tenant
def create():  # type: ignore[no-untyped-def]
    """Validate, persist and enqueue one message; workers send it.
    ---
    post:
      summary: Validate, persist and enqueue one message
      parameters:
      - {name: Idempotency-Key, in: header, schema: {type: string}}
      requestBody:
        required: true
        content: {application/json: {schema: MessageRequestSchema}}
      responses:
        202: {description: Accepted, content: {application/json: {schema: Message}}}
        200: {description: Idempotent replay, content: {application/json: {schema: Message}}}
        401: Unauthorized
        404: NotFound
        409: Conflict
        422: Refused
        429: RateLimited
    """
    payload = json_body()
    data = load_message_request(payload)
    session = db()
    message, created = accept_message(
        session,
        current_tenant(),
        data,
        idempotency_key=request.headers.get("Idempotency-Key") or None,
        raw=payload,
        own_transaction=True,
    )
    session.commit()
    return jsonify(message_to_dict(message)), 202 if created else 200


@bp.get("/<message_id>")
@require_tenant
def show(message_id: str):  # type: ignore[no-untyped-def]
    """One message with its events.
    ---
    get:
      summary: A message and its timeline of events
      responses:
        200: {description: The message, content: {application/json: {schema: Message}}}
        401: Unauthorized
        404: NotFound
    """
    return jsonify(message_to_dict(get_message(db(), current_tenant().id, message_id)))


@bp.get("")
@require_tenant
def index():  # type: ignore[no-untyped-def]
    """A page of the tenant's messages.
    ---
    get:
      summary: A page of messages, newest first
      parameters:
      - {name: status, in: query, schema: {type: string}}
      - {name: to, in: query, schema: {type: string}}
      - {name: campaign_id, in: query, schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 200, default: 50}}
      - {name: cursor, in: query, schema: {type: string}}
      responses:
        200: {description: A page, content: {application/json: {schema: MessagePage}}}
        401: Unauthorized
    """
    args = request.args
    status = args.get("status")
    if status and status not in OUTBOUND | {"received"}:
        raise InvalidRequest(
            "Unknown status.", fields={"status": [f"not one of {sorted(OUTBOUND)}"]}
        )
    try:
        limit = int(args.get("limit", 50))
    except ValueError:
        raise InvalidRequest(
            "limit must be an integer.", fields={"limit": ["not an integer"]}
        ) from None
    if not 1 <= limit <= 200:
        raise InvalidRequest("limit must be between 1 and 200.", fields={"limit": ["out of range"]})
    rows, cursor = list_messages(
        db(),
        current_tenant().id,
        status=status,
        to=args.get("to"),
        campaign_id=args.get("campaign_id"),
        limit=limit,
        cursor=args.get("cursor"),
    )
    return jsonify(
        {"data": [message_to_dict(m, events=False) for m in rows], "next_cursor": cursor}
    )


@bp.post("/<message_id>/cancel")
@require_tenant
def cancel(message_id: str):  # type: ignore[no-untyped-def]
    """Cancel a message not yet handed to its provider.
    ---
    post:
      summary: Cancel a scheduled or queued message
      responses:
        200: {description: Canceled, content: {application/json: {schema: Message}}}
        401: Unauthorized
        404: NotFound
        409: Conflict
    """
    session = db()
    message = cancel_message(session, current_tenant().id, message_id)
    session.commit()
    return jsonify(message_to_dict(message))
