"""Twilio Programmable Messaging through the official `twilio` client.

One pooled HTTP client per process, one `Client` per account (cached), pointed
at TWILIO_API_BASE so the same code talks to Twilio or to the bundled sandbox.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import requests
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.rest import Client

from core.config import get_settings
from core.ids import utcnow
from providers.base import (
    AccountCredentials,
    ErrorKind,
    OutboundMessage,
    ProviderError,
    ProviderStatus,
    SendResult,
)
from providers.http import PooledHttpClient
from providers.retrying import retry_blips

# The one place Twilio error codes are classified. Anything not listed: a 4xx is
# permanent, a 5xx ambiguous (Twilio documents that a create answered with a 500
# may still have been queued, so Herald never blindly re-creates: see delivery).
# 21611: the sender's queue at Twilio is full: back off and retry. (14107 and 30022
# are never an answer to a create; 30022 comes in callbacks, named below.)
RATE_LIMITED = {20429, 21611}
PERMANENT = {
    21211: "invalid_number",
    21408: "region_not_permitted",
    21610: "recipient_opted_out",  # the name Meta's 131050 has too: one code per meaning
    21612: "unroutable",
    21614: "not_mobile",
    21617: "body_too_long",
    63016: "window_closed",
    63007: "sender_not_found",
    20003: "provider_auth_failed",
    20404: "provider_not_found",
    21655: "template_not_found",
    21624: "invalid_validity_period",
}
OPT_OUT = {21610}
# Codes Twilio reports later, in a status callback's ErrorCode.
DELIVERY_ERRORS = {
    30001: "queue_overflow",
    30002: "account_suspended",
    30003: "unreachable",
    30004: "blocked",
    30005: "unknown_destination",
    30006: "landline_or_unreachable",
    30007: "carrier_filtered",
    30008: "unknown_error",
    30022: "rate_limited",
    30036: "expired",  # ValidityPeriod passed while queued at Twilio (services/messages/expiry.py)
    20429: "rate_limited",
    21611: "sender_queue_full",
    63027: "template_not_found",
    63028: "template_params_mismatch",
}
NAMES = {**PERMANENT, **DELIVERY_ERRORS}


def classify(status: int | None, code: int | None) -> ErrorKind:
    if code in RATE_LIMITED or status == 429:
        return ErrorKind.RATE_LIMITED
    if code in PERMANENT:
        return ErrorKind.PERMANENT
    if status is not None and status >= 500:
        # 20500/20503 included: never retried in-call, only after callbacks settle.
        return ErrorKind.AMBIGUOUS
    return ErrorKind.PERMANENT


# Twilio's ValidityPeriod takes whole seconds from 1 to 36,000 (error 21624 otherwise).
TWILIO_MAX_VALIDITY = 36_000


def validity_period(expires_at: datetime | None, now: datetime | None = None) -> int | None:
    """Twilio's `ValidityPeriod` for a message expiring at `expires_at`: the remaining
    whole seconds, at least 1 and at most Twilio's 36,000; None without a ttl."""
    if expires_at is None:
        return None
    remaining = (expires_at - (now or utcnow())).total_seconds()
    return max(1, min(TWILIO_MAX_VALIDITY, math.floor(remaining)))


class TwilioProvider:
    name = "twilio"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], Client] = {}
        # Keep-alive pools (8 hosts, 64 connections each), the environment's proxies
        # and CA bundle: urllib3 under the SDK, without requests' per-call work.
        self._http = PooledHttpClient(
            get_settings().http_timeout, pool_connections=8, pool_maxsize=64
        )

    def client(self, account: AccountCredentials) -> Client:
        key = (account.external_id, account.secrets.get("auth_token", ""))
        client = self._clients.get(key)  # no lock on the hot path: set once, read often
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = Client(key[0], key[1], http_client=self._http)
                client.api.base_url = get_settings().twilio_api_base
                self._clients[key] = client
            return client

    def send(self, account: AccountCredentials, message: OutboundMessage) -> SendResult:
        params = self.build_params(account, message)
        created = self._create(account, params)
        return SendResult(
            provider_message_id=created.sid,
            native_status=created.status,
            sender=params.get("from_"),
            price=_decimal(created.price),
            price_unit=created.price_unit,
        )

    def find_sent(
        self, account: AccountCredentials, message: OutboundMessage, since: datetime
    ) -> list[SendResult]:
        """Messages at Twilio to the same recipient from the same sender, created
        since `since`, with the same body, newest first: a create whose answer was lost.
        Twilio's Message resource returns no StatusCallback (nothing only one attempt
        carries), so another message's copy looks the same: the caller decides by
        elimination (services/messages/record.py `reconcile`)."""
        params = self.build_params(account, message)
        try:
            rows = self.client(account).messages.list(
                to=params["to"], from_=params.get("from_"), limit=50
            )
        except TwilioRestException as exc:
            raise ProviderError(
                ErrorKind.AMBIGUOUS, f"lookup failed: {exc.msg}", http_status=exc.status
            ) from None
        except requests.exceptions.RequestException as exc:
            raise ProviderError(
                ErrorKind.AMBIGUOUS, f"lookup failed: {type(exc).__name__}"
            ) from None
        found = []
        for row in rows:
            if row.date_created is None or row.date_created < since:
                continue
            if "body" in params and (row.body or "") != params["body"]:
                continue
            if params.get("messaging_service_sid") and (
                row.messaging_service_sid != params["messaging_service_sid"]
            ):
                continue
            found.append(
                SendResult(
                    provider_message_id=row.sid,
                    native_status=row.status,
                    sender=params.get("from_"),
                    price=_decimal(row.price),
                    price_unit=row.price_unit,
                )
            )
        return found

    def fetch_status(self, account: AccountCredentials, sid: str) -> ProviderStatus:
        """`GET /Messages/{sid}.json`: status, error code and price of a sent message."""
        try:
            row = self.client(account).messages(sid).fetch()
        except (TwilioRestException, TwilioServiceException) as exc:
            raise ProviderError(
                ErrorKind.TRANSIENT, f"fetch failed: HTTP {exc.status}", http_status=exc.status
            ) from None
        except requests.exceptions.RequestException as exc:
            kind = ErrorKind.TRANSIENT
            raise ProviderError(kind, f"fetch failed: {type(exc).__name__}") from None
        return ProviderStatus(
            native_status=(row.status or "").lower(),
            error_code=str(row.error_code) if row.error_code else None,
            error_message=row.error_message,
            price=_decimal(row.price),
            price_unit=row.price_unit,
        )

    @staticmethod
    def build_params(account: AccountCredentials, message: OutboundMessage) -> dict:
        settings = account.settings
        whatsapp = message.channel == "whatsapp"
        prefix = "whatsapp:" if whatsapp else ""
        params: dict = {"to": prefix + message.to}
        sender = settings.get("whatsapp_from") if whatsapp else settings.get("sms_from")
        service = settings.get("messaging_service_sid")
        if message.from_kind == "number":  # senders: the row's chosen sender wins
            sender, service = message.from_address, None
        elif message.from_kind == "messaging_service":
            sender, service = None, message.from_address
        if sender:
            params["from_"] = sender if sender.startswith(prefix) else prefix + sender
        elif service:
            params["messaging_service_sid"] = service
        else:
            raise ProviderError(
                ErrorKind.PERMANENT,
                f"The Twilio account has no {message.channel} sender configured.",
                code="sender_not_configured",
            )
        if message.template:
            params["content_sid"] = message.template.get("content_sid")
            variables = message.template.get("content_variables") or {
                str(i): v for i, v in enumerate(message.template.get("variables") or [], 1)
            }
            if variables:
                params["content_variables"] = json.dumps(variables)
        elif message.body:
            params["body"] = message.body
        if message.media_urls:
            params["media_url"] = list(message.media_urls)
        if message.status_callback:
            params["status_callback"] = message.status_callback
        if message.expires_at is not None:  # the ttl's remaining seconds, at send time
            params["validity_period"] = validity_period(message.expires_at)
        return params

    @retry_blips
    def _create(self, account: AccountCredentials, params: dict):  # type: ignore[no-untyped-def]
        try:
            return self.client(account).messages.create(**params)
        except TwilioRestException as exc:
            kind = classify(exc.status, exc.code)
            raise ProviderError(
                kind,
                exc.msg or "Twilio error",
                code=str(exc.code) if exc.code else None,
                http_status=exc.status,
                retry_after=_retry_after(exc, self._http.last_headers()),
                opt_out=exc.code in OPT_OUT,
            ) from None
        except TwilioServiceException as exc:  # twilio 9.x, RFC 9457 problem details
            raise ProviderError(
                classify(exc.status, exc.code),
                exc.detail or exc.title or "Twilio error",
                code=str(exc.code) if exc.code else None,
                http_status=exc.status,
                retry_after=_retry_after(exc, self._http.last_headers()),
                opt_out=exc.code in OPT_OUT,
                details={"problem_type": exc.type} if exc.type else None,
            ) from None
        except requests.exceptions.ConnectTimeout as exc:
            raise ProviderError(ErrorKind.TRANSIENT, f"connect timeout: {exc}") from None
        except requests.exceptions.ConnectionError as exc:
            # A refused connection never carried the request; a dropped one may have.
            text = str(exc)
            sent = not any(s in text for s in ("NewConnectionError", "Connection refused"))
            kind = ErrorKind.AMBIGUOUS if sent else ErrorKind.TRANSIENT
            raise ProviderError(kind, f"connection error: {type(exc).__name__}") from None
        except requests.exceptions.Timeout:
            raise ProviderError(ErrorKind.AMBIGUOUS, "read timeout after sending") from None


def _retry_after(exc: Exception, headers: dict[str, str]) -> float | None:
    """Seconds the answer asked to wait: its `Retry-After` header (seconds), else a
    `retry_after` in the error's details."""
    header = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    details = getattr(exc, "details", None) or {}
    value: Any = header
    if value is None and isinstance(details, dict):
        value = details.get("retry_after")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _decimal(value: str | None) -> Decimal | None:
    if value in (None, ""):
        return None
    try:
        return abs(Decimal(value))
    except InvalidOperation:
        return None
