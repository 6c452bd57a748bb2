"""Provider webhooks. Signatures are checked before anything is read
into the database; a bad one is 403 and changes nothing."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from twilio.twiml.messaging_response import MessagingResponse

from api.auth import db
from herald.config import get_settings
from services.errors import Forbidden, InvalidRequest
from services.webhooks import (
    handle_meta_payload,
    handle_twilio_inbound,
    handle_twilio_status,
    meta_verify_challenge,
    parse_meta_body,
    verify_meta,
    verify_twilio,
)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


def _public_url() -> str:
    """The URL Twilio signed: the public base (a proxy rewrites host and scheme) + path + query."""
    query = request.query_string.decode()
    return get_settings().public_url + request.path + (f"?{query}" if query else "")


@bp.post("/twilio/status")
def twilio_status():  # type: ignore[no-untyped-def]
    session = db()
    form = request.form.to_dict()
    accounts = verify_twilio(
        session, _public_url(), form, request.headers.get("X-Twilio-Signature", "")
    )
    handle_twilio_status(session, accounts, form, request.args.get("message_id"))
    session.commit()
    return Response(status=204)


@bp.post("/twilio/inbound")
def twilio_inbound():  # type: ignore[no-untyped-def]
    session = db()
    form = request.form.to_dict()
    accounts = verify_twilio(
        session, _public_url(), form, request.headers.get("X-Twilio-Signature", "")
    )
    handle_twilio_inbound(session, accounts, form)
    session.commit()
    return Response(str(MessagingResponse()), mimetype="text/xml")


@bp.get("/meta")
def meta_subscribe():  # type: ignore[no-untyped-def]
    args = request.args
    if not meta_verify_challenge(db(), args.get("hub.mode"), args.get("hub.verify_token")):
        raise Forbidden("The verify token does not match.")
    return Response(args.get("hub.challenge", ""), mimetype="text/plain")


@bp.post("/meta")
def meta_events():  # type: ignore[no-untyped-def]
    session = db()
    raw = request.get_data()
    payload = parse_meta_body(raw)
    signer = verify_meta(session, raw, payload, request.headers.get("X-Hub-Signature-256", ""))
    if payload is None:
        raise InvalidRequest("The body is not a JSON object.", code="malformed_json")
    counts = handle_meta_payload(session, payload, signer)
    session.commit()
    return jsonify({"received": counts})
