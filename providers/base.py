"""The interface every provider implements, and how its errors are classified.

Each provider module owns one error table mapping its codes onto an ErrorKind;
the delivery service decides what to do from the kind alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol


class ErrorKind(enum.Enum):
    PERMANENT = "permanent"  # will never succeed as sent: fail now, keep the code
    TRANSIENT = "transient"  # the provider did not take it: retry with backoff
    RATE_LIMITED = "rate_limited"  # not taken, come back after the hint
    AMBIGUOUS = "ambiguous"  # the request may have been taken (timeout, 5xx): settle first


class ProviderError(Exception):
    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        opt_out: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.http_status = http_status
        self.retry_after = retry_after
        self.opt_out = opt_out
        # What the provider said beyond the code, kept on the message's event for
        # support (Meta's error_subcode, error_data.details, fbtrace_id).
        self.details = details


@dataclass(frozen=True)
class AccountCredentials:
    """A provider account with its secrets decrypted, for one send or one verification."""

    id: str
    tenant_id: str
    provider: str
    external_id: str
    settings: dict[str, Any]
    secrets: dict[str, Any]


@dataclass(frozen=True)
class OutboundMessage:
    """What a provider needs to send one message; built by the delivery service."""

    herald_id: str
    channel: str
    to: str
    body: str | None = None
    media_urls: list[str] = field(default_factory=list)
    media_type: str | None = None
    media_id: str | None = None  # Meta's id of uploaded media (POST /v1/media)
    template: dict[str, Any] | None = None
    interactive: dict[str, Any] | None = None
    preview_url: bool = False
    status_callback: str | None = None
    # The sender chosen at accept time (services/tenancy/senders.py); None: the account's own.
    from_kind: str | None = None  # number | messaging_service | phone_number_id
    from_address: str | None = None
    from_number: str | None = None
    # Conversations (Meta; services/content/conversations.py): the replied-to wamid, and the
    # reaction, location, contacts, sticker or a document's file name.
    context_message_id: str | None = None
    reaction: dict[str, Any] | None = None
    location: dict[str, Any] | None = None
    contacts: list[dict[str, Any]] | None = None
    sticker: dict[str, Any] | None = None
    filename: str | None = None
    expires_at: datetime | None = None  # the message's ttl (Twilio: ValidityPeriod)


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str
    native_status: str
    sender: str | None = None
    price: Decimal | None = None
    price_unit: str | None = None
    # The recipient's id as the provider answered it (Meta `contacts[0].wa_id`, E.164).
    recipient_id: str | None = None


@dataclass(frozen=True)
class ProviderStatus:
    """A message's state as the provider's own resource tells it (Twilio's fetch): the
    only place Twilio reports the price, which its status callbacks never carry."""

    native_status: str
    error_code: str | None = None
    error_message: str | None = None
    price: Decimal | None = None
    price_unit: str | None = None


class Provider(Protocol):
    name: str

    def send(self, account: AccountCredentials, message: OutboundMessage) -> SendResult:
        """Send once. Raises ProviderError classified by the provider's error table."""
        ...

    def find_sent(
        self, account: AccountCredentials, message: OutboundMessage, since: datetime
    ) -> list[SendResult]:
        """Sends the provider holds that may be this message (newest first), for an
        attempt whose answer was lost; empty when there are none or it cannot tell."""
        ...
