"""What every route of the Graph API fake shares: the version in the path, the access
token, and Meta's error JSON.

HTTP statuses follow Meta's Cloud API error-code table: almost everything is 400, including
throttling (130429, 131048, 131056, 80007, 4); only auth (190 -> 401), permission
(10, 200, 368, 131005 -> 403) and server-side trouble (131000 -> 500, 131016/2 -> 503) differ.
Kept apart from meta_api.py so that media and conversations, which meta_api.py calls, can
answer in the same shapes without importing it back.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from flask import Response, request

from sandbox.common import json_response
from sandbox.state import MetaAccount, SandboxState, new_fbtrace_id

GRAPH_VERSION = re.compile(r"v\d+\.\d+")
ERROR_DOCS = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"

# code -> (HTTP status, title, details)
ERRORS: dict[int, tuple[int, str, str]] = {
    2: (503, "Service temporarily unavailable", "Temporary due to downtime or overload."),
    4: (400, "Application request limit reached", "The app has reached its API call rate limit."),
    10: (
        403,
        "Application does not have permission for this action",
        "Permission is either not granted or has been removed.",
    ),
    100: (400, "Invalid parameter", "Invalid parameter"),
    190: (
        401,
        "Invalid OAuth access token - Cannot parse access token",
        "The access token is invalid or has expired.",
    ),
    200: (403, "Permissions error", "Permission is either not granted or has been removed."),
    368: (
        403,
        "Temporarily blocked for policies violations",
        "The WhatsApp Business Account has been restricted for a policy violation.",
    ),
    80007: (400, "Rate limit issues", "The WhatsApp Business Account has reached its rate limit."),
    130429: (400, "Rate limit hit", "Cloud API message throughput has been reached."),
    131000: (500, "Something went wrong", "Message failed to send due to an unknown error."),
    131005: (403, "Access denied", "Permission is either not granted or has been removed."),
    131008: (400, "Required parameter is missing", "A required parameter is missing."),
    131009: (400, "Parameter value is not valid", "One or more parameter values are invalid."),
    131016: (503, "Service unavailable", "A service is temporarily unavailable."),
    131026: (
        400,
        "Message undeliverable",
        "Unable to deliver message. The recipient may not be a WhatsApp user, or has not "
        "accepted the latest Terms of Service.",
    ),
    131042: (
        400,
        "Business eligibility payment issue",
        "Message failed to send because there were one or more errors related to your "
        "payment method.",
    ),
    131047: (
        400,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
    ),
    131048: (
        400,
        "Spam rate limit hit",
        "Message failed to send because there are restrictions on how many messages can be "
        "sent from this phone number.",
    ),
    131049: (
        400,
        "This message was not delivered to maintain healthy ecosystem engagement.",
        "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
    ),
    131050: (
        400,
        "Unable to deliver the message. This recipient has chosen to stop receiving "
        "marketing messages on WhatsApp from your business",
        "This recipient has chosen to stop receiving marketing messages from your business.",
    ),
    131051: (400, "Unsupported message type", "Message type is not currently supported."),
    131053: (400, "Media upload error", "Unable to upload the media used in the message."),
    131062: (
        400,
        "Business-scoped User ID recipients are not supported for this message",
        "Authentication templates (one-tap, zero-tap and copy-code) need a phone number.",
    ),
    131056: (
        400,
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from this phone number to the same recipient phone number "
        "in a short period of time.",
    ),
    131057: (500, "Account in maintenance mode", "Business Account is in maintenance mode."),
}


def graph_token() -> str:
    """The access token of a Graph API request, as Meta reads it: an `Authorization:
    Bearer` header, else an `access_token` query parameter."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.args.get("access_token", "")


def graph_error(
    code: int,
    message: str | None = None,
    status: int | None = None,
    subcode: int | None = None,
    etype: str = "OAuthException",
    details: str | None = None,
) -> tuple[dict[str, Any], int]:
    """Graph API error JSON. WhatsApp codes carry error_data.details; generic ones don't."""
    default_status, title, default_details = ERRORS.get(code, (500, "Unknown error", ""))
    err: dict[str, Any] = {"message": message or f"(#{code}) {title}", "type": etype, "code": code}
    if subcode is not None:
        err["error_subcode"] = subcode
    if code >= 130000 or details:
        err["error_data"] = {"messaging_product": "whatsapp", "details": details or default_details}
    err["fbtrace_id"] = new_fbtrace_id()
    return {"error": err}, status or default_status


def graph_json(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return json_response(body, status, headers, "application/json; charset=UTF-8")


def graph_fail(code: int, status: int | None = None, **kw: Any) -> Response:
    """Meta's error answer; a 401 also names the refused token in `WWW-Authenticate`."""
    body, status = graph_error(code, status=status, **kw)
    headers = None
    if status == 401:
        headers = {
            "WWW-Authenticate": f'OAuth "Facebook Platform" "invalid_token" '
            f'"{body["error"]["message"]}"'
        }
    return graph_json(body, status, headers)


def no_object(object_id: str, verb: str) -> Response:
    """100/33: what Meta answers for an object the token cannot see, or that does not exist."""
    return graph_fail(
        100,
        subcode=33,
        etype="GraphMethodException",
        message=(
            f"Unsupported {verb} request. Object with ID '{object_id}' does not exist, "
            "cannot be loaded due to missing permissions, or does not support this "
            "operation. Please read the Graph API documentation at "
            "https://developers.facebook.com/docs/graph-api"
        ),
    )


class Refusal(NamedTuple):
    """An error answer and the code it carries (a refused send is recorded with the code)."""

    response: Response
    code: int


def caller(state: SandboxState, version: str, path: str) -> dict[str, MetaAccount] | Refusal:
    """The numbers a Graph request may act for; or Meta's refusal of a path without a
    version (2500) or of a token that is no one's (190)."""
    if not GRAPH_VERSION.fullmatch(version):
        return Refusal(graph_fail(2500, 400, message=f"Unknown path components: {path}"), 2500)
    accounts = token_accounts(state, graph_token())
    if not accounts:
        return Refusal(graph_fail(190, message=ERRORS[190][1]), 190)
    return accounts


def token_accounts(state: SandboxState, token: str) -> dict[str, MetaAccount]:
    """The numbers (by phone number id) a token may act for; empty: not a token at all."""
    if not token:
        return {}
    with state.lock:
        return {p: a for p, a in state.meta_accounts.items() if a.access_token == token}


def webhook_error(code: int) -> dict[str, Any]:
    """An `errors[]` item as Meta writes it into a webhook (a failed status, a change)."""
    _, title, details = ERRORS[code]
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details},
        "href": ERROR_DOCS,
    }
