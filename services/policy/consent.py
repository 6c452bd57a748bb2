"""Rules a message must pass before it is queued: opt-out and WhatsApp's 24-hour window.

Refusals are 422s with a code the caller can act on, decided here
once for the API, the Celery task and the seeds' endpoints alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import PolicyRefused
from models import Contact, utcnow
from models.fast import Statement, aware_utc
from services.content.phones import is_bsuid, whatsapp_forms
from services.policy.keywords import START, STOP, keyword_of
from services.privacy.suppression import hashes_of, lift

WINDOW = timedelta(hours=24)


def contact_for(session: Session, tenant_id: str, phone: str) -> Contact | None:
    """The contact for this number: its own row, else the one whose WhatsApp id it is or
    that is the same WhatsApp user in another form (Brazil's ninth digit, Mexico's 521,
    Argentina's 549), so a reply from the `wa_id` finds the contact Herald dialled.
    `phone` may be a business-scoped user id (BSUID): the contact that holds it."""
    if is_bsuid(phone):
        return session.scalars(
            select(Contact).where(Contact.tenant_id == tenant_id, Contact.wa_user_id == phone)
        ).first()
    forms = whatsapp_forms(phone)
    found = session.scalars(
        select(Contact).where(
            Contact.tenant_id == tenant_id,
            Contact.phone.in_(forms) | Contact.wa_id.in_(forms),
        )
    ).all()
    if not found:
        return None

    return min(found, key=lambda contact: _rank(contact, phone))


def fold_contacts(session: Session, keep: Contact, gone: Contact) -> Contact:
    """One person found as two contacts (a BSUID-only contact from a username user's
    message, and the phone contact Herald knew): `gone` is folded into `keep` and
    deleted. An opt-out on either stays; the later inbound time is kept."""
    if gone is keep:
        return keep
    if gone.opted_out and not keep.opted_out:
        keep.opted_out, keep.opted_out_at = True, gone.opted_out_at
    if gone.last_inbound_at and (
        keep.last_inbound_at is None or keep.last_inbound_at < gone.last_inbound_at
    ):
        keep.last_inbound_at = gone.last_inbound_at
    keep.name = keep.name or gone.name
    keep.external_id = keep.external_id or gone.external_id
    taken = {
        "phone": gone.phone,
        "wa_id": gone.wa_id,
        "wa_user_id": gone.wa_user_id,
        "wa_username": gone.wa_username,
    }
    session.delete(gone)
    session.flush()  # its unique phone / BSUID / external id are free before keep takes them
    for column, value in taken.items():
        if value is not None and getattr(keep, column) is None:
            setattr(keep, column, value)
    return keep


def person_for(
    session: Session, tenant_id: str, *, phone: str | None, user_id: str | None
) -> Contact | None:
    """The one contact of a WhatsApp user named by a phone number (or WhatsApp id) and/or
    a business-scoped user id (BSUID): a person is one contact whichever arrives. Found
    as two (a username user's BSUID contact, then a message with both), they are folded
    into the phone's contact."""
    by_id = contact_for(session, tenant_id, user_id) if user_id else None
    by_phone = contact_for(session, tenant_id, phone) if phone else None
    if by_id is None or by_phone is None or by_id is by_phone:
        return by_id or by_phone
    if by_phone.wa_user_id is None or by_id.phone is None:
        return fold_contacts(session, by_phone, by_id)
    return by_id  # two people's ids: the BSUID names this person now


def window_open(contact: Any, now: datetime | None = None) -> bool:
    """Whether free-form WhatsApp may be sent: the contact wrote within 24 hours."""
    if contact is None or contact.last_inbound_at is None:
        return False
    return (now or utcnow()) - contact.last_inbound_at < WINDOW


class PolicyContact(NamedTuple):
    """What the send policy reads of a contact: a plain row, not an ORM object."""

    id: str
    phone: str | None
    wa_id: str | None
    opted_out: bool
    last_inbound_at: datetime | None
    wa_user_id: str | None = None


# One text for any number of recipients (`= ANY(array)`, not an IN list of as many
# parameters): psycopg prepares it once per connection, and the index on
# (tenant, phone) serves it. Run on the session's psycopg connection (models/fast.py):
# through SQLAlchemy this one SELECT cost more CPU than the rest of the accept path.
# The second half: the tenant's suppressions (an erased person who had opted out, kept
# as keyed hashes: services/privacy/suppression.py) among the numbers' hashes, in the
# same round trip; such a row has no id and its hash in `phone`.
# One arm per identifier (phone, WhatsApp id, BSUID), each a probe of its own
# (tenant_id, …) index. Folded into one arm with OR, a planner without fresh statistics
# (PostgreSQL 18 among them) read every contact of the tenant through
# ix_contacts_tenant_id instead (tests/unit/test_statement_plans.py). A contact found by
# two arms comes back twice; the caller keys contacts by id.
_POLICY_SELECT = Statement(
    "SELECT tenant_id, id, phone, wa_id, opted_out, last_inbound_at, wa_user_id FROM contacts"
    " WHERE tenant_id = :tenant AND phone = ANY(CAST(:numbers AS varchar[]))"
    " UNION ALL"
    " SELECT tenant_id, id, phone, wa_id, opted_out, last_inbound_at, wa_user_id FROM contacts"
    " WHERE tenant_id = :tenant AND wa_id = ANY(CAST(:numbers AS varchar[]))"
    " UNION ALL"
    " SELECT tenant_id, id, phone, wa_id, opted_out, last_inbound_at, wa_user_id FROM contacts"
    " WHERE tenant_id = :tenant AND wa_user_id = ANY(CAST(:numbers AS varchar[]))"
    " UNION ALL"
    " SELECT tenant_id, NULL, number_hash, NULL, true, NULL, NULL FROM suppressions"
    " WHERE tenant_id = :tenant AND number_hash = ANY(CAST(:hashes AS varchar[]))"
)


def _rank(contact: Any, phone: str) -> tuple[int, str]:
    exact = (
        0
        if contact.phone == phone or contact.wa_user_id == phone
        else 1
        if contact.wa_id == phone
        else 2
    )
    return exact, contact.id


def policy_contacts(
    session: Session, wanted: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], PolicyContact | None]:
    """`contact_for` for many (tenant id, phone) pairs in one SELECT: what a group of
    messages needs for its opt-out and 24-hour window checks."""
    pairs = set(wanted)
    if not pairs:
        return {}
    forms = {pair: whatsapp_forms(pair[1]) for pair in pairs}
    per_tenant: dict[str, set[str]] = {}
    for (tenant, _), fs in forms.items():
        per_tenant.setdefault(tenant, set()).update(fs)
    session.flush()  # pending contacts first, as SQLAlchemy's autoflush would
    rows = []
    hashed: dict[str, dict[str, str]] = {}
    for tenant, numbers in per_tenant.items():  # one tenant per request, nearly always
        hashed[tenant] = hashes_of(tenant, numbers)
        params = {"tenant": tenant, "numbers": sorted(numbers), "hashes": sorted(hashed[tenant])}
        rows += _POLICY_SELECT.rows(session, params)
    by_form: dict[tuple[str, str], list[PolicyContact]] = {}
    suppressed: set[tuple[str, str]] = set()
    for row in rows:
        if row.id is None:  # a suppression: its hash's number form
            suppressed.add((row.tenant_id, hashed[row.tenant_id][row.phone]))
            continue
        contact = PolicyContact(
            row.id,
            row.phone,
            row.wa_id,
            row.opted_out,
            aware_utc(row.last_inbound_at),
            row.wa_user_id,
        )
        for number in {contact.phone, contact.wa_id, contact.wa_user_id} - {None}:
            found_here = by_form.setdefault((row.tenant_id, number), [])  # type: ignore[arg-type]
            if contact not in found_here:  # found by both arms
                found_here.append(contact)
    found: dict[tuple[str, str], PolicyContact | None] = {}
    for (tenant, phone), fs in forms.items():
        candidates = {c.id: c for form in fs for c in by_form.get((tenant, form), [])}
        contact = min(candidates.values(), key=lambda c: _rank(c, phone)) if candidates else None
        if any((tenant, form) in suppressed for form in fs):
            # Erased after opting out: refused as an opted-out contact would be.
            contact = (
                contact._replace(opted_out=True)
                if contact is not None
                else PolicyContact("", phone, None, True, None)
            )
        found[(tenant, phone)] = contact
    return found


def policy_refusal(
    contact: Any, *, channel: str, free_form: bool, now: datetime | None = None
) -> PolicyRefused | None:
    """Why this message must not be queued to this contact (None: it may be)."""
    if contact is not None and contact.opted_out:
        return PolicyRefused("The recipient opted out of messages.", code="opted_out")
    if channel == "whatsapp" and free_form and not window_open(contact, now):
        return PolicyRefused(
            "The recipient has not written in the last 24 hours: WhatsApp allows only "
            "template messages outside that window.",
            code="window_closed",
        )
    return None


def check_send_policy(
    session: Session, tenant_id: str, *, channel: str, to: str, free_form: bool
) -> None:
    """Raise PolicyRefused if this message must not be queued."""
    contact = policy_contacts(session, [(tenant_id, to)])[(tenant_id, to)]
    refusal = policy_refusal(contact, channel=channel, free_form=free_form)
    if refusal is not None:
        raise refusal


def apply_keyword(
    contact: Contact, body: str | None, at: datetime, extra: dict[str, Any] | None = None
) -> str | None:
    """Apply a STOP/START keyword (services/policy/keywords.py; `extra`: the tenant's own
    words) from an inbound message; returns what changed."""
    found = keyword_of(body, extra)
    kind = found[0] if found else None
    if kind == STOP and not contact.opted_out:
        contact.opted_out, contact.opted_out_at = True, at
        return "opted_out"
    if kind == START and contact.opted_out:
        contact.opted_out, contact.opted_out_at = False, None
        return "opted_in"
    return None


def apply_inbound_keyword(
    session: Session,
    tenant_id: str,
    phone: str,
    contact: Contact,
    body: str | None,
    at: datetime,
    extra: dict[str, Any] | None = None,
) -> str | None:
    """`apply_keyword` for an inbound message (`extra`: the tenant's own words), and a
    START also lifts the suppression an erasure left for this number
    (services/privacy/suppression.py): the person asked to hear from the tenant again."""
    changed = apply_keyword(contact, body, at, extra)
    found = keyword_of(body, extra)
    if found and found[0] == START and lift(session, tenant_id, phone) and changed is None:
        changed = "opted_in"
    return changed


def mark_opted_out(session, tenant_id: str, phone: str) -> None:  # type: ignore[no-untyped-def]
    """The provider says this recipient opted out: remember it on the contact."""
    contact = contact_for(session, tenant_id, phone)  # also its other WhatsApp form, a BSUID
    if contact is None:
        contact = (
            Contact(tenant_id=tenant_id, wa_user_id=phone)
            if is_bsuid(phone)
            else Contact(tenant_id=tenant_id, phone=phone)
        )
        session.add(contact)
    contact.opted_out = True
    contact.opted_out_at = utcnow()
