"""`/v1/usage`: what the tenant's messages counted and cost over a period."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api.auth import current_tenant, db, read_limited, require_tenant, test_mode
from services.content.schemas import load_object
from services.reporting.usage import UsageQuerySchema, period, usage

bp = Blueprint("usage", __name__, url_prefix="/v1/usage")
_query = UsageQuerySchema()


@bp.get("")
@require_tenant
@read_limited
def show():  # type: ignore[no-untyped-def]
    """Counts and cost of the tenant's outbound messages, grouped.
    ---
    get:
      summary: Message counts and cost over a period, grouped
      description: >-
        Outbound messages accepted in [from, to): how many, sent, delivered, read,
        failed and billable (Meta's `pricing.billable`), and the cost as the sum of the
        provider's prices per currency (Twilio reports a price; Meta does not: its
        billable messages are counted by `category`, and priced only as
        `estimated_cost` when HERALD_META_PRICES is set). A live key (or a token) counts
        live messages only; a test key, its test messages only (`test: true` in the
        answer), which are never priced or billable.
      parameters:
      - name: from
        in: query
        description: start, inclusive (YYYY-MM-DD, or ISO 8601 with offset); default `to` - 30 d
        schema: {type: string}
      - name: to
        in: query
        description: end, exclusive; default now
        schema: {type: string}
      - name: group_by
        in: query
        description: comma-separated dimensions among channel, provider, category, campaign, status
        schema: {type: string}
      responses:
        200: {description: Usage, content: {application/json: {schema: Usage}}}
        401: Unauthorized
        429: RateLimited
    """
    data = load_object(_query, request.args.to_dict())
    start, end = period(data)
    # A test key's usage is its test messages'; a live key's, the live ones'.
    return jsonify(usage(db(), current_tenant().id, start, end, data["group_by"], test_mode()))
