"""`/v1/contacts`: recipients, their opt-out flag and 24-hour window."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.auth import current_tenant, db, json_body, refuse_test_key, require_tenant
from api.openapi import answers
from services.policy.contacts import contact_to_dict, get_contact, update_contact, upsert_contact
from services.privacy.erasure import ErasureView, erase_contact

bp = Blueprint("contacts", __name__, url_prefix="/v1/contacts")


@bp.post("")
@require_tenant
def create():  # type: ignore[no-untyped-def]
    """Create a contact (or complete one an inbound message created).
    ---
    post:
      summary: Create a contact (or complete the one an inbound message created)
      requestBody:
        required: true
        content: {application/json: {schema: ContactSchema}}
      responses:
        201: {description: Created, content: {application/json: {schema: ContactView}}}
        200:
          description: Completed an existing contact
          content:
            application/json: {schema: ContactView}
        401: Unauthorized
        403: LiveKeyOnly
        409: Conflict
    """
    refuse_test_key("change a contact")  # contacts are shared: a test key reads them
    session = db()
    contact, created = upsert_contact(session, current_tenant().id, json_body())
    session.commit()
    return jsonify(contact_to_dict(contact)), 201 if created else 200


@bp.get("/<contact_id>")
@require_tenant
def show(contact_id: str):  # type: ignore[no-untyped-def]
    """One contact, with its opt-out flag and window.
    ---
    get:
      summary: A contact
      responses:
        200: {description: The contact, content: {application/json: {schema: ContactView}}}
        401: Unauthorized
        404: NotFound
    """
    return jsonify(contact_to_dict(get_contact(db(), current_tenant().id, contact_id)))


@bp.patch("/<contact_id>")
@require_tenant
def patch(contact_id: str):  # type: ignore[no-untyped-def]
    """Change a contact's fields.
    ---
    patch:
      summary: Change name, phone or opted_out
      requestBody:
        content: {application/json: {schema: ContactSchema}}
      responses:
        200: {description: Updated, content: {application/json: {schema: ContactView}}}
        401: Unauthorized
        403: LiveKeyOnly
        404: NotFound
        409: Conflict
    """
    refuse_test_key("change a contact")  # a test key must not undo a live opt-out
    session = db()
    contact = update_contact(session, current_tenant().id, contact_id, json_body())
    session.commit()
    return jsonify(contact_to_dict(contact))


@bp.delete("/<contact_id>")
@require_tenant
@answers(ErasureView, errors={401: "Unauthorized", 403: "LiveKeyOnly", 404: "NotFound"})
def erase(contact_id: str):  # type: ignore[no-untyped-def]
    """Erase the person this contact is: every row holding their number, name or texts."""
    refuse_test_key("erase a person")
    session = db()
    done = erase_contact(session, current_tenant().id, contact_id)
    session.commit()
    return jsonify(done.to_dict())
