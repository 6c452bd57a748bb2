"""`/v1/media` (upload once, send many) and `/v1/messages/<id>/media/<n>` (inbound media)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from api.auth import current_tenant, db, refuse_test_key, require_tenant, test_mode
from core.config import get_settings
from core.errors import InvalidRequest
from services.campaigns.campaigns import control_campaign
from services.content.inputs import text_problem
from services.content.media import (
    campaigns_using,
    delete_media,
    get_media,
    inbound_media_source,
    media_to_dict,
    open_media,
    upload_media,
)
from services.messages.service import cancel_messages_using_media

bp = Blueprint("media", __name__)
MULTIPART_OVERHEAD = 64 * 1024  # the form's other fields and part headers


@bp.get("/v1/messages/<message_id>/media/<int:n>")
@require_tenant
def inbound(message_id: str, n: int):  # type: ignore[no-untyped-def]
    """Stream an inbound message's media, fetched afresh from the provider.
    ---
    get:
      summary: An inbound message's n-th media file (0-based), streamed from the provider
      parameters:
      - {name: message_id, in: path, required: true, schema: {type: string}}
      - {name: n, in: path, required: true, schema: {type: integer, minimum: 0}}
      responses:
        200:
          description: The file, with the provider's content type
          content: {'*/*': {schema: {type: string, format: binary}}}
        401: Unauthorized
        404: NotFound
        502:
          description: >-
            The provider refused or failed (`provider_error`, `provider_unreachable`,
            `media_unavailable`), or the file is over HERALD_MEDIA_MAX_BYTES (`media_too_large`)
          content: {application/json: {schema: Error}}
    """
    return media_response(current_tenant().id, message_id, n, test=test_mode())


def media_response(tenant_id: str, message_id: str, n: int, test: bool | None = None) -> Response:
    """An inbound message's n-th media file streamed from its provider (the API's route
    and the console's). `test`: the API caller's mode (inbound messages are live: a test
    key's fetch is a 404); the console sees both."""
    session = db()
    source = inbound_media_source(session, tenant_id, message_id, n, test)
    session.close()  # no database connection held while the file streams
    stream = open_media(source)
    headers = {
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
        # Whatever a customer sent, it never runs as a page of Herald's origin.
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if stream.length is not None:
        headers["Content-Length"] = str(stream.length)
    return Response(
        stream.chunks,
        status=200,
        headers=headers,
        content_type=stream.content_type,
        direct_passthrough=True,
    )


@bp.post("/v1/media")
@require_tenant
def upload():  # type: ignore[no-untyped-def]
    """Upload a file to Meta once; send it many times as `media_id`.
    ---
    post:
      summary: Upload media to Meta (checked against Meta's types and sizes)
      description: >-
        Multipart: `file`, optional `type` (its MIME type, else the part's or the file
        name's), `provider` (meta), `phone_number_id` (which of the tenant's Meta
        numbers). Meta keeps uploads 30 days (`expires_at`).
      requestBody:
        required: true
        content:
          multipart/form-data:
            schema:
              type: object
              required: [file]
              properties:
                file: {type: string, format: binary}
                type: {type: string, description: the file's MIME type}
                provider: {type: string, enum: [meta]}
                phone_number_id: {type: string}
      responses:
        201: {description: Uploaded, content: {application/json: {schema: MediaView}}}
        401: Unauthorized
        403: LiveKeyOnly
        422: Refused
        502:
          description: Meta refused or failed the upload
          content: {application/json: {schema: Error}}
    """
    refuse_test_key("upload media to Meta")  # the upload would use the real credentials
    if request.mimetype != "multipart/form-data":
        raise InvalidRequest(
            "Upload the file as multipart/form-data in a 'file' field.", code="invalid_request"
        )
    request.max_content_length = get_settings().media_max_bytes + MULTIPART_OVERHEAD
    form = request.form
    for key, values in form.lists():
        for text in (key, *values):
            problem = text_problem(text)
            if problem:
                raise InvalidRequest(f"A form field {problem}.", code="invalid_form")
    file = request.files.get("file")
    if file is None:
        raise InvalidRequest(
            "Upload the file in the 'file' field.", fields={"file": ["Missing data."]}
        )
    filename = file.filename if file.filename and not text_problem(file.filename) else None
    session = db()
    media = upload_media(
        session,
        current_tenant(),
        file.stream,
        filename=filename,
        part_type=file.mimetype,
        declared_type=form.get("type") or None,
        provider=form.get("provider") or None,
        phone_number_id=form.get("phone_number_id") or None,
    )
    session.commit()
    return jsonify(media_to_dict(media)), 201


@bp.get("/v1/media/<media_id>")
@require_tenant
def show(media_id: str):  # type: ignore[no-untyped-def]
    """One uploaded media record.
    ---
    get:
      summary: An uploaded media record
      responses:
        200: {description: The record, content: {application/json: {schema: MediaView}}}
        401: Unauthorized
        404: NotFound
    """
    return jsonify(media_to_dict(get_media(db(), current_tenant().id, media_id)))


@bp.delete("/v1/media/<media_id>")
@require_tenant
def delete(media_id: str):  # type: ignore[no-untyped-def]
    """Delete an upload at Meta and here.
    ---
    delete:
      summary: Delete an uploaded media at Meta, then its record
      responses:
        204:
          description: >-
            Deleted; messages and campaigns still waiting to send it are canceled
            (error `media_deleted`)
        401: Unauthorized
        403: LiveKeyOnly
        404: NotFound
        502:
          description: Meta refused or failed the deletion
          content: {application/json: {schema: Error}}
    """
    refuse_test_key("delete media")  # a call to Meta, and live messages canceled
    session = db()
    tenant_id = current_tenant().id
    delete_media(session, tenant_id, media_id)
    cancel_messages_using_media(session, tenant_id, media_id)  # sent later, each would fail
    for campaign_id in campaigns_using(session, tenant_id, media_id):
        control_campaign(session, tenant_id, campaign_id, "cancel")
    session.commit()
    return "", 204
