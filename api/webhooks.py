"""Provider webhooks. Signatures are checked before anything is read
into the database; a bad one is 403 and changes nothing."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from sqlalchemy.orm import Session
from twilio.twiml.messaging_response import MessagingResponse

from api.auth import db
from api.errors import unavailable
from core.config import get_settings
from core.errors import Forbidden, InvalidRequest, database_unavailable
from services.callbacks import applier, spool
from services.callbacks.meta import handle_meta_payload
from services.callbacks.signatures import (
    meta_verify_challenge,
    parse_meta_body,
    verify_meta,
    verify_twilio,
)
from services.callbacks.twilio import (
    handle_twilio_inbound,
    receive_twilio_status,
    twilio_status_fields,
)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


def _public_url() -> str:
    """The URL Twilio signed: the public base (a proxy rewrites host and scheme) + path + query."""
    query = request.query_string.decode()
    return get_settings().public_url + request.path + (f"?{query}" if query else "")


@bp.post("/twilio/status")
def twilio_status():  # type: ignore[no-untyped-def]
    """Twilio's status callback for a message Herald sent.
    ---
    post:
      summary: Twilio status callback
      security: []
      parameters:
      - {name: X-Twilio-Signature, in: header, schema: {type: string}}
      - {name: message_id, in: query, schema: {type: string}}
      requestBody:
        content:
          application/x-www-form-urlencoded: {schema: TwilioForm}
      responses:
        204: {description: "Recorded (durably); applied a few ms later"}
        202: {description: "The database unreachable: kept in the spool, recorded once it is back"}
        400:
          description: A NUL in the URL, or signed but not a Twilio callback
          content:
            application/json: {schema: Error}
        403: Forbidden
    """
    # api/fastpath.py answers this route before Flask does; this view serves what it
    # hands on (a cookie, another body type, a NUL...), with the same outcome.
    status = accept_twilio_status(
        db(),  # made on first use: a callback whose signers are cached reads nothing
        _public_url(),
        request.form.to_dict(),
        request.headers.get("X-Twilio-Signature", ""),
        request.args.get("message_id"),
    )
    return Response(status=status)


def accept_twilio_status(
    session: Session, url: str, form: dict[str, str], signature: str, herald_id: str | None
) -> int:
    """A status callback's work, shared by the view and api/fastpath.py: the signature
    checked first (Forbidden, nothing else done), then the callback stored, committed on
    return (durable: the 204 is true even if no applier runs yet). The database
    unreachable: kept in Redis's spool (202: stored once it is back, Twilio would not
    send it again after a 5xx), or its error raised (503) when it may not be kept."""
    error = spool.known_down()  # found unreachable under a second ago: not tried again
    if error is not None and not signature:
        verify_twilio(session, url, form, signature)  # Forbidden, with no database read
    if error is None:
        try:
            accounts = verify_twilio(session, url, form, signature)
            new = receive_twilio_status(accounts, form, herald_id)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            spool.note_down(exc)
            error = exc
        else:
            if new:
                applier.ring()
            return 204
    twilio_status_fields(form)  # a form no callback can be stays a 400
    if spool.keep(spool.STATUS, url, form, signature, herald_id):
        return 202
    raise unavailable(error) from error


@bp.post("/twilio/inbound")
def twilio_inbound():  # type: ignore[no-untyped-def]
    """A message a recipient sent through Twilio.
    ---
    post:
      summary: Twilio inbound message
      security: []
      parameters:
      - {name: X-Twilio-Signature, in: header, schema: {type: string}}
      requestBody:
        content:
          application/x-www-form-urlencoded: {schema: TwilioForm}
      responses:
        200:
          description: TwiML <Response/> (also when kept unrouted)
          content:
            text/xml:
              schema: {type: string}
        400:
          description: A NUL in the URL, or signed but not a Twilio message
          content:
            application/json: {schema: Error}
        403: Forbidden
    """
    session = db()
    form, url = request.form.to_dict(), _public_url()
    signature = request.headers.get("X-Twilio-Signature", "")
    try:
        accounts = verify_twilio(session, url, form, signature)
        handle_twilio_inbound(session, accounts, form)
        session.commit()
    except Exception as exc:
        # The database unreachable: Twilio would not send it again after a 5xx.
        kept = database_unavailable(exc) and spool.keep(spool.INBOUND, url, form, signature, None)
        if not kept:
            raise
    return Response(str(MessagingResponse()), mimetype="text/xml")


@bp.get("/meta")
def meta_subscribe():  # type: ignore[no-untyped-def]
    """Meta's subscription check: echo the challenge for the right verify token.
    ---
    get:
      summary: Meta subscription check
      security: []
      parameters:
      - {name: hub.mode, in: query, schema: {type: string, enum: [subscribe]}}
      - {name: hub.verify_token, in: query, schema: {type: string}}
      - {name: hub.challenge, in: query, schema: {type: string}}
      responses:
        200: {description: hub.challenge echoed, content: {text/plain: {schema: {type: string}}}}
        403: Forbidden
    """
    args = request.args
    session = db()
    held = meta_verify_challenge(session, args.get("hub.mode"), args.get("hub.verify_token"))
    if session.in_transaction():
        session.commit()  # hashes of accounts stored before they had one
    if not held:
        raise Forbidden("The verify token does not match.")
    return Response(args.get("hub.challenge", ""), mimetype="text/plain")


@bp.post("/meta")
def meta_events():  # type: ignore[no-untyped-def]
    """Meta's statuses and inbound messages.
    ---
    post:
      summary: Meta statuses and messages
      security: []
      parameters:
      - {name: X-Hub-Signature-256, in: header, schema: {type: string}}
      requestBody:
        content:
          application/json:
            schema:
              type: object
              properties:
                object: {type: string}
                entry: {type: array, items: {type: object}}
      responses:
        200:
          description: "Recorded: counts per outcome"
          content: {application/json: {schema: MetaReceived}}
        400:
          description: Signed, but not a JSON object
          content:
            application/json: {schema: Error}
        403: Forbidden
    """
    session = db()
    raw = request.get_data()
    payload = parse_meta_body(raw)
    signer = verify_meta(session, raw, payload, request.headers.get("X-Hub-Signature-256", ""))
    if payload is None:
        raise InvalidRequest("The body is not a JSON object.", code="malformed_json")
    counts = handle_meta_payload(session, payload, signer)
    session.commit()
    return jsonify({"received": counts})
