"""Contacts: a tenant's recipients, with their opt-out flag and 24-hour window."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from core.errors import Conflict, InvalidRequest, NotFound
from core.ids import iso
from core.shapes import Shape
from models import Contact, Message, update_message, utcnow
from services.content.phones import PHONE_FIELD, parse_e164
from services.content.schemas import load_object
from services.policy.consent import contact_for, fold_contacts, window_open


class ContactSchema(Schema):
    class Meta:
        unknown = RAISE

    id = fields.String(validate=validate.Length(min=1, max=128))  # the tenant's own id
    phone = fields.String(validate=validate.Length(max=64), metadata=PHONE_FIELD)
    name = fields.String(validate=validate.Length(max=200), allow_none=True)
    opted_out = fields.Boolean()


def _load(payload: Any, *, partial: bool) -> dict[str, Any]:
    data = load_object(ContactSchema(), payload, partial=partial, required="phone")
    if "phone" in data:
        try:
            data["phone"] = parse_e164(data["phone"])
        except ValueError as exc:
            raise InvalidRequest(
                "Not a valid phone number.", code="invalid_fields", fields={"phone": [str(exc)]}
            ) from None
    return data


class ContactView(Shape):
    """A contact as `/v1/contacts` answers it (`contact_to_dict`)."""

    id = fields.String(metadata={"description": "the tenant's own id, else Herald's"})
    herald_id = fields.String()
    phone = fields.String(
        allow_none=True, metadata={"description": "null: a WhatsApp user known by BSUID only"}
    )
    wa_user_id = fields.String(
        allow_none=True,
        metadata={
            "description": "WhatsApp: the person's business-scoped user id (BSUID), as Meta "
            "gave it; a send may use it as `to`",
            "example": "US.13491208655302741918",
        },
    )
    wa_username = fields.String(
        allow_none=True, metadata={"description": "WhatsApp: the person's username"}
    )
    name = fields.String(allow_none=True)
    opted_out = fields.Boolean()
    opted_out_at = fields.DateTime(allow_none=True)
    last_inbound_at = fields.DateTime(allow_none=True)
    window_open = fields.Boolean(metadata={"description": "WhatsApp's 24-hour window"})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


def contact_to_dict(contact: Contact) -> dict[str, Any]:
    return {
        "id": contact.external_id or contact.id,
        "herald_id": contact.id,
        "phone": contact.phone,
        "wa_user_id": contact.wa_user_id,
        "wa_username": contact.wa_username,
        "name": contact.name,
        "opted_out": contact.opted_out,
        "opted_out_at": iso(contact.opted_out_at),
        "last_inbound_at": iso(contact.last_inbound_at),
        "window_open": window_open(contact),
        "created_at": iso(contact.created_at),
        "updated_at": iso(contact.updated_at),
    }


def get_contact(session: Session, tenant_id: str, contact_id: str) -> Contact:
    contact = session.scalars(
        select(Contact).where(
            Contact.tenant_id == tenant_id,
            (Contact.external_id == contact_id) | (Contact.id == contact_id),
        )
    ).first()
    if contact is None:
        raise NotFound(f"No contact {contact_id!r}.")
    return contact


def upsert_contact(session: Session, tenant_id: str, payload: Any) -> tuple[Contact, bool]:
    """Create a contact, or complete the one an inbound message already created for
    this phone (also when it wrote from another form of the number: its WhatsApp id).
    Returns (contact, created)."""
    data = _load(payload, partial=False)
    contact = contact_for(session, tenant_id, data["phone"])
    created = contact is None
    if contact is None:
        contact = Contact(tenant_id=tenant_id, phone=data["phone"])
        session.add(contact)
    elif data.get("id") and contact.external_id not in (None, data["id"]):
        raise Conflict("This phone already belongs to another contact id.", code="contact_conflict")
    _apply(contact, data)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict("A contact with this id or phone exists.", code="contact_conflict") from None
    return contact, created


def update_contact(session: Session, tenant_id: str, contact_id: str, payload: Any) -> Contact:
    contact = get_contact(session, tenant_id, contact_id)
    _apply(contact, _load(payload, partial=True))
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict("A contact with this id or phone exists.", code="contact_conflict") from None
    return contact


def _apply(contact: Contact, data: dict[str, Any]) -> None:
    if "id" in data:
        contact.external_id = data["id"]
    if "phone" in data:
        contact.phone = data["phone"]
    if "name" in data:
        contact.name = data["name"]
    if "opted_out" in data and data["opted_out"] != contact.opted_out:
        contact.opted_out = data["opted_out"]
        contact.opted_out_at = utcnow() if data["opted_out"] else None


def remember_wa_id(session, message: Message, wa_id: str) -> None:  # type: ignore[no-untyped-def]
    """Meta reported another WhatsApp id than the number dialled (its send answer, or a
    status's `recipient_id`): keep it on the message and the contact, so a reply from it
    (its `from`) finds this contact."""
    update_message(session, message.id, wa_id=wa_id)
    contact = contact_for(session, message.tenant_id, message.to_number)
    if contact is not None and contact.wa_id != wa_id:
        contact.wa_id = wa_id


def remember_user_id(  # type: ignore[no-untyped-def]
    session, message: Message, user_id: str, username: str | None = None
) -> None:
    """Meta named the recipient's business-scoped user id (a status's
    `recipient_user_id`, or the `contacts` beside it): kept on the message and on the
    person's contact, so a later message from that BSUID alone (a username, no phone)
    finds the same person, their window and their opt-out."""
    values: dict[str, str] = {}
    if message.wa_user_id != user_id:
        values["wa_user_id"] = user_id
    if username and message.wa_username != username:
        values["wa_username"] = username[:64]
    if values:
        update_message(session, message.id, **values)
        for column, value in values.items():  # the next status of this batch sees them
            set_committed_value(message, column, value)
    contact = contact_for(session, message.tenant_id, message.to_number)
    if contact is None:
        return
    if contact.wa_user_id != user_id:
        holder = contact_for(session, message.tenant_id, user_id)
        if holder is None:
            contact.wa_user_id = user_id
        elif holder.phone is None:  # the same person, met first by BSUID alone
            contact = fold_contacts(session, contact, holder)
            contact.wa_user_id = user_id
    if username and contact.wa_username != username:
        contact.wa_username = username[:64]
