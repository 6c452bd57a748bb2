"""`/v1/templates`: the tenant's WhatsApp templates as last synced, and a sync on demand."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api.auth import current_tenant, db, refuse_test_key, require_tenant
from services.content.template_sync import sync_tenant
from services.content.templates import list_templates, load_template_query, template_to_dict

bp = Blueprint("templates", __name__, url_prefix="/v1/templates")


@bp.get("")
@require_tenant
def index():  # type: ignore[no-untyped-def]
    """A page of the tenant's templates.
    ---
    get:
      summary: A page of templates (Meta and Twilio Content), newest first
      description: >-
        What the last sync and Meta's status webhooks left; templates gone at the
        provider are kept with `deleted: true` (shown with `include_deleted=true`).
      parameters:
      - {in: query, schema: TemplateQuerySchema}
      responses:
        200: {description: A page, content: {application/json: {schema: TemplatePageSchema}}}
        401: Unauthorized
    """
    query = load_template_query(request.args)
    rows, cursor = list_templates(db(), current_tenant().id, query)
    return jsonify({"data": [template_to_dict(r) for r in rows], "next_cursor": cursor})


@bp.post("/sync")
@require_tenant
def sync():  # type: ignore[no-untyped-def]
    """Sync the tenant's templates from its providers now.
    ---
    post:
      summary: Fetch the tenant's templates from Meta and Twilio Content now
      description: >-
        Every account (a Meta account needs its `waba_id` setting); each result says
        what was fetched, created, updated and marked deleted, or the provider's error.
      parameters:
      - {name: provider, in: query, schema: {type: string, enum: [meta, twilio]}}
      responses:
        200: {description: Done, content: {application/json: {schema: SyncAnswerSchema}}}
        401: Unauthorized
        403: LiveKeyOnly
    """
    refuse_test_key("sync templates")  # Meta and Twilio are asked with the real credentials
    query = load_template_query({k: v for k, v in request.args.items() if k == "provider"})
    session = db()
    results = sync_tenant(session, current_tenant().id, query.get("provider"))
    session.commit()
    return jsonify({"accounts": results})
