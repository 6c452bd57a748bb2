"""`/v1/messages/<id>/read`: read receipts and the typing indicator (WhatsApp, Meta).
The rules live in services/content/conversations.py."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api.auth import current_tenant, db, json_body, require_tenant, test_mode
from services.content.conversations import ReadRequestSchema, mark_read
from services.content.schemas import load_object
from services.messages.serialize import message_to_dict

bp = Blueprint("conversations", __name__, url_prefix="/v1/messages")
_read = ReadRequestSchema()


@bp.post("/<message_id>/read")
@require_tenant
def read(message_id: str):  # type: ignore[no-untyped-def]
    """Mark an inbound WhatsApp message read (blue ticks) and optionally show the
    typing indicator, through Meta now.
    ---
    post:
      summary: Mark an inbound Meta message read, optionally showing the typing indicator
      requestBody:
        required: false
        content: {application/json: {schema: ReadRequestSchema}}
      responses:
        200: {description: Marked read, content: {application/json: {schema: Message}}}
        401: Unauthorized
        404: NotFound
        409: Conflict
        422: Refused
    """
    options = load_object(_read, json_body()) if request.get_data() else {}
    session = db()
    message = mark_read(
        session,
        current_tenant().id,
        message_id,
        typing=bool(options.get("typing")),
        test=test_mode(),
    )
    session.commit()
    return jsonify(message_to_dict(message, events=False))
