"""Senders administered: listed, added (each address owned by one tenant per provider),
updated, removed, and one made the default of its provider and channel."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.errors import Conflict, InvalidRequest
from core.ids import iso
from core.shapes import Shape
from models import ProviderAccount, Sender
from services.content.inputs import StrictBoolean, StrictFloat
from services.content.phones import normalize_e164
from services.content.schemas import (
    MESSAGING_SERVICE,
    PHONE_NUMBER_ID,
    load_object,
)
from services.tenancy.admin import get_tenant
from services.tenancy.owned import get_owned, list_owned
from services.tenancy.senders import KINDS, PROVIDER_CHANNELS, PROVIDER_KINDS

# ---------------------------------------------------------------- administration


class SenderUpdateSchema(Schema):
    """What a sender's update may change."""

    class Meta:
        unknown = RAISE

    channels = fields.List(
        fields.String(validate=validate.OneOf(("sms", "whatsapp"))),
        validate=validate.Length(min=1, max=2),
    )
    mps = StrictFloat(allow_none=True, validate=validate.Range(min=0.01, max=10000))
    is_default = StrictBoolean()
    label = fields.String(allow_none=True, validate=validate.Length(max=200))
    priority = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(min=1, max=100),
        metadata={
            "description": "provider failover: the tenant's senders of a channel with a"
            " priority take messages that name no sender, the lowest healthy one first"
        },
    )


class SenderSchema(SenderUpdateSchema):
    """A sender to add (`account_id` may be left out when the tenant has one account of
    the provider). `address`: an E.164 number, a Messaging Service SID, a phone number id."""

    provider = fields.String(required=True, validate=validate.OneOf(tuple(PROVIDER_KINDS)))
    kind = fields.String(validate=validate.OneOf(KINDS))
    address = fields.String(required=True, validate=validate.Length(min=1, max=64))
    account_id = fields.String(validate=validate.Length(min=1, max=32))
    number = fields.String(validate=validate.Length(min=1, max=32))

    @validates_schema
    def _address(self, data: dict[str, Any], partial: Any = None, **_: Any) -> None:
        if partial:
            return
        provider = data.get("provider")
        address = str(data.get("address", "")).strip()
        kind = data.get("kind") or _guess_kind(provider, address)
        errors: dict[str, list[str]] = {}
        if kind not in PROVIDER_KINDS.get(provider or "", ()):
            errors["kind"] = [f"{provider} senders are {' or '.join(PROVIDER_KINDS[provider])}."]
        elif kind == "number" and normalize_e164(address.removeprefix("whatsapp:")) is None:
            errors["address"] = ["Not a valid E.164 number."]
        elif kind == "messaging_service" and not MESSAGING_SERVICE.fullmatch(address):
            errors["address"] = ["A Messaging Service SID is MG followed by 32 hex digits."]
        elif kind == "phone_number_id" and not PHONE_NUMBER_ID.fullmatch(address):
            errors["address"] = ["A Meta phone number id is 5 to 20 digits."]
        if data.get("number") is not None and normalize_e164(data["number"]) is None:
            errors["number"] = ["Not a valid E.164 number."]
        for channel in data.get("channels") or ():
            if channel not in PROVIDER_CHANNELS.get(provider or "", ()):
                errors["channels"] = [f"{provider} does not serve {channel}."]
        if errors:
            raise ValidationError(errors)


def _guess_kind(provider: str | None, address: str) -> str | None:
    if provider == "meta":
        return "phone_number_id"
    if provider == "twilio":
        return "messaging_service" if address.startswith("MG") else "number"
    return None


class SenderView(Shape):
    """A sender (`sender_to_dict`)."""

    id = fields.String()
    tenant_id = fields.String()
    account_id = fields.String()
    provider = fields.String()
    kind = fields.String(metadata={"description": "number, messaging_service, phone_number_id"})
    address = fields.String()
    number = fields.String(allow_none=True)
    channels = fields.List(fields.String())
    mps = fields.Float(allow_none=True, metadata={"description": "messages per second"})
    is_default = fields.Boolean()
    label = fields.String(allow_none=True)
    priority = fields.Integer(
        allow_none=True, metadata={"description": "provider failover order; null: none"}
    )
    created_at = fields.DateTime()


def sender_to_dict(sender: Sender) -> dict[str, Any]:
    return {
        "id": sender.id,
        "tenant_id": sender.tenant_id,
        "account_id": sender.provider_account_id,
        "provider": sender.provider,
        "kind": sender.kind,
        "address": sender.address,
        "number": sender.number,
        "channels": list(sender.channels or []),
        "mps": float(sender.mps) if sender.mps is not None else None,
        "is_default": bool(sender.is_default),
        "label": sender.label,
        "priority": sender.priority,
        "created_at": iso(sender.created_at),
    }


def list_senders(session: Session, tenant_id: str) -> list[Sender]:
    get_tenant(session, tenant_id)
    return list_owned(session, Sender, tenant_id)


def get_sender(session: Session, tenant_id: str, sender_id: str) -> Sender:
    return get_owned(
        session, Sender, tenant_id, sender_id, f"No sender {sender_id!r} on this tenant."
    )


def _account_for(
    session: Session, tenant_id: str, provider: str, account_id: str | None
) -> ProviderAccount:
    query = select(ProviderAccount).where(
        ProviderAccount.tenant_id == tenant_id, ProviderAccount.provider == provider
    )
    if account_id:
        query = query.where(ProviderAccount.id == account_id)
    accounts = list(session.scalars(query.order_by(ProviderAccount.created_at)))
    if not accounts:
        name = f"account {account_id!r}" if account_id else "account"
        raise InvalidRequest(
            f"This tenant has no {provider} {name}.",
            code="invalid_fields",
            fields={"account_id": [f"No {provider} {name} on this tenant."]},
        )
    if len(accounts) > 1:
        raise InvalidRequest(
            f"This tenant has several {provider} accounts: give account_id.",
            code="invalid_fields",
            fields={"account_id": ["Required when the tenant has several accounts."]},
        )
    return accounts[0]


def _clear_other_defaults(session: Session, sender: Sender) -> None:
    """One default per tenant, provider and channel: the new default takes its channels."""
    for other in session.scalars(
        select(Sender).where(
            Sender.tenant_id == sender.tenant_id,
            Sender.provider == sender.provider,
            Sender.id != sender.id,
            Sender.is_default.is_(True),
        )
    ):
        if set(other.channels or ()) & set(sender.channels or ()):
            other.is_default = False


def add_sender(session: Session, tenant_id: str, payload: Any) -> Sender:
    """Add a validated sender to one of the tenant's provider accounts. An address
    another sender already holds (this tenant's or another's) is a 409: inbound to it
    must route to one tenant."""
    get_tenant(session, tenant_id)
    data = load_object(SenderSchema(), payload)
    provider = data["provider"]
    account = _account_for(session, tenant_id, provider, data.get("account_id"))
    address = data["address"].strip()
    kind = data.get("kind") or _guess_kind(provider, address)
    number = data.get("number")
    if kind == "number":
        address = normalize_e164(address.removeprefix("whatsapp:")) or address
        number = address
    elif kind == "phone_number_id" and not number:
        display = (account.settings or {}).get("display_phone_number")
        same = address == account.external_id
        number = normalize_e164(display) if same and isinstance(display, str) else None
    number = normalize_e164(number) if number else None
    channels = data.get("channels") or list(PROVIDER_CHANNELS[provider])
    if kind == "number" and "channels" not in data:
        channels = ["sms"]  # a number is on WhatsApp only once registered there: say so
    taken = session.scalar(
        select(Sender.tenant_id).where(Sender.provider == provider, Sender.address == address)
    )
    if taken is not None:
        raise Conflict(
            f"The {provider} sender {address} is already registered"
            + (" on this tenant." if taken == tenant_id else " on another tenant."),
            code="sender_exists",
        )
    sender = Sender(
        tenant_id=tenant_id,
        provider_account_id=account.id,
        provider=provider,
        kind=kind,
        address=address,
        number=number,
        channels=channels,
        mps=Decimal(str(data["mps"])) if data.get("mps") else None,
        is_default=bool(data.get("is_default")),
        label=data.get("label"),
        priority=data.get("priority"),
    )
    try:
        with session.begin_nested():
            session.add(sender)
            session.flush()
    except IntegrityError:
        raise Conflict(
            f"The {provider} sender {address} is already registered.", code="sender_exists"
        ) from None
    if sender.is_default:
        _clear_other_defaults(session, sender)
    session.flush()
    return sender


def update_sender(session: Session, tenant_id: str, sender_id: str, payload: Any) -> Sender:
    """Change channels, rate, label or default (the address is the sender: add another)."""
    sender = get_sender(session, tenant_id, sender_id)
    data = load_object(SenderUpdateSchema(), payload)
    if "channels" in data:
        wrong = [c for c in data["channels"] if c not in PROVIDER_CHANNELS[sender.provider]]
        if wrong:
            raise InvalidRequest(
                f"{sender.provider} does not serve {wrong[0]}.",
                code="invalid_fields",
                fields={"channels": [f"{sender.provider} does not serve {wrong[0]}."]},
            )
        sender.channels = list(dict.fromkeys(data["channels"]))
    if "mps" in data:
        sender.mps = Decimal(str(data["mps"])) if data["mps"] else None
    if "label" in data:
        sender.label = data["label"]
    if "priority" in data:
        sender.priority = data["priority"]
    if "is_default" in data:
        sender.is_default = data["is_default"]
    session.flush()
    if sender.is_default:
        _clear_other_defaults(session, sender)
        session.flush()
    return sender


def remove_sender(session: Session, tenant_id: str, sender_id: str) -> None:
    """Remove a sender. Messages already accepted from it keep it (their row holds the
    address) and still go out from it; new messages can no longer name it."""
    sender = get_sender(session, tenant_id, sender_id)
    session.delete(sender)
    session.flush()


def set_default(session: Session, tenant_id: str, sender_id: str) -> Sender:
    return update_sender(session, tenant_id, sender_id, {"is_default": True})
