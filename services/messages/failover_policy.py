"""What accepting a message with `failover` decides before it is stored: that the tenant
can send the SMS at all (else 422 now, not a silent nothing at failure), and the
deadline. The fallback itself is made by services/messages/failover.py."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from core.errors import PolicyRefused
from models import Tenant
from services.content.schemas import failover_problem
from services.tenancy.tenants import cached_account

FALLBACK_CHANNEL = "sms"
FALLBACK_PROVIDER = "twilio"  # Meta serves WhatsApp only: an SMS goes through Twilio


def check_failover_possible(session: Session, tenant: Tenant, data: dict[str, Any]) -> None:
    """Refuse (422 `failover_unavailable`) a fallback this tenant could not send: its
    SMS goes through Twilio (Meta serves WhatsApp only), so the tenant needs a Twilio
    account; its default SMS sender sends it."""
    if cached_account(session, tenant.id, FALLBACK_PROVIDER) is None:
        raise PolicyRefused(
            "This tenant has no Twilio SMS sender for the fallback.",
            code="failover_unavailable",
        )


def with_tenant_policy(session: Session, tenant: Tenant, data: dict[str, Any]) -> None:
    """Give a WhatsApp request that names no `failover` its tenant's default, where it
    fits (a text of SMS size, a Twilio account); a request's `"failover": null` keeps
    it out. Silent where it does not fit: the policy is "when possible"."""
    policy = tenant.failover
    if policy is None or "failover" in data or data.get("channel", "whatsapp") != "whatsapp":
        return
    spec = {"channel": FALLBACK_CHANNEL, **policy}
    if failover_problem({**data, "failover": spec}) is None and cached_account(
        session, tenant.id, FALLBACK_PROVIDER
    ):
        data["failover"] = spec


def failover_at_for(data: dict[str, Any], now: datetime) -> datetime | None:
    """The deadline of an accepted request's fallback: `after_seconds` after it is due
    (its `send_at`, else now), or None when only a failure triggers it."""
    spec = data.get("failover") or {}
    seconds = spec.get("after_seconds")
    if seconds is None:
        return None
    due = data.get("send_at") or now
    return max(due, now) + timedelta(seconds=int(seconds))
