"""Meta WhatsApp Cloud API over httpx.

One httpx.Client per process (thread-safe, pooled); the Graph base URL and
version come from META_GRAPH_BASE / META_GRAPH_VERSION.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import httpx

from core.config import get_settings
from providers.base import AccountCredentials, ErrorKind, OutboundMessage, ProviderError, SendResult
from providers.retrying import retry_blips

# The one place Graph / WhatsApp error codes are classified, after Meta's Graph
# error-handling guide and the Cloud API error-code table.
# Throttling: wait and retry (app, user, application, WABA and throughput limits).
RATE_LIMITED = {4, 17, 341, 613, 80007, 130429, 131056}
# "Temporarily blocked for policies violations": wait (long) and retry.
BLOCKED = {368: 900.0}
# Temporary, and the message was not taken: retry now (1 API unknown, 2 API service).
TRANSIENT = {1, 2}
# Something went wrong at Meta (131000), or a service is unavailable (131016, a 503):
# the message may have been taken, so callbacks settle before any retry.
AMBIGUOUS = {131000, 131016}
PERMANENT = {
    100: "invalid_parameter",
    190: "provider_auth_failed",
    131026: "undeliverable",
    131047: "window_closed",
    131048: "spam_rate_limited",
    131049: "marketing_limited",
    131050: "recipient_opted_out",
    131051: "unsupported_type",
    131062: "bsuid_not_supported",  # e.g. an authentication template to a BSUID
}
OPT_OUT = {131050}
NAMES = {
    **PERMANENT,
    368: "sender_blocked",
    130429: "rate_limited",
    80007: "rate_limited",
    131056: "pair_rate_limited",
    131000: "provider_error",
    131016: "service_unavailable",
    132000: "template_params_mismatch",
    132001: "template_not_found",
    132015: "template_paused",
    132016: "template_disabled",
}

# Meta's supported media: an image is JPEG or PNG only; a WebP goes as a sticker (which
# takes no caption); a GIF is no type Meta sends (services/content/schemas.py refuses it).
MEDIA_TYPES = {
    "image": (".jpg", ".jpeg", ".png"),
    "sticker": (".webp",),
    "video": (".mp4", ".3gp"),
    "audio": (".mp3", ".ogg", ".aac", ".amr", ".m4a", ".opus"),
}
UNSENDABLE_SUFFIXES = (".gif",)
NO_CAPTION = ("audio", "sticker")


def classify(status: int | None, code: int | None) -> ErrorKind:
    if code in RATE_LIMITED or code in BLOCKED or status == 429:
        return ErrorKind.RATE_LIMITED
    if code in TRANSIENT:
        return ErrorKind.TRANSIENT
    if code in PERMANENT or (code is not None and 132000 <= code < 133000):
        return ErrorKind.PERMANENT
    if code in AMBIGUOUS or (status is not None and status >= 500):
        # It may have taken the message: callbacks settle before any retry (see delivery).
        return ErrorKind.AMBIGUOUS
    return ErrorKind.PERMANENT


def error_details(error: dict[str, Any]) -> dict[str, Any]:
    """What Meta says beyond the code, kept on the event: subcode, details, trace id."""
    details: dict[str, Any] = {}
    if error.get("error_subcode") is not None:
        details["error_subcode"] = error["error_subcode"]
    data = error.get("error_data")
    if isinstance(data, dict) and data.get("details"):
        details["error_details"] = data["details"]
    if error.get("fbtrace_id"):
        details["fbtrace_id"] = error["fbtrace_id"]
    return details


def media_suffix(url: str) -> str:
    """The URL path's lower-case ending, without the query (`.jpg`, or `` when none)."""
    path = url.split("?", 1)[0].split("#", 1)[0].lower()
    name = path.rsplit("/", 1)[-1]
    return name[name.rfind(".") :] if "." in name else ""


def media_type_for(url: str, declared: str | None) -> str:
    """The Meta message type for a media URL: the declared one, else by the file's ending."""
    if declared:
        return declared
    path = url.split("?", 1)[0].lower()
    for kind, suffixes in MEDIA_TYPES.items():
        if path.endswith(suffixes):
            return kind
    return "document"


def recipient_field(to: str) -> dict[str, str]:
    """Where a send names its recipient: a phone number goes in `to` (digits), a
    business-scoped user id (BSUID, `US.1349…`: a user who may share no phone number) in
    `recipient`, exactly as Meta gave it. Meta takes either; with both, `to` wins."""
    if to[:2].isalpha() and to[2:3] == ".":
        return {"recipient": to}
    return {"to": to.lstrip("+")}


def build_payload(message: OutboundMessage) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        **recipient_field(message.to),
        "biz_opaque_callback_data": message.herald_id,
    }
    if message.template:
        template = message.template
        components = template.get("components")
        if components is None and template.get("variables"):
            components = [
                {
                    "type": "body",
                    "parameters": [{"type": "text", "text": v} for v in template["variables"]],
                }
            ]
        if message.media_id:  # uploaded media as the template's header
            kind = message.media_type or "image"
            header = {
                "type": "header",
                "parameters": [{"type": kind, kind: {"id": message.media_id}}],
            }
            components = [header, *(components or [])]
        body: dict[str, Any] = {
            "name": template["name"],
            "language": {"code": template["language"]},
        }
        if components:
            body["components"] = components
        payload.update(type="template", template=body)
    elif message.interactive:
        payload.update(type="interactive", interactive=message.interactive)
    elif message.media_id:  # uploaded media (POST /v1/media), sent by Meta's id
        kind = message.media_type or "document"
        by_id: dict[str, Any] = {"id": message.media_id}
        if message.body and kind not in NO_CAPTION:
            by_id["caption"] = message.body
        payload.update(type=kind, **{kind: by_id})
    elif message.reaction is not None:
        payload.update(type="reaction", reaction=message.reaction)
    elif message.location is not None:
        payload.update(type="location", location=message.location)
    elif message.contacts is not None:
        payload.update(type="contacts", contacts=message.contacts)
    elif message.sticker is not None:
        payload.update(type="sticker", sticker=message.sticker)
    elif message.media_urls:
        kind = media_type_for(message.media_urls[0], message.media_type)
        media: dict[str, Any] = {"link": message.media_urls[0]}
        if message.body and kind not in NO_CAPTION:
            media["caption"] = message.body
        if message.filename and kind == "document":
            media["filename"] = message.filename
        payload.update(type=kind, **{kind: media})
    else:
        payload.update(type="text", text={"body": message.body, "preview_url": message.preview_url})
    if message.context_message_id and payload["type"] != "reaction":
        payload["context"] = {"message_id": message.context_message_id}  # a reply
    return payload


def read_payload(wamid: str, *, typing: bool = False) -> dict[str, Any]:
    """Meta's read receipt for a received message, with the typing indicator (shown
    until the business answers, at most 25 s) when asked."""
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": wamid,
    }
    if typing:
        payload["typing_indicator"] = {"type": "text"}
    return payload


class MetaProvider:
    name = "meta"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        client = self._client  # no lock on the hot path: set once, read often
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=get_settings().http_timeout,
                    limits=httpx.Limits(max_connections=128, max_keepalive_connections=64),
                )
            return self._client

    def send(self, account: AccountCredentials, message: OutboundMessage) -> SendResult:
        settings = get_settings()
        base = f"{settings.meta_graph_base}/{settings.meta_graph_version}"
        # senders: the phone number id chosen at accept time, else the account's own
        chosen = message.from_kind == "phone_number_id" and message.from_address
        url = f"{base}/{chosen or account.external_id}/messages"
        data = self._post(url, account.secrets.get("access_token", ""), build_payload(message))
        messages = data.get("messages") or []
        if not messages or not messages[0].get("id"):
            raise ProviderError(ErrorKind.AMBIGUOUS, "Graph answered 200 without a message id")
        contacts = data.get("contacts") or []
        wa_id = contacts[0].get("wa_id") if contacts and isinstance(contacts[0], dict) else None
        return SendResult(
            provider_message_id=messages[0]["id"],
            native_status=messages[0].get("message_status", "accepted"),
            sender=message.from_number if chosen else account.settings.get("display_phone_number"),
            # Can differ from the number sent to (see services.content.phones.whatsapp_forms).
            recipient_id=f"+{wa_id.lstrip('+')}"
            if isinstance(wa_id, str) and wa_id.strip("+").isdigit() and len(wa_id) <= 20
            else None,
        )

    def mark_read(self, account: AccountCredentials, wamid: str, *, typing: bool = False) -> None:
        """Mark a received message read (and earlier ones, as Meta does), optionally with
        the typing indicator. Raises ProviderError as a send does."""
        settings = get_settings()
        base = f"{settings.meta_graph_base}/{settings.meta_graph_version}"
        token = account.secrets.get("access_token", "")
        data = self._post(
            f"{base}/{account.external_id}/messages", token, read_payload(wamid, typing=typing)
        )
        if data.get("success") is not True:
            raise ProviderError(ErrorKind.AMBIGUOUS, "Graph answered without success: true")

    def find_sent(
        self, account: AccountCredentials, message: OutboundMessage, since: datetime
    ) -> list[SendResult]:
        """The Cloud API cannot look up sent messages; callbacks are the only witness."""
        return []

    @retry_blips
    def _post(self, url: str, token: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.http.post(
                url, json=payload, headers={"Authorization": f"Bearer {token}"}
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ProviderError(
                ErrorKind.TRANSIENT, f"connect failed: {type(exc).__name__}"
            ) from None
        except httpx.TransportError as exc:
            raise ProviderError(ErrorKind.AMBIGUOUS, f"no answer: {type(exc).__name__}") from None
        if response.status_code < 300:
            return response.json()
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        code = error.get("code")
        code = int(code) if isinstance(code, int | str) and str(code).isdigit() else None
        header = response.headers.get("Retry-After")
        retry_after = float(header) if header and header.isdigit() else None
        if retry_after is None and code in BLOCKED:
            retry_after = BLOCKED[code]
        raise ProviderError(
            classify(response.status_code, code),
            error.get("message") or f"Graph API answered {response.status_code}",
            code=str(code) if code is not None else None,
            http_status=response.status_code,
            retry_after=retry_after,
            opt_out=code in OPT_OUT,
            details=error_details(error) if isinstance(error, dict) else None,
        )
