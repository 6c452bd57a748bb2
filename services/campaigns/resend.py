"""A campaign's failed rows resent in one call (services/messages/resend.py says what a
resend is): each as a message outside the campaign, which keeps one row per
recipient, in chunks through the group insert a batch uses; an opted-out person or a
row over the quota is counted, not resent, and may be resent by a later call."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from marshmallow import fields
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import HeraldError
from core.shapes import Shape
from models import Message, Tenant
from services.campaigns.campaigns import get_campaign
from services.messages.accept import Item, store
from services.messages.campaign_content import fill_campaign_content
from services.messages.resend import RESENDABLE, link, prepared

log = logging.getLogger(__name__)

CHUNK = 500


class CampaignResendView(Shape):
    """What `POST /v1/campaigns/{id}/resend` did (`resend_campaign`)."""

    campaign_id = fields.String()
    resent = fields.Integer(metadata={"description": "new messages, each with resend_of"})
    refused = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "rows not resent, by error code (opted_out, rate_limited…)"},
    )


def resend_campaign(
    session: Session, tenant: Tenant, campaign_id: str, test: bool | None = None
) -> dict[str, Any]:
    """Resend every failed or undelivered row of a campaign not resent yet; what was
    resent, and the refusals counted by code (an opted-out person is not resent).
    `test`: the caller's key's mode; a campaign of the other mode is not found (a test
    key never resends a live campaign's rows as live messages)."""
    campaign = get_campaign(session, tenant.id, campaign_id, test)
    resent, refused = 0, Counter[str]()
    after = ""
    while True:
        rows = list(
            session.scalars(
                select(Message)
                .where(
                    Message.campaign_id == campaign.id,
                    Message.tenant_id == tenant.id,
                    Message.status.in_(RESENDABLE),
                    Message.id > after,
                )
                .order_by(Message.id)
                .limit(CHUNK)
            )
        )
        if not rows:
            break
        after = rows[-1].id
        fill_campaign_content(session, rows)
        items: list[tuple[Message, Item]] = []
        for row in rows:
            if (row.options or {}).get("resent_as"):
                continue
            try:
                items.append((row, prepared(session, tenant, row)))
            except HeraldError as exc:
                refused[exc.code] += 1
        store(session, [item for _, item in items])
        for row, item in items:
            if item.error is not None:
                refused[item.error.code] += 1
            elif item.created:
                link(session, row, item)
                resent += 1
    log.info(
        "campaign resent id=%s tenant=%s resent=%d refused=%d",
        campaign.id,
        tenant.id,
        resent,
        sum(refused.values()),
    )
    return {"campaign_id": campaign.id, "resent": resent, "refused": dict(refused)}
