"""The sweeper's reads: rows whose doorbell may have been lost, and scheduled rows now
due."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update

from core.config import get_settings
from models import (
    Message,
    session_scope,
    utcnow,
)
from services.messages.status import apply_status

log = logging.getLogger(__name__)


def due_for_sweep(limit: int = 500) -> list[tuple[str, str]]:
    """Rows whose doorbell may have been lost: `queued` untouched for a while, or
    `sending` with an expired lease, and not parked until later. Re-enqueueing is
    safe: the claim dedups."""
    settings = get_settings()
    now = utcnow()
    stale = now - timedelta(seconds=settings.sweep_after_seconds)
    with session_scope() as session:
        rows = session.execute(
            select(Message.id, Message.campaign_id)
            .where(
                Message.direction == "outbound",
                or_(
                    and_(Message.status == "queued", Message.updated_at < stale),
                    and_(Message.status == "sending", Message.lease_until < now),
                ),
                # A parked row is the beat's until its due time (then, if the beat is
                # down, this sweeper's again).
                or_(Message.not_before.is_(None), Message.not_before <= now),
            )
            .order_by(Message.id)
            .limit(limit)
        ).all()
        ids = [r[0] for r in rows]
        if ids:
            session.execute(
                update(Message)
                .where(Message.id.in_(ids), Message.status == "queued")
                .values(updated_at=now)
                .execution_options(synchronize_session=False)
            )
        return [(r[0], r[1]) for r in rows]


def release_scheduled(limit: int = 1000, now: datetime | None = None) -> list[str]:
    """Move `scheduled` messages whose time has come (by `now`, default the present) to
    `queued`; returns their ids. Tests pass `now` to set the time instead of sleeping."""
    now = now or utcnow()
    with session_scope() as session:
        ids = list(
            session.scalars(
                select(Message.id)
                .where(Message.status == "scheduled", Message.send_at <= now)
                .order_by(Message.send_at)
                .limit(limit)
            )
        )
        released = [i for i in ids if apply_status(session, i, "queued", source="scheduler")]
    return released
