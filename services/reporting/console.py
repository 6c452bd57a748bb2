"""What the console shows: read-only queries, always scoped to one tenant.

The console's views call these and services/messages/service.py, campaigns.py and
contacts.py; no rule of sending lives here. Time buckets use message ids: they
are ULIDs (models/base.py), time-ordered, so "messages accepted in this hour" is
an id range on the (tenant_id, id) index rather than a scan of `created_at`.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import case, func, or_, select, union
from sqlalchemy.orm import Session

from core.config import get_settings
from core.errors import InvalidRequest, Unauthorized
from core.ids import id_at
from models import ApiKey, Campaign, Contact, Message, ProviderAccount, Tenant, utcnow
from services.content.phones import is_bsuid, normalize_e164
from services.policy.limits import budget_tokens, get_redis, key
from services.reporting.rollups import hourly_status_counts
from services.tenancy.tenants import KEY_PREFIX, hash_key

log = logging.getLogger(__name__)

FAILED = ("failed", "undelivered")
CHART_STATUSES = (
    "scheduled",
    "queued",
    "sending",
    "sent",
    "delivered",
    "read",
    "failed",
    "undelivered",
    "canceled",
    "received",
)


# ---------------------------------------------------------------- sign-in


def sign_in(session: Session, api_key: str) -> ApiKey:
    """The live key row for a clear API key; refused like the API refuses it."""
    api_key = (api_key or "").strip()
    row = None
    if api_key.startswith(KEY_PREFIX):
        row = session.scalars(
            select(ApiKey).where(ApiKey.key_hash == hash_key(api_key), ApiKey.revoked_at.is_(None))
        ).first()
    tenant = session.get(Tenant, row.tenant_id) if row else None
    if row is None or tenant is None or tenant.disabled_at is not None:
        raise Unauthorized("That API key is not valid.")
    return row


def tenant_for_key(session: Session, key_id: str | None) -> Tenant | None:
    """The tenant of a signed-in console session, or None once its key is revoked or
    its tenant disabled: revocation signs every session of that key out at once."""
    if not key_id:
        return None
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    tenant = session.get(Tenant, row.tenant_id)
    if tenant is None or tenant.disabled_at is not None:
        return None
    return tenant


# ---------------------------------------------------------------- messages


@dataclass
class MessageFilters:
    status: str | None = None
    channel: str | None = None
    provider: str | None = None
    number: str | None = None
    campaign_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def search_messages(
    session: Session,
    tenant_id: str,
    filters: MessageFilters,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Message], str | None]:
    """A page of the tenant's messages, newest first, and the cursor of the next page."""
    query = select(Message).where(Message.tenant_id == tenant_id)
    if filters.status:
        query = query.where(Message.status == filters.status)
    if filters.channel:
        query = query.where(Message.channel == filters.channel)
    if filters.provider:
        query = query.where(Message.provider == filters.provider)
    if filters.campaign_id:
        query = query.where(Message.campaign_id == filters.campaign_id)
    if filters.since:
        query = query.where(Message.id >= id_at("msg", filters.since))
    if filters.until:
        query = query.where(Message.id < id_at("msg", filters.until))
    if cursor:
        query = query.where(Message.id < cursor)
    if filters.number:
        # A page of each side on its own (tenant, number, id) index, then merged: an OR
        # of the two would read every message of the number to sort them.
        number = normalize_e164(filters.number) or filters.number.strip()
        sides = [
            query.with_only_columns(Message.id)
            .where(column == number)
            .order_by(Message.id.desc())
            .limit(limit + 1)
            .subquery()
            for column in (Message.to_number, Message.from_number)
        ]
        found = union(*(select(side.c.id) for side in sides)).subquery()
        query = select(Message).where(Message.id.in_(select(found.c.id)))
    rows = list(session.scalars(query.order_by(Message.id.desc()).limit(limit + 1)))
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


def message_request(message: Message) -> dict[str, Any]:
    """The request as Herald kept it (what the message was asked to be)."""
    data: dict[str, Any] = {"to": message.to_number, "channel": message.channel}
    data["provider"] = message.provider
    for name, value in (
        ("contact_id", message.contact_id),
        ("body", message.body),
        ("media_url", message.media_urls),
        ("template", message.template),
        ("send_at", message.send_at.isoformat() if message.send_at else None),
        ("callback_url", message.callback_url),
        ("metadata", message.meta or None),
        ("campaign_id", message.campaign_id),
        ("idempotency_key", message.idempotency_key),
    ):
        if value:
            data[name] = value
    data.update(message.options or {})
    return data


# ---------------------------------------------------------------- overview


def status_buckets(
    session: Session, tenant_id: str, *, span: timedelta, buckets: int, now: datetime | None = None
) -> tuple[list[datetime], list[dict[str, int]]]:
    """Live messages accepted in each of `buckets` equal slices of the last `span`, per
    current status: one grouped query. Test keys' messages are left out, as they are of
    the usage figures (the rollups keep them apart; the usage page counts them)."""
    now = now or utcnow()
    step = span / buckets
    if step == timedelta(hours=1):
        return _hourly_status_buckets(session, tenant_id, buckets, now)
    starts = [now - span + step * i for i in range(buckets)]
    bounds = [id_at("msg", s) for s in starts]
    bucket = case(*[(Message.id < bounds[i + 1], i) for i in range(buckets - 1)], else_=buckets - 1)
    rows = session.execute(
        select(bucket, Message.status, func.count())
        .where(Message.tenant_id == tenant_id, Message.id >= bounds[0], Message.test.is_(False))
        .group_by(bucket, Message.status)
    ).all()
    counts: list[dict[str, int]] = [{} for _ in range(buckets)]
    for index, status, count in rows:
        counts[int(index)][status] = int(count)
    return starts, counts


def _hourly_status_buckets(
    session: Session, tenant_id: str, buckets: int, now: datetime
) -> tuple[list[datetime], list[dict[str, int]]]:
    """Hour buckets on clock hours, the last one the current hour: whole hours from the
    rollup (services/reporting/rollups.py), the current one from its messages."""
    current = now.replace(minute=0, second=0, microsecond=0)
    starts = [current - timedelta(hours=buckets - 1 - i) for i in range(buckets)]
    counts: list[dict[str, int]] = [{} for _ in range(buckets)]
    for hour, status, count in hourly_status_counts(session, tenant_id, starts[0], current):
        index = starts.index(hour)
        counts[index][status] = counts[index].get(status, 0) + count
    for status, count in session.execute(
        select(Message.status, func.count())
        .where(
            Message.tenant_id == tenant_id,
            Message.id >= id_at("msg", current),
            Message.test.is_(False),
        )
        .group_by(Message.status)
    ):
        counts[-1][status] = int(count)
    return starts, counts


def failure_reasons(
    session: Session, tenant_id: str, *, since: datetime, limit: int = 10
) -> list[dict[str, Any]]:
    """Why messages failed since `since`, one line per Herald code (`expired` by Herald
    and by Twilio's 30036 are one reason), most frequent first, with the provider codes
    behind it."""
    rows = session.execute(
        select(
            Message.error_code,
            Message.provider_error_code,
            Message.provider,
            func.count().label("n"),
            func.max(Message.error_message),
        )
        .where(
            Message.tenant_id == tenant_id,
            Message.id >= id_at("msg", since),
            Message.status.in_(FAILED),
        )
        .group_by(Message.error_code, Message.provider_error_code, Message.provider)
        .order_by(func.count().desc())
    ).all()
    reasons: dict[str, dict[str, Any]] = {}
    for code, provider_code, provider, n, example in rows:  # most frequent first
        reason = reasons.setdefault(
            code or "unknown",
            {"code": code or "unknown", "count": 0, "providers": [], "example": example},
        )
        reason["count"] += n
        if provider_code:
            reason["providers"].append(f"{provider} {provider_code}")
    ranked = sorted(reasons.values(), key=lambda r: -r["count"])
    return ranked[:limit]


def _senders(account: ProviderAccount) -> list[tuple[str, float]]:
    settings = get_settings()
    values = account.settings or {}
    mps = float(values["mps"]) if values.get("mps") else None
    if account.provider == "meta":
        return [(account.external_id, mps or settings.mps_meta)]
    found = []
    if values.get("whatsapp_from"):
        found.append((values["whatsapp_from"], mps or settings.mps_twilio_whatsapp))
    if values.get("sms_from"):
        found.append((values["sms_from"], mps or settings.mps_twilio_sms))
    if values.get("messaging_service_sid"):
        found.append((values["messaging_service_sid"], mps or settings.mps_twilio_sms))
    return found


def sender_budgets(session: Session, tenant_id: str) -> list[dict[str, Any]]:
    """Each sender the tenant's messages go from, once: its senders (`POST /v1/senders`)
    and its accounts' own numbers, with the per-second budget; `held` when the workers
    have reserved all of it for now, so its next messages wait (services/policy/limits.py)."""
    from services.tenancy.senders import tenant_senders

    settings = get_settings()
    accounts = session.scalars(
        select(ProviderAccount).where(ProviderAccount.tenant_id == tenant_id)
    ).all()
    found: dict[tuple[str, str], float] = {}
    for account in accounts:
        for sender, rate in _senders(account):
            found.setdefault((account.provider, sender), rate)
    for row in tenant_senders(session, tenant_id):
        default = (
            settings.mps_meta
            if row.provider == "meta"
            else settings.mps_twilio_whatsapp
            if "whatsapp" in row.channels
            else settings.mps_twilio_sms
        )
        found.setdefault((row.provider, row.address), float(row.mps or default))
    result = []
    for (provider, sender), rate in found.items():
        tokens = budget_tokens(provider, sender, rate)
        result.append(
            {
                "provider": provider,
                "sender": sender,
                "rate": rate,
                "tokens": None if tokens is None else round(tokens, 2),
                "held": tokens is not None and tokens < 1,
            }
        )
    return result


def quota_usage(tenant: Tenant) -> dict[str, dict[str, int | None]]:
    """Messages counted against the tenant's hourly and daily quotas (0 = unlimited)."""
    settings = get_settings()
    limits = {
        "hour": settings.default_hourly_limit
        if tenant.hourly_limit is None
        else tenant.hourly_limit,
        "day": settings.default_daily_limit if tenant.daily_limit is None else tenant.daily_limit,
    }
    now = utcnow()
    keys = {
        "hour": key("quota", tenant.id, now.strftime("%Y%m%d%H")),
        "day": key("quota", tenant.id, now.strftime("%Y%m%d")),
    }
    client = get_redis()
    usage: dict[str, dict[str, int | None]] = {}
    for window, name in keys.items():
        used: int | None = None
        if client is not None:
            try:
                used = int(client.get(name) or 0)
            except Exception:
                used = None
        usage[window] = {"used": used, "limit": limits[window]}
    return usage


# ---------------------------------------------------------------- campaigns


def list_campaigns(session: Session, tenant_id: str, limit: int = 100) -> list[Campaign]:
    return list(
        session.scalars(
            select(Campaign)
            .where(Campaign.tenant_id == tenant_id)
            .order_by(Campaign.id.desc())
            .limit(limit)
        )
    )


def campaign_send_rate(
    session: Session, campaign: Campaign, *, seconds: int = 60, now: datetime | None = None
) -> tuple[datetime, list[int]]:
    """Messages of the campaign the provider accepted in each second of the last
    `seconds` of its sending (ending now while it runs, else at its last send)."""
    now = now or utcnow()
    last = session.scalar(
        select(func.max(Message.sent_at)).where(
            Message.campaign_id == campaign.id, Message.sent_at.is_not(None)
        )
    )
    end = now if campaign.status == "running" or last is None else min(now, last)
    end = end.replace(microsecond=0) + timedelta(seconds=1)
    start = end - timedelta(seconds=seconds)
    per_second = [0] * seconds
    for sent_at in session.scalars(
        select(Message.sent_at).where(
            Message.campaign_id == campaign.id, Message.sent_at >= start, Message.sent_at < end
        )
    ):
        index = int((sent_at - start).total_seconds())
        if 0 <= index < seconds:
            per_second[index] += 1
    return start, per_second


# ---------------------------------------------------------------- contacts


def search_contacts(
    session: Session, tenant_id: str, query: str | None, limit: int = 100
) -> list[Contact]:
    statement = select(Contact).where(Contact.tenant_id == tenant_id)
    text = (query or "").strip()
    if text:
        like = f"%{text.replace('%', '').replace('_', '')}%"
        statement = statement.where(
            or_(
                Contact.phone.like(like),
                Contact.wa_user_id.like(like),  # a WhatsApp user by BSUID or username
                func.lower(Contact.wa_username).like(like.lower()),
                func.lower(Contact.name).like(like.lower()),
                Contact.external_id.like(like),
                Contact.id == text,
            )
        )
    return list(session.scalars(statement.order_by(Contact.created_at.desc()).limit(limit)))


# ---------------------------------------------------------------- the sandbox phone

REAL_HOSTS = ("https://api.twilio.com", "https://graph.facebook.com")
_probe: dict[str, tuple[float, bool]] = {}


def sandbox_url() -> str | None:
    """The provider sandbox's base URL: HERALD_SANDBOX_URL, else a provider base URL
    that is not the real provider's (which is how `make run` points Herald at it)."""
    settings = get_settings()
    if settings.sandbox_url:
        return settings.sandbox_url
    for base in (settings.meta_graph_base, settings.twilio_api_base):
        if base not in REAL_HOSTS:
            return base
    return None


def sandbox_running() -> bool:
    """Whether the sandbox answers its health check (remembered for five seconds)."""
    url = sandbox_url()
    if url is None:
        return False
    seen = _probe.get(url)
    if seen and time.monotonic() - seen[0] < 5:
        return seen[1]
    try:
        up = httpx.get(f"{url}/_sandbox/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        up = False
    _probe[url] = (time.monotonic(), up)
    return up


def conversations(session: Session, tenant_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """Every number the tenant exchanged messages with, most recent first."""
    outbound = (
        select(Message.to_number.label("number"), func.max(Message.id).label("last"))
        .where(Message.tenant_id == tenant_id, Message.direction == "outbound")
        .group_by(Message.to_number)
    )
    inbound = (
        select(Message.from_number.label("number"), func.max(Message.id).label("last"))
        .where(Message.tenant_id == tenant_id, Message.direction == "inbound")
        .group_by(Message.from_number)
    )
    latest: dict[str, str] = {}
    for number, last in [*session.execute(outbound), *session.execute(inbound)]:
        if number and (number not in latest or last > latest[number]):
            latest[number] = last
    ordered = sorted(latest.items(), key=lambda item: item[1], reverse=True)[:limit]
    messages = {
        m.id: m
        for m in session.scalars(select(Message).where(Message.id.in_([i for _, i in ordered])))
    }
    return [{"number": n, "last": messages.get(i)} for n, i in ordered]


def thread(session: Session, tenant_id: str, number: str, limit: int = 200) -> list[Message]:
    """The conversation with one number, oldest first: what Herald sent and what came in."""
    rows = session.scalars(
        select(Message)
        .where(
            Message.tenant_id == tenant_id,
            or_(
                (Message.direction == "outbound") & (Message.to_number == number),
                (Message.direction == "inbound") & (Message.from_number == number),
            ),
        )
        .order_by(Message.id.desc())
        .limit(limit)
    )
    return list(reversed(list(rows)))


def simulate_reply(
    session: Session,
    tenant: Tenant,
    number: str,
    *,
    channel: str = "whatsapp",
    body: str | None = None,
    image_url: str | None = None,
    image: tuple[bytes, str] | None = None,
) -> dict[str, Any]:
    """Have the sandbox deliver a message from `number` to the tenant, as the provider
    would (a signed webhook to Herald): WhatsApp through the tenant's WhatsApp provider,
    SMS through Twilio. `image`: bytes and their type, hosted by the sandbox as the
    provider hosts what a customer sends (so the console can show it); `image_url`: a
    link instead.

    Ends the session's transaction before calling the sandbox: the sandbox calls Herald
    back within that call, and an open transaction holding row locks the webhook needs
    would hold it up until the call timed out."""
    url = sandbox_url()
    if url is None or not sandbox_running():
        raise InvalidRequest("The provider sandbox is not running.", code="sandbox_unavailable")
    user_id = number if is_bsuid(number) else None  # a username user: Meta, WhatsApp only
    phone = None if user_id else normalize_e164(number)
    if phone is None and user_id is None:
        raise InvalidRequest("Not a valid phone number.", code="invalid_fields")
    provider = tenant.default_whatsapp_provider if channel == "whatsapp" else "twilio"
    if user_id is not None and (channel != "whatsapp" or provider != "meta"):
        raise InvalidRequest(
            "A business-scoped user id writes through Meta's WhatsApp only.",
            code="whatsapp_only_recipient",
        )
    accounts = session.scalars(
        select(ProviderAccount).where(
            ProviderAccount.tenant_id == tenant.id, ProviderAccount.provider == (provider or "")
        )
    ).all()
    if not accounts:
        raise InvalidRequest(f"This tenant has no account to receive {channel}.")
    account = accounts[0]
    payload: dict[str, Any] = {"provider": account.provider}
    payload.update({"from_user_id": user_id} if user_id else {"from": phone})
    if account.provider == "meta":
        payload["to"] = account.external_id
    else:
        payload["account"] = account.external_id
        sender = (account.settings or {}).get(
            "whatsapp_from" if channel == "whatsapp" else "sms_from"
        )
        if not sender:
            raise InvalidRequest(f"This tenant's Twilio account has no {channel} number.")
        payload["to"] = f"whatsapp:{sender}" if channel == "whatsapp" else sender
    if body:
        payload["body"] = body
    if image is not None:
        payload.update(media_type=image[1], media_base64=base64.b64encode(image[0]).decode("ascii"))
    elif image_url:
        payload.update(media_url=image_url, media_type="image/jpeg")
    session.commit()  # nothing written here: only the transaction ends
    try:
        answer = httpx.post(f"{url}/_sandbox/inbound", json=payload, timeout=10.0)
    except httpx.HTTPError as exc:
        raise InvalidRequest(
            f"The sandbox did not answer ({type(exc).__name__}).", code="sandbox_unavailable"
        ) from None
    result = (
        answer.json()
        if answer.headers.get("content-type", "").startswith("application/json")
        else {}
    )
    if answer.status_code != 200 or not result.get("ok"):
        raise InvalidRequest(
            "The sandbox could not deliver the reply: "
            f"{result.get('error') or answer.status_code}.",
            code="sandbox_error",
        )
    return result


# ---------------------------------------------------------------- usage


def usage_report(session: Session, tenant_id: str, args: dict[str, Any]) -> dict[str, Any]:
    """GET /v1/usage's figures for the console's usage page (services/reporting/usage.py)."""
    from services.content.schemas import load_object
    from services.reporting.usage import UsageQuerySchema, counted_rows, period, usage

    data = load_object(UsageQuerySchema(), args)
    start, end = period(data)
    rows = counted_rows(session, tenant_id, start, end, data["group_by"])  # once for both
    report = usage(session, tenant_id, start, end, data["group_by"], rows=rows)
    # Test keys' messages beside, never in the live figures (simulated, never billed).
    report["test_totals"] = usage(session, tenant_id, start, end, (), test=True, rows=rows)[
        "totals"
    ]
    return report
