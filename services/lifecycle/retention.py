"""How long a tenant's content is kept: the default, the range a tenant may choose, and
setting it (the admin API and `herald retention` share these rules).

Content is what identifies or speaks for a person: bodies, media references, template
parameters, numbers, raw provider payloads. It is kept `retention_days` after the
message was created (default `DEFAULT_DAYS`), then purged with its message
(services/lifecycle/purge.py). The counts usage, billing and the console's history read
are rollups (services/reporting/rollups.py) and outlive the rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from core.errors import InvalidRequest, NotFound
from models import Tenant

# GOV.UK Notify keeps 7 days (a service chooses 3-90); Twilio and Meta keep 30-400.
# 30 days covers a month's disputes and support questions at a month's storage.
DEFAULT_DAYS = 30
MIN_DAYS = 3
MAX_DAYS = 400
# Raw receipts (webhook dedup keys) are kept at least this long, whatever the tenant
# chose: Meta retries a callback for up to 7 days, and a retry of a forgotten key
# would be recorded again.
DEDUP_FLOOR_DAYS = 7


def effective_days(setting: int | None) -> int:
    """A tenant's retention in days: its own setting or the default."""
    return DEFAULT_DAYS if setting is None else setting


def cutoff(days: int, now: datetime) -> datetime:
    """Content created before this is past retention."""
    return now - timedelta(days=days)


def validate_days(value: Any) -> int | None:
    """A retention setting as given (JSON or CLI): whole days in range, or None for the
    default; anything else is a 400 naming the field."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            "retention_days is a whole number of days or null (the default).",
            code="invalid_fields",
            fields={"retention_days": ["Not an integer."]},
        )
    if not MIN_DAYS <= value <= MAX_DAYS:
        raise InvalidRequest(
            f"retention_days is between {MIN_DAYS} and {MAX_DAYS} days.",
            code="invalid_fields",
            fields={"retention_days": [f"Must be between {MIN_DAYS} and {MAX_DAYS}."]},
        )
    return value


def retention_to_dict(tenant: Tenant) -> dict[str, Any]:
    """A tenant's setting and what applies (the CLI's answer)."""
    return {
        "tenant_id": tenant.id,
        "retention_days": tenant.retention_days,
        "effective_days": effective_days(tenant.retention_days),
        "default_days": DEFAULT_DAYS,
    }


def set_retention(session: Session, tenant_id: str, value: Any) -> Tenant:
    """Set (or with None, reset to the default) how long the tenant's content is kept;
    the next purge applies it."""
    days = validate_days(value)
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"No tenant {tenant_id!r}.")
    tenant.retention_days = days
    session.flush()
    return tenant
