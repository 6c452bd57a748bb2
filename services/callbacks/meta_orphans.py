"""Meta status receipts kept without a message (orphans), applied once it is known.

Meta returns `biz_opaque_callback_data` on sent/delivered/read only, so a `failed`
status that beats the worker's record of the `wamid` finds no row. It is applied when
the provider id is recorded (see `apply_orphan_statuses`), or by the periodic pass.
(WABA-level changes, which name no phone number, are verified in signatures.py and
recorded in meta.py.)
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Message, WebhookEvent, utcnow

log = logging.getLogger(__name__)


def _orphans(session: Session, wamids: list[str]) -> list[WebhookEvent]:
    return list(
        session.scalars(
            select(WebhookEvent)
            .where(
                WebhookEvent.provider == "meta",
                WebhookEvent.kind == "status",
                WebhookEvent.message_id.is_(None),
                WebhookEvent.provider_message_id.in_(wamids),
            )
            .order_by(WebhookEvent.id)
        )
    )


def apply_orphan_statuses(session: Session, message_id: str, wamid: str | None) -> int:
    """Apply the status receipts kept for `wamid` before it was known to be this message's.

    Called in the transaction that records the provider id. Only receipts of the
    message's own tenant (or kept without one) are applied."""
    if not wamid:
        return 0
    orphans = _orphans(session, [wamid])
    if not orphans:
        return 0
    message = session.get(Message, message_id)
    if message is None or message.provider != "meta":
        return 0
    return _apply(session, message, orphans)


def _apply(session: Session, message: Message, receipts: list[WebhookEvent]) -> int:
    from services.callbacks.meta import apply_meta_status

    applied = 0
    for receipt in receipts:
        if receipt.tenant_id not in (None, message.tenant_id):
            continue
        receipt.message_id, receipt.tenant_id = message.id, message.tenant_id
        apply_meta_status(session, message, receipt.payload)
        applied += 1
    if applied:
        log.info("applied %d early meta status(es) to id=%s", applied, message.id)
    return applied


def apply_stored_orphans(limit: int = 200, max_age_hours: int = 72) -> int:
    """The periodic pass: orphan receipts whose wamid has since been recorded (a receipt
    and the worker's record committing at the same moment can each miss the other)."""
    from models import session_scope

    since = utcnow() - timedelta(hours=max_age_hours)
    with session_scope() as session:
        rows = session.execute(
            select(WebhookEvent, Message)
            .join(
                Message,
                (Message.provider == "meta")
                & (Message.provider_message_id == WebhookEvent.provider_message_id),
            )
            .where(
                WebhookEvent.provider == "meta",
                WebhookEvent.kind == "status",
                WebhookEvent.message_id.is_(None),
                WebhookEvent.received_at > since,
            )
            .order_by(WebhookEvent.id)
            .limit(limit)
        ).all()
        return sum(_apply(session, message, [receipt]) for receipt, message in rows)
