"""Meta webhook items that the per-message path cannot place on its own.

* Status receipts kept without a message (an orphan): Meta returns
  `biz_opaque_callback_data` on sent/delivered/read only, so a `failed` status that
  beats the worker's record of the `wamid` finds no row. It is applied when the
  provider id is recorded (see `apply_orphan_statuses`), or by the periodic pass.
* WABA-level changes (`message_template_status_update`, `phone_number_quality_update`,
  `account_update`, ...) carry no `phone_number_id`: they are verified by any app
  secret Herald holds, answered 200 and recorded, so Meta stops retrying them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Message, ProviderAccount, WebhookEvent, utcnow

log = logging.getLogger(__name__)

ACCOUNT_KIND = "account"


# The app secrets tried on a WABA-level webhook, at most: the check stays bounded
# (a deployment with more Meta accounts sets META_APP_SECRET).
MAX_ACCOUNT_SECRETS = 32


def is_account_change(change: dict[str, Any]) -> bool:
    """A change about the WhatsApp Business Account itself, not one phone number's traffic."""
    value = change.get("value")
    metadata = value.get("metadata") if isinstance(value, dict) else None
    phone_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    return not phone_id and change.get("field") != "messages"


def account_changes(payload: Any) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(entry, change) for each WABA-level change of a delivery."""
    entries = payload.get("entry") if isinstance(payload, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            if isinstance(change, dict) and is_account_change(change):
                yield entry, change


def has_account_changes(payload: Any) -> bool:
    return next(account_changes(payload), None) is not None


def account_secrets(session: Session) -> list[tuple[str, Any]]:
    """The Meta app secrets Herald holds (at most MAX_ACCOUNT_SECRETS distinct ones),
    with the credentials holding each: what a WABA-level webhook, which names no phone
    number to look up, may be signed with."""
    from services.callbacks.webhooks import credentials

    found: list[tuple[str, Any]] = []
    distinct: set[str] = set()
    query = select(ProviderAccount).where(ProviderAccount.provider == "meta")
    for account in session.scalars(query.order_by(ProviderAccount.created_at)):
        creds = credentials(account)
        secret = creds.secrets.get("app_secret") if creds else None
        if not isinstance(secret, str) or not secret:
            continue
        if secret not in distinct and len(distinct) >= MAX_ACCOUNT_SECRETS:
            log.warning("more than %d Meta app secrets: set META_APP_SECRET", MAX_ACCOUNT_SECRETS)
            break
        distinct.add(secret)
        found.append((secret, creds))
    return found


def record_account_change(
    session: Session, entry: dict[str, Any], change: dict[str, Any], signer: Any
) -> bool:
    """Keep one WABA-level change, deduplicated under its signer; returns whether new."""
    from services.callbacks.webhooks import _record_once, dedup_key

    field = str(change.get("field") or "")[:64]
    value = change.get("value")
    digest = hashlib.sha256(
        json.dumps([entry.get("id"), field, value], sort_keys=True, default=str).encode()
    ).hexdigest()
    tenants = {a.tenant_id for a in signer.accounts}
    receipt = _record_once(
        session,
        provider="meta",
        kind=ACCOUNT_KIND,
        dedup_key=dedup_key("meta", signer.scope, "account", digest),
        tenant_id=tenants.pop() if len(tenants) == 1 and not signer.app_wide else None,
        payload={"waba_id": entry.get("id"), "field": field, "value": value},
    )
    if receipt is not None:
        log.info("meta account webhook recorded field=%s", field)
    return receipt is not None


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
    from services.callbacks.webhooks import apply_meta_status

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
