"""`/v1/erasures`: a tenant erases a person by number or WhatsApp id (services/privacy/)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.auth import current_tenant, db, json_body, refuse_test_key, require_tenant
from api.openapi import answers
from services.privacy.erasure import ERASURE_BODY, ErasureView, erase_number, load_request

bp = Blueprint("privacy", __name__, url_prefix="/v1/erasures")


@bp.post("")
@require_tenant
@answers(ErasureView, body=ERASURE_BODY, errors={401: "Unauthorized", 403: "LiveKeyOnly"})
def create():  # type: ignore[no-untyped-def]
    """Erase a person: every row holding their number, name, texts or media."""
    refuse_test_key("erase a person")  # erasure deletes live data too
    number, _ = load_request(json_body())
    session = db()
    done = erase_number(session, number, current_tenant().id)
    session.commit()
    return jsonify(done.to_dict())
