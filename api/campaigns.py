"""`/v1/campaigns`: create (JSON recipients or a CSV upload), progress, pause/resume/cancel."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from api.auth import current_tenant, db, json_body, read_limited, require_tenant, test_mode
from core.errors import InvalidRequest
from services.campaigns.campaigns import (
    campaign_to_dict,
    campaigns_to_dicts,
    check_recipient_count,
    control_campaign,
    create_campaign,
    csv_recipients,
    get_campaign,
    list_campaigns,
    load_campaign_query,
    load_campaign_request,
)
from services.campaigns.resend import resend_campaign

bp = Blueprint("campaigns", __name__, url_prefix="/v1/campaigns")
MAX_UPLOAD = 200 * 1024 * 1024  # a CSV of any realistic size; it is streamed, not loaded


@bp.post("")
@require_tenant
def create():  # type: ignore[no-untyped-def]
    """Create a campaign from JSON recipients or a CSV upload.
    ---
    post:
      summary: Create a campaign
      description: >-
        JSON recipients, or a CSV upload (multipart: `campaign` = the JSON fields,
        `file` = the CSV)
      requestBody:
        required: true
        content:
          application/json: {schema: CampaignSchema}
          multipart/form-data:
            schema:
              type: object
              properties:
                campaign: {type: string, description: the JSON fields}
                file: {type: string, format: binary}
      responses:
        201: {description: Created, content: {application/json: {schema: Campaign}}}
        400: Invalid
        401: Unauthorized
        404: NotFound
        422: Refused
        429: RateLimited
    """
    session = db()
    if request.mimetype == "multipart/form-data":
        request.max_content_length = MAX_UPLOAD
        upload = request.files.get("file")
        if upload is None:
            raise InvalidRequest("Upload the recipients as a CSV in the 'file' field.")
        try:
            fields = current_app.json.loads(request.form.get("campaign") or "{}")
        except ValueError as exc:  # api/inputs.py: too deep, NUL, lone surrogate, NaN…
            raise InvalidRequest(
                f"'campaign' must be JSON: {exc}.", code="malformed_json"
            ) from None
        data = load_campaign_request(fields)
        recipients = csv_recipients(upload.stream)
    else:
        data = load_campaign_request(json_body())
        listed = data.pop("recipients", None) or []
        check_recipient_count(len(listed))  # over the cap: refused before anything is written
        recipients = iter(listed)
    campaign = create_campaign(session, current_tenant(), data, recipients, test_mode())
    session.commit()
    return jsonify(campaign_to_dict(session, campaign)), 201


@bp.get("")
@require_tenant
@read_limited
def index():  # type: ignore[no-untyped-def]
    """A page of the tenant's campaigns.
    ---
    get:
      summary: A page of campaigns with their progress, newest first
      parameters:
      - {in: query, schema: CampaignQuerySchema}
      responses:
        200: {description: A page, content: {application/json: {schema: CampaignPage}}}
        400: Invalid
        401: Unauthorized
        429: RateLimited
    """
    session = db()
    query = load_campaign_query(request.args)
    rows, cursor = list_campaigns(session, current_tenant().id, **query, test=test_mode())
    return jsonify({"data": campaigns_to_dicts(session, rows), "next_cursor": cursor})


@bp.get("/<campaign_id>")
@require_tenant
@read_limited
def show(campaign_id: str):  # type: ignore[no-untyped-def]
    """A campaign's progress.
    ---
    get:
      summary: A campaign's progress and per-status counts
      responses:
        200: {description: Progress, content: {application/json: {schema: Campaign}}}
        401: Unauthorized
        404: NotFound
        429: RateLimited
    """
    session = db()
    return jsonify(
        campaign_to_dict(
            session, get_campaign(session, current_tenant().id, campaign_id, test_mode())
        )
    )


@bp.post("/<campaign_id>/resend")
@require_tenant
def resend(campaign_id: str):  # type: ignore[no-untyped-def]
    """Resend a campaign's failed and undelivered rows.
    ---
    post:
      summary: Resend every failed or undelivered row of a campaign not resent yet
      description: >-
        Each row becomes a new message outside the campaign (`resend_of` names the row,
        whose `resent_as` names it), through the checks of a new message: an opted-out
        person, or a row over the quota, is counted under `refused` and not resent (a
        later call takes what is left). Calling again resends nothing twice.
      responses:
        200: {description: Done, content: {application/json: {schema: CampaignResend}}}
        401: Unauthorized
        404: NotFound
    """
    session = db()
    answer = resend_campaign(session, current_tenant(), campaign_id, test_mode())
    session.commit()
    return jsonify(answer)


@bp.post("/<campaign_id>/<action>")
@require_tenant
def control(campaign_id: str, action: str):  # type: ignore[no-untyped-def]
    """Pause, resume or cancel a campaign.
    ---
    post:
      summary: Pause, resume or cancel a campaign
      parameters:
      - {name: campaign_id, in: path, required: true, schema: {type: string}}
      - name: action
        in: path
        required: true
        schema: {type: string, enum: [pause, resume, cancel]}
      responses:
        200: {description: Done, content: {application/json: {schema: Campaign}}}
        401: Unauthorized
        404: NotFound
        409: Conflict
    """
    if action not in ("pause", "resume", "cancel"):
        raise InvalidRequest("Action must be pause, resume or cancel.", code="invalid_action")
    session = db()
    campaign = control_campaign(session, current_tenant().id, campaign_id, action, test_mode())
    session.commit()
    return jsonify(campaign_to_dict(session, campaign))
