"""What the tenant's messages cost: the facts per message, and `GET /v1/usage`.

Per message:
* Meta puts `pricing` (`billable`, `pricing_model`, `category`, `type`) on its `sent`
  and `delivered` status webhooks (never on `read`); `record_meta_pricing` keeps the
  category and billable flag in `messages.pricing_category` / `messages.billable`.
  Meta sends no price: the rate card depends on the recipient's country and the
  business's volume tier, so a Meta message's cost is not known to Herald unless the
  operator gives a price per category (HERALD_META_PRICES, an estimate).
* Twilio's price (`price`, `price_unit`) comes from the Message resource: the create
  answer, a fetch after the final callback (services/messages/reconcile.py, "unpriced").

`usage` sums them over a period: counts by status, billable count, and the cost as a
sum of prices per currency (never added across currencies), grouped as asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validates_schema
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from core.config import get_settings
from core.ids import id_at
from core.shapes import Shape, shape
from models import Message, update_message, utcnow
from services.reporting.rollups import LEAVE_OUT, CountRow, outbound_counts

# The dimensions `group_by` takes, and the column each is read from.
GROUPS = {
    "channel": Message.channel,
    "provider": Message.provider,
    "category": Message.pricing_category,
    "campaign": Message.campaign_id,
    "status": Message.status,
}
DEFAULT_PERIOD = timedelta(days=30)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # Herald's ids and dates live in between
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
MAX_PERIOD = timedelta(days=366)
CATEGORY_LIMIT = 32


def record_meta_pricing(session: Session, message_id: str, status: dict[str, Any]) -> None:
    """Keep a Meta status's pricing category and billable flag on its message. A later
    status that carries pricing again (delivered after sent) overwrites with the same."""
    pricing = status.get("pricing")
    if not isinstance(pricing, dict):
        return
    values: dict[str, Any] = {}
    category = pricing.get("category")
    if isinstance(category, str) and 0 < len(category) <= CATEGORY_LIMIT:
        values["pricing_category"] = category
    if isinstance(pricing.get("billable"), bool):
        values["billable"] = pricing["billable"]
    if values:
        update_message(session, message_id, **values)


class Instant(fields.Field):
    """A day (`2026-11-01`, its start in UTC) or an ISO 8601 date-time with an offset."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        if not isinstance(value, str) or len(value) > 64:
            raise ValidationError("Not a date or date-time.")
        try:
            if len(value) == 10:
                return datetime.combine(date.fromisoformat(value), time(), UTC)
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError("Not a date (YYYY-MM-DD) or ISO 8601 date-time.") from None
        if parsed.tzinfo is None:
            raise ValidationError("A date-time needs its offset (Z or +hh:mm).")
        parsed = parsed.astimezone(UTC)
        if not EARLIEST <= parsed <= LATEST:
            raise ValidationError("A date from 2000 to 2100.")
        return parsed


class GroupBy(fields.Field):
    """A comma-separated list of dimensions, each once."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if not isinstance(value, str):
            raise ValidationError("A comma-separated list.")
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in GROUPS]
        if unknown:
            raise ValidationError(f"Unknown {unknown[:3]}: group by {', '.join(GROUPS)}.")
        if len(set(names)) != len(names):
            raise ValidationError("A dimension is named twice.")
        return names


class UsageQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    from_ = Instant(
        data_key="from", metadata={"description": "start (inclusive), default 30 d before `to`"}
    )
    to = Instant(metadata={"description": "end (exclusive), default the end of the current hour"})
    group_by = GroupBy(
        load_default=list,
        metadata={"description": f"comma-separated: {', '.join(GROUPS)}"},
    )

    @validates_schema
    def _period(self, data: dict[str, Any], **_: Any) -> None:
        start, end = period(data)
        if start >= end:
            raise ValidationError("'from' must be before 'to' (now by default).", "from")
        if end - start > MAX_PERIOD:
            raise ValidationError("At most 366 days at once.", "from")


def period(data: dict[str, Any], now: datetime | None = None) -> tuple[datetime, datetime]:
    """[from, to): `to` defaults to the end of the current clock hour (every message up to
    now: none is created later than now), `from` to 30 days before `to`. Whole hours are
    read from the rollup alone; a period ending at now read the hour in progress from
    the messages at each call, a cost that grew with the tenant's traffic."""
    end = data.get("to") or _hour_ceil(now or utcnow())
    start = data.get("from_") or (end - DEFAULT_PERIOD)
    return start, end


COUNTS = ("messages", "sent", "delivered", "read", "failed", "billable")
# Which counts a message in each status adds to (every one adds to `messages`).
COUNTED_AS = {
    "sent": ("sent",),
    "delivered": ("sent", "delivered"),
    "read": ("sent", "delivered", "read"),
    "undelivered": ("sent", "failed"),
    "failed": ("failed",),
}
# The CountRow attribute each group_by dimension is read from.
ROW_FIELD = {
    "channel": "channel",
    "provider": "provider",
    "category": "category",
    "campaign": "campaign",
    "status": "status",
}


def _hour_floor(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def _hour_ceil(value: datetime) -> datetime:
    floor = _hour_floor(value)
    return floor if floor == value else floor + timedelta(hours=1)


def _left_out(group_by: Iterable[str]) -> frozenset[str]:
    """The rollup columns a usage grouped by `group_by` adds up rather than reads apart."""
    names = set(group_by)
    return frozenset(column for name, column in LEAVE_OUT.items() if name not in names)


def _scanned(
    session: Session, tenant_id: str, start: datetime, end: datetime, left_out: frozenset[str]
) -> list[CountRow]:
    """The groups of the tenant's outbound messages created in [start, end), read from
    the messages: only for the partial hours at a period's ends (the rest is rolled up)."""
    if start >= end:
        return []
    dimensions = [
        column
        for column in (
            Message.channel,
            Message.provider,
            Message.pricing_category,
            Message.campaign_id,
            Message.status,
            Message.price_unit,
            Message.test,
        )
        if column.key not in left_out
    ]
    query = (
        select(
            *dimensions,
            func.count().label("messages"),
            func.count(case((Message.billable.is_(True), 1))).label("billable"),
            func.coalesce(func.sum(Message.price), 0).label("cost"),
        )
        .where(
            Message.tenant_id == tenant_id,
            Message.direction == "outbound",
            # Ids are time-ordered (ULIDs): a range on the (tenant_id, id) index, a
            # second wider than the period, then the exact period on created_at.
            Message.id >= id_at("msg", start - timedelta(seconds=1)),
            Message.id < id_at("msg", end + timedelta(seconds=1)),
            Message.created_at >= start,
            Message.created_at < end,
        )
        .group_by(*dimensions)
    )
    out = []
    for r in session.execute(query):
        row = r._mapping
        out.append(
            CountRow(
                channel=row.get("channel", ""),
                provider=row["provider"],
                category=row["pricing_category"],
                campaign=row.get("campaign_id"),
                status=row["status"],
                price_unit=row["price_unit"],
                test=bool(row["test"]),
                messages=int(row["messages"]),
                billable=int(row["billable"]),
                cost=Decimal(row["cost"]),
            )
        )
    return out


def counted_rows(
    session: Session,
    tenant_id: str,
    start: datetime,
    end: datetime,
    group_by: Iterable[str] = tuple(ROW_FIELD),
) -> list[CountRow]:
    """Every group of the period: whole days, then whole clock hours, from the rollup
    (services/reporting/rollups.py), the partial hours at each end from the messages, so
    the cost is the same for a day or a year of history. Channels and campaigns not in
    `group_by` are added up in the database (their rows read blank)."""
    left_out = _left_out(group_by)
    first_day = datetime.combine(start.date(), time(), UTC)
    first_day += timedelta(days=0 if first_day == start else 1)
    last_day = datetime.combine(end.date(), time(), UTC)
    if first_day >= last_day:
        return _hourly_rows(session, tenant_id, start, end, left_out)
    return [
        *_hourly_rows(session, tenant_id, start, first_day, left_out),
        *outbound_counts(session, tenant_id, first_day, last_day, "day", left_out),
        *_hourly_rows(session, tenant_id, last_day, end, left_out),
    ]


def _hourly_rows(
    session: Session, tenant_id: str, start: datetime, end: datetime, left_out: frozenset[str]
) -> list[CountRow]:
    """Whole clock hours from the rollup, the partial hours at each end scanned."""
    if start >= end:
        return []
    first, last = _hour_ceil(start), _hour_floor(end)
    if first >= last:
        return _scanned(session, tenant_id, start, end, left_out)
    return [
        *_scanned(session, tenant_id, start, first, left_out),
        *outbound_counts(session, tenant_id, first, last, "hour", left_out),
        *_scanned(session, tenant_id, last, end, left_out),
    ]


def usage(
    session: Session,
    tenant_id: str,
    start: datetime,
    end: datetime,
    group_by: Iterable[str] = (),
    test: bool = False,
    rows: list[CountRow] | None = None,
) -> dict[str, Any]:
    """The tenant's outbound messages accepted in [start, end): counts and cost, per
    group (one row per distinct combination of the `group_by` dimensions), and totals.
    Live messages only, or with `test` (a test key's usage) test messages only, which
    are never priced: the two are never added together.

    The period's groups (counted_rows) are folded here, so each group lists its cost
    per currency. `rows`: the period's `counted_rows`, when read already (the console
    shows the live and the test figures of one read)."""
    names = list(group_by)
    prices = None if test else get_settings().meta_prices
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    totals = _empty()
    if rows is None:
        rows = counted_rows(session, tenant_id, start, end, names)
    for row in rows:
        if row.test != test:
            continue
        key = tuple(getattr(row, ROW_FIELD[n]) for n in names)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {**dict(zip(names, key, strict=True)), **_empty()}
        for target in (group, totals):
            _add(target, row, prices)
    data = [_finish(g) for g in groups.values()]
    data.sort(key=lambda g: tuple("" if g[n] is None else str(g[n]) for n in names))
    return {
        "from": _iso(start),
        "to": _iso(end),
        "group_by": names,
        "data": data,
        "totals": _finish(totals),
        "estimated": prices is not None,
        "test": test,
    }


def _totals_fields() -> dict[str, fields.Field]:
    """A group's counts and cost, as `_empty` and `_finish` make them."""

    def money(description: str) -> fields.Dict:
        text = fields.String(metadata={"description": "a decimal, as text"})
        return fields.Dict(keys=fields.String(), values=text, metadata={"description": description})

    return {
        **{name: fields.Integer() for name in COUNTS},
        "cost": money("the providers' prices, per currency"),
        "estimated_cost": money("Meta's billable messages at HERALD_META_PRICES, per currency"),
    }


UsageTotalsView = shape("UsageTotals", _totals_fields())
# A group: the values of its `group_by` dimensions (only those asked), then its totals.
UsageRowView = shape(
    "UsageRow",
    {**{name: fields.String(allow_none=True) for name in GROUPS}, **_totals_fields()},
    optional=GROUPS,
)


class UsageView(Shape):
    """`GET /v1/usage` (`usage`)."""

    from_ = fields.DateTime(data_key="from")
    to = fields.DateTime()
    group_by = fields.List(fields.String())
    data = fields.List(fields.Nested(UsageRowView))
    totals = fields.Nested(UsageTotalsView)
    estimated = fields.Boolean(metadata={"description": "HERALD_META_PRICES is set"})
    test = fields.Boolean(
        metadata={"description": "test messages (a test key's usage): simulated, never priced"}
    )


def _empty() -> dict[str, Any]:
    return {**dict.fromkeys(COUNTS, 0), "cost": {}, "estimated_cost": {}}


def _add(
    target: dict[str, Any], row: CountRow, prices: tuple[str, dict[str, Decimal]] | None
) -> None:
    target["messages"] += row.messages
    for name in COUNTED_AS.get(row.status, ()):
        target[name] += row.messages
    if row.test:  # simulated: nothing billed, whatever a row says
        return
    target["billable"] += row.billable
    if row.price_unit and row.price_unit != "-":
        unit = row.price_unit.upper()
        target["cost"][unit] = target["cost"].get(unit, Decimal(0)) + row.cost
    meta = prices is not None and row.provider == "meta"
    if meta and prices is not None and row.category in prices[1] and row.billable:
        currency, table = prices
        estimate = table[row.category] * row.billable
        target["estimated_cost"][currency] = (
            target["estimated_cost"].get(currency, Decimal(0)) + estimate
        )


def _finish(group: dict[str, Any]) -> dict[str, Any]:
    group["cost"] = {k: _money(v) for k, v in sorted(group["cost"].items())}
    group["estimated_cost"] = {k: _money(v) for k, v in sorted(group["estimated_cost"].items())}
    return group


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.00001")))


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
