"""Where a tenant may send SMS: the SMS pumping guard.

SMS pumping (artificially inflated traffic) is fraud that bills the sender: a bot makes a
sign-up or one-time-code form text premium numbers abroad, one message at a time. The
guard is two rules checked at accept, before anything is paid for:

- **Countries**: a tenant texts only the countries in its `sms_countries` (set by the
  operator) or, by default, the countries of its own sender numbers (its senders and
  its Twilio account's `sms_from`). Elsewhere: `422 country_not_allowed`.
- **International SMS per day**: a destination outside those home countries (reachable
  only once the operator lists it) counts against `international_daily_limit` (default
  HERALD_DEFAULT_INTERNATIONAL_DAILY_LIMIT, 100 a day as GOV.UK Notify gives a new
  service; 0 = unlimited, as for the other quotas). Over it: `429 international_limit`.

WhatsApp is not billed per destination this way and is not checked."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.config import get_settings
from core.errors import PolicyRefused, RateLimited
from models import Tenant
from services.content.phones import region_of
from services.tenancy.senders import tenant_senders
from services.tenancy.tenants import cached_account


def country_of(number: str) -> str | None:
    """The ISO 3166 region of an E.164 number (None: not a valid one). The accept path
    validated the number just before: its region is kept from then (content/phones.py)."""
    return region_of(number)


def home_countries(session: Session, tenant: Tenant) -> frozenset[str]:
    """The countries of the tenant's own SMS numbers: its senders' and its Twilio
    account's `sms_from` (a Messaging Service SID has no country)."""
    numbers = [
        s.address
        for s in tenant_senders(session, tenant.id)
        if s.kind == "number" and "sms" in s.channels
    ]
    account = cached_account(session, tenant.id, "twilio")
    if account is not None and (account.settings or {}).get("sms_from"):
        numbers.append(str(account.settings["sms_from"]))
    return frozenset(c for c in map(country_of, numbers) if c and c != "ZZ")


def allowed_countries(
    session: Session, tenant: Tenant, home: frozenset[str] | None = None
) -> frozenset[str] | None:
    """The countries the tenant may text; None: any (no list set and no number of its
    own known, so every destination counts as international)."""
    if tenant.sms_countries:
        return frozenset(tenant.sms_countries)
    return (home_countries(session, tenant) if home is None else home) or None


def international_cap(tenant: Tenant) -> int:
    """International SMS a day: the tenant's, else the deployment's default."""
    cap = tenant.international_daily_limit
    return get_settings().default_international_daily_limit if cap is None else cap


def check_sms_destination(session: Session, tenant: Tenant, to: str) -> bool:
    """Refuse an SMS to a country the tenant may not text; True when it is
    international (outside its home countries) and so counts against the daily cap."""
    country = country_of(to)
    home = home_countries(session, tenant)
    allowed = allowed_countries(session, tenant, home)
    if allowed is not None and country not in allowed:
        raise PolicyRefused(
            f"This tenant may not send SMS to {country or 'that destination'}; "
            "the operator can allow more countries.",
            code="country_not_allowed",
            fields={"to": [f"{country or 'unknown'} is not among {sorted(allowed)}."]},
        )
    return country not in home


def international_refusal(tenant: Tenant, wait: int) -> RateLimited:
    """The 429 for an SMS over the tenant's international daily cap."""
    cap = international_cap(tenant)
    return RateLimited(
        f"International SMS limit reached ({cap}/day); retry in {wait} s.",
        code="international_limit",
        headers={"Retry-After": str(wait)},
    )
