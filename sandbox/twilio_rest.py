"""What every route of the Twilio REST fake shares: the API version in the path and
Twilio's error JSON with the HTTP status Twilio gives each code.

Kept apart from twilio_api.py so that media, which twilio_api.py calls, can answer in the
same shapes without importing it back.
"""

from __future__ import annotations

from typing import Any

from flask import Response, request

from sandbox.common import json_response
from sandbox.state import SandboxState, TwilioAccount

API_VERSION = "2010-04-01"
BASE = f"/{API_VERSION}/Accounts"

# code -> (HTTP status, message template); messages follow Twilio's wording.
ERRORS: dict[int, tuple[int, str]] = {
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource {path} was not found"),
    20429: (429, "Too Many Requests"),
    20500: (500, "Internal Server Error"),
    20503: (503, "Service Unavailable"),
    21211: (400, "The 'To' number {to} is not a valid phone number."),
    21212: (
        400,
        "The 'From' number {from_} is not a valid phone number, shortcode, "
        "or alphanumeric sender ID.",
    ),
    21408: (
        400,
        "Permission to send an SMS has not been enabled for the region indicated by "
        "the 'To' number: {to}.",
    ),
    21603: (400, "A 'From' phone number is required."),
    21606: (
        400,
        "The From phone number {from_} is not a valid, message-capable Twilio phone number.",
    ),
    21611: (
        400,
        "This 'From' number has exceeded the maximum number of queued messages",
    ),
    21612: (400, "The 'To' phone number: {to}, is not currently reachable using the 'From'."),
    21604: (400, "A 'To' phone number is required."),
    21609: (400, "Invalid StatusCallback url"),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21614: (400, "'To' number is not a valid mobile number"),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
    21619: (400, "A text message body or media urls must be specified."),
    21623: (400, "Number of media files exceeds allowed limit"),
    21624: (400, "Validity period can only be set to integers between 1 and 36,000 seconds."),
    21655: (400, "The ContentSid is Invalid."),
    21656: (400, "The ContentVariables Parameter is invalid."),
    21701: (400, "The Messaging Service Sid {mg} is invalid."),
    21910: (400, "Invalid From and To pair. From and To should be of the same channel"),
    # Twilio names no code of its own for MediaUrl beside a ContentSid (the media belongs
    # in the Content template); this is its code for content the channel will not take.
    63021: (400, "Channel invalid content error"),
}


def error_body(
    code: int, message: str | None = None, status: int | None = None, **fmt: Any
) -> tuple[dict[str, Any], int]:
    """Twilio's REST error JSON: code, message, more_info, status."""
    default_status, template = ERRORS.get(code, (500, "Error"))
    status = status or default_status
    text = message or template.format_map(_Blank(fmt))
    body = {
        "code": code,
        "message": text,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return body, status


class _Blank(dict):
    """Format values; a placeholder the caller could not fill reads as `?`, not a KeyError."""

    def __missing__(self, key: str) -> str:
        return "?"


BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Twilio API"'}


def error_response(
    code: int,
    message: str | None = None,
    status: int | None = None,
    headers: dict[str, str] | None = None,
    **fmt: Any,
) -> Response:
    body, status = error_body(code, message, status, **fmt)
    return json_response(body, status, headers)


def unauthorized() -> Response:
    """20003 as the Messages API answers it: with a `detail` and the basic-auth challenge."""
    body, status = error_body(20003)
    body["detail"] = "Your AccountSid or AuthToken was incorrect."
    return json_response(body, status, BASIC_CHALLENGE)


def basic_account(state: SandboxState) -> TwilioAccount | None:
    """The account whose SID and auth token the request's HTTP basic auth carries, or None."""
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return None
    with state.lock:
        account = state.twilio_accounts.get(auth.username or "")
    return account if account and account.auth_token == auth.password else None
