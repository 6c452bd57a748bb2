"""Rules a message must pass before it is queued: opt-out and WhatsApp's 24-hour window.

Refusals are 422s with a code the caller can act on, decided here
once for the API, the Celery task and the seeds' endpoints alike.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Contact, utcnow
from services.errors import PolicyRefused
from services.phones import whatsapp_forms

WINDOW = timedelta(hours=24)
# Keywords carriers and WhatsApp users send to stop or resume messages; matched on
# the whole message, case-insensitively, like Twilio's own opt-out handling.
STOP_WORDS = frozenset({"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})


def contact_for(session: Session, tenant_id: str, phone: str) -> Contact | None:
    """The contact for this number: its own row, else the one whose WhatsApp id it is or
    that is the same WhatsApp user in another form (Brazil's ninth digit, Mexico's 521,
    Argentina's 549), so a reply from the `wa_id` finds the contact Herald dialled."""
    forms = whatsapp_forms(phone)
    found = session.scalars(
        select(Contact).where(
            Contact.tenant_id == tenant_id,
            Contact.phone.in_(forms) | Contact.wa_id.in_(forms),
        )
    ).all()
    if not found:
        return None

    def rank(contact: Contact) -> tuple[int, str]:
        exact = 0 if contact.phone == phone else 1 if contact.wa_id == phone else 2
        return exact, contact.id

    return min(found, key=rank)


def window_open(contact: Contact | None, now: datetime | None = None) -> bool:
    """Whether free-form WhatsApp may be sent: the contact wrote within 24 hours."""
    if contact is None or contact.last_inbound_at is None:
        return False
    return (now or utcnow()) - contact.last_inbound_at < WINDOW


def check_send_policy(
    session: Session, tenant_id: str, *, channel: str, to: str, free_form: bool
) -> None:
    """Raise PolicyRefused if this message must not be queued."""
    contact = contact_for(session, tenant_id, to)
    if contact is not None and contact.opted_out:
        raise PolicyRefused("The recipient opted out of messages.", code="opted_out")
    if channel == "whatsapp" and free_form and not window_open(contact):
        raise PolicyRefused(
            "The recipient has not written in the last 24 hours: WhatsApp allows only "
            "template messages outside that window.",
            code="window_closed",
        )


def apply_keyword(contact: Contact, body: str | None, at: datetime) -> str | None:
    """Apply a STOP/START keyword from an inbound message; returns what changed."""
    word = " ".join((body or "").strip().upper().split())
    if word in STOP_WORDS and not contact.opted_out:
        contact.opted_out, contact.opted_out_at = True, at
        return "opted_out"
    if word in START_WORDS and contact.opted_out:
        contact.opted_out, contact.opted_out_at = False, None
        return "opted_in"
    return None
