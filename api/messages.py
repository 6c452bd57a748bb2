"""`/v1/messages`: accept, read, list, cancel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, jsonify, request
from sqlalchemy.orm import Session

from api.auth import (
    current_tenant,
    db,
    json_body,
    parse_json,
    read_limited,
    require_tenant,
    test_mode,
)
from core.config import get_settings
from core.errors import InvalidRequest
from core.ids import is_id
from models import Tenant
from services.content.schemas import load_message_request
from services.messages.accept import Item
from services.messages.batch import accept_batch
from services.messages.group_commit import accept_one
from services.messages.resend import resend_message
from services.messages.serialize import message_to_dict
from services.messages.service import cancel_message, get_message, list_messages
from services.messages.status import OUTBOUND
from services.tenancy.tenants import authenticate_caller

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
      callbacks:
        messageStatus:
          '{$request.body#/callback_url}':
            post:
              summary: A status change, POSTed to the message's callback URL (else the tenant's)
              requestBody:
                content: {application/json: {schema: MessageStatusEvent}}
              responses:
                2XX: {description: Received; any other answer is retried}
    """
    key = request.headers.get("Idempotency-Key") or None
    item = accept_payload(db(), current_tenant(), json_body(), key, test_mode())
    return jsonify(item.answer()), item.status


def accept_payload(
    session: Session, tenant: Tenant, payload: Any, key: str | None, test: bool = False
) -> Item:
    """Validate and store one message request's JSON; the item (202 or a replay), or
    the request's error raised. `test`: a test key's."""
    data = load_message_request(payload, walked=True)
    return accept_one(session, tenant, payload, data, key, test)


def accept_request(
    session: Session,
    authorization: str | None,
    body: bytes,
    key: str | None,
    loads: Callable[[bytes], Any],
) -> Item:
    """`POST /v1/messages` from its raw parts, in the view's order (the key, then the
    body): what api/fastpath.py serves without Flask."""
    tenant, test = authenticate_caller(session, authorization)
    return accept_payload(session, tenant, parse_json(body, loads), key, test)


# A batch of 1,000 messages with long bodies is more than the single-message limit.
BATCH_BODY_BYTES = 16 * 1024 * 1024


@bp.post("/batch")
@require_tenant
def create_batch():  # type: ignore[no-untyped-def]
    """Validate, persist and enqueue up to 1,000 messages, each answered on its own.
    ---
    post:
      summary: Accept up to 1,000 messages in one request
      description: >-
        Each entry is validated, checked (opt-out, 24-hour window, quota) and stored
        on its own: a refused entry never sinks the others. The answer is 200 with one
        result per entry, in order: `status` 202 and the `message` when it was
        accepted, 200 and the first message when its `idempotency_key` was already
        used with the same message (a replay), or the error status with the usual
        `error` object (400 invalid, 409 key used with another message, 422 refused,
        429 over quota with `retry_after`). Accepted entries are committed before the
        answer. The envelope itself is refused as a whole: not a JSON object or no
        `messages` list (400), more than 1,000 entries (413, `batch_too_large`).
      requestBody:
        required: true
        content: {application/json: {schema: MessageBatchRequestSchema}}
      responses:
        200:
          description: One result per entry
          content: {application/json: {schema: MessageBatch}}
        401: Unauthorized
        413: TooLarge
    """
    request.max_content_length = max(get_settings().max_body_bytes, BATCH_BODY_BYTES)
    if request.headers.get("Idempotency-Key"):
        raise InvalidRequest(
            "A batch has no Idempotency-Key header: give each message its idempotency_key."
        )
    return jsonify(accept_batch(db(), current_tenant(), json_body(), test_mode()))


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
    message = get_message(db(), current_tenant().id, message_id, test=test_mode())
    return jsonify(message_to_dict(message))


@bp.get("")
@require_tenant
@read_limited
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
        429: RateLimited
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
    if args.get("cursor") is not None and not is_id("msg", args["cursor"]):
        raise InvalidRequest(
            "cursor is not a next_cursor this list gave.",
            fields={"cursor": ["Not a cursor: give the next_cursor of a previous page."]},
        )
    rows, cursor = list_messages(
        db(),
        current_tenant().id,
        status=status,
        to=args.get("to"),
        campaign_id=args.get("campaign_id"),
        limit=limit,
        cursor=args.get("cursor"),
        test=test_mode(),
    )
    return jsonify(
        {"data": [message_to_dict(m, events=False) for m in rows], "next_cursor": cursor}
    )


@bp.post("/<message_id>/resend")
@require_tenant
def resend(message_id: str):  # type: ignore[no-untyped-def]
    """Send a failed or undelivered message again.
    ---
    post:
      summary: Resend a failed or undelivered message as a new message
      description: >-
        The new message carries the original's content and `resend_of`; the original
        gets `resent_as`. It passes every check a new message does (opt-out, 24-hour
        window, quota). A second call answers the first resend (200), never a second
        message; to try again after the resend failed too, resend the resend.
      responses:
        202: {description: Resent, content: {application/json: {schema: Message}}}
        200: {description: Resent before, content: {application/json: {schema: Message}}}
        401: Unauthorized
        404: NotFound
        409: Conflict
        422: Refused
        429: RateLimited
    """
    session = db()
    item = resend_message(session, current_tenant(), message_id, test=test_mode())
    session.commit()
    return jsonify(item.answer()), item.status


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
    message = cancel_message(session, current_tenant().id, message_id, test=test_mode())
    session.commit()
    return jsonify(message_to_dict(message))
