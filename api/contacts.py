"""`/v1/contacts`: recipients, their opt-out flag and 24-hour window."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.auth import current_tenant, db, json_body, require_tenant
from services.contacts import contact_to_dict, get_contact, update_contact, upsert_contact

bp = Blueprint("contacts", __name__, url_prefix="/v1/contacts")


@bp.post("")
@require_tenant
def create():  # type: ignore[no-untyped-def]
    session = db()
    contact, created = upsert_contact(session, current_tenant().id, json_body())
    session.commit()
    return jsonify(contact_to_dict(contact)), 201 if created else 200


@bp.get("/<contact_id>")
@require_tenant
def show(contact_id: str):  # type: ignore[no-untyped-def]
    return jsonify(contact_to_dict(get_contact(db(), current_tenant().id, contact_id)))


@bp.patch("/<contact_id>")
@require_tenant
def patch(contact_id: str):  # type: ignore[no-untyped-def]
    session = db()
    contact = update_contact(session, current_tenant().id, contact_id, json_body())
    session.commit()
    return jsonify(contact_to_dict(contact))
