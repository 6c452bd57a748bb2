"""Message counts kept as they change, so usage, campaign progress and /metrics cost
the same at any table size.

A statement-level trigger on `messages` (migration 0017_flat_reads) appends one grouped
delta row per statement and rollup key to `message_count_deltas`: one extra insert per
statement, whatever the batch size, and no shared counter row for concurrent writers
to queue on. `fold` (beat, every few seconds) moves the deltas into `message_counts`
(tenant, clock hour and day, direction, channel, provider, pricing category, campaign, status,
price unit, test: messages, billable, cost) and `message_status_totals`. Readers add the
deltas not folded yet, so a read is exact whenever it runs.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

KEY = (
    "tenant_id",
    "hour",
    "direction",
    "channel",
    "provider",
    "category",
    "campaign_id",
    "status",
    "price_unit",
    "test",  # a test key's messages (migration 0024_test_keys): counted apart, never priced
)
_KEY = ", ".join(KEY)
_REST = ", ".join(KEY[2:])
# message_counts: each delta is counted in its clock hour and in its day (`span`).
_COUNTS_KEY = f"tenant_id, span, start, {_REST}"
FOLD_BATCH = 50_000
FOLD_LOCK = 0x6865_7261_6C64  # pg advisory lock key: one fold at a time

_FOLD = text(
    f"""
    WITH moved AS (
        DELETE FROM message_count_deltas
        WHERE id IN (SELECT id FROM message_count_deltas ORDER BY id LIMIT :batch)
        RETURNING {_KEY}, messages, billable, cost
    ), grouped AS (
        SELECT {_KEY}, sum(messages) AS messages, sum(billable) AS billable,
            sum(cost) AS cost
        FROM moved GROUP BY {_KEY}
    ), spans AS (
        SELECT tenant_id, 'hour' AS span, hour AS start, {_REST}, messages, billable, cost
        FROM grouped
        UNION ALL
        SELECT tenant_id, 'day', date_trunc('day', hour), {_REST}, sum(messages),
            sum(billable), sum(cost)
        FROM grouped GROUP BY tenant_id, date_trunc('day', hour), {_REST}
    ), counted AS (
        INSERT INTO message_counts ({_COUNTS_KEY}, messages, billable, cost)
        SELECT {_COUNTS_KEY}, messages, billable, cost FROM spans ORDER BY {_COUNTS_KEY}
        ON CONFLICT ({_COUNTS_KEY}) DO UPDATE SET
            messages = message_counts.messages + excluded.messages,
            billable = message_counts.billable + excluded.billable,
            cost = message_counts.cost + excluded.cost
        RETURNING {_COUNTS_KEY}, messages, billable, cost
    ), totals AS (
        INSERT INTO message_status_totals (direction, status, test, messages)
        SELECT direction, status, test, sum(messages) FROM grouped
        GROUP BY direction, status, test ORDER BY direction, status, test
        ON CONFLICT (direction, status, test) DO UPDATE SET
            messages = message_status_totals.messages + excluded.messages
    )
    SELECT (SELECT count(*) FROM moved) AS moved,
        (SELECT json_agg(json_build_array({_COUNTS_KEY})) FROM counted
         WHERE messages = 0 AND billable = 0 AND cost = 0) AS emptied
    """
)
_DROP_EMPTY = text(
    f"""
    DELETE FROM message_counts c
    USING json_array_elements(CAST(:keys AS json)) AS k
    WHERE ({_COUNTS_KEY}) = (k->>0, k->>1, CAST(k->>2 AS timestamp), k->>3, k->>4,
        k->>5, k->>6, k->>7, k->>8, k->>9, CAST(k->>10 AS boolean))
      AND c.messages = 0 AND c.billable = 0 AND c.cost = 0
    """
)


def fold(session: Session, batch: int = FOLD_BATCH) -> int:
    """Move pending deltas into the rollups (at most `batch` per call); returns how many.
    Rollup rows that came back to zero (every message moved on to another status) go."""
    if not session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": FOLD_LOCK}).scalar():
        return 0  # another fold is running
    moved, emptied = session.execute(_FOLD, {"batch": batch}).one()
    if emptied:
        session.execute(_DROP_EMPTY, {"keys": json.dumps(emptied)})
    return int(moved or 0)


def fold_all(max_batches: int = 20) -> int:
    """Fold until no delta is left (bounded): the beat task."""
    from models import session_scope

    total = 0
    for _ in range(max_batches):
        with session_scope() as session:
            moved = fold(session)
        total += moved
        if moved < FOLD_BATCH:
            break
    if total:
        log.debug("folded %d message count deltas", total)
    return total


@dataclass
class CountRow:
    """One rollup group: the counts of messages sharing every key column."""

    channel: str
    provider: str
    category: str | None
    campaign: str | None
    status: str
    price_unit: str | None
    messages: int
    billable: int
    cost: Decimal
    test: bool = False


def _row(values: Any) -> CountRow:
    return CountRow(
        channel=values.channel,
        provider=values.provider,
        category=values.category or None,
        campaign=values.campaign_id or None,
        status=values.status,
        price_unit=values.price_unit or None,
        messages=int(values.messages),
        billable=int(values.billable),
        cost=Decimal(values.cost),
        test=bool(values.test),
    )


_GROUP = ("channel", "provider", "category", "campaign_id", "status", "price_unit", "test")
# What a usage read may leave out when it does not group by it: a tenant's groups are
# mostly its campaigns, so a period's total reads a group per status, not per campaign.
LEAVE_OUT = {"channel": "channel", "campaign": "campaign_id"}


@functools.cache
def _tenant_counts(left_out: frozenset[str]) -> TextClause:
    kept = ", ".join(k for k in _GROUP if k not in left_out)
    outer = ", ".join(f"'' AS {k}" if k in left_out else k for k in _GROUP)
    return text(
        f"""
        SELECT {outer}, sum(messages) AS messages, sum(billable) AS billable,
            sum(cost) AS cost
        FROM (
            SELECT {kept}, messages, billable, cost FROM message_counts
            WHERE tenant_id = :tenant AND span = :span AND start >= :start AND start < :end
              AND direction = 'outbound'
            UNION ALL
            SELECT {kept}, messages, billable, cost FROM message_count_deltas
            WHERE tenant_id = :tenant AND hour >= :start AND hour < :end
              AND direction = 'outbound'
        ) AS counted
        GROUP BY {kept}
        HAVING sum(messages) <> 0 OR sum(billable) <> 0 OR sum(cost) <> 0
        """
    )


def outbound_counts(
    session: Session,
    tenant_id: str,
    start: datetime,
    end: datetime,
    span: str = "hour",
    left_out: frozenset[str] = frozenset(),
) -> list[CountRow]:
    """The tenant's outbound message groups created in [start, end), whole hours (or
    whole days with span 'day'); the `left_out` columns (of LEAVE_OUT's) added up."""
    params = {"tenant": tenant_id, "start": _naive(start), "end": _naive(end), "span": span}
    return [_row(r) for r in session.execute(_tenant_counts(left_out), params)]


_CAMPAIGNS = text(
    """
    SELECT campaign_id, status, sum(messages) FROM (
        SELECT campaign_id, status, messages FROM message_counts
        WHERE campaign_id = ANY(:campaigns) AND campaign_id <> '' AND span = 'day'
          AND tenant_id = :tenant
        UNION ALL
        SELECT campaign_id, status, messages FROM message_count_deltas
        WHERE tenant_id = :tenant AND campaign_id = ANY(:campaigns)
    ) AS counted
    GROUP BY campaign_id, status
    """
)


def campaign_status_counts(session: Session, tenant_id: str, campaign_id: str) -> dict[str, int]:
    """A campaign's messages per current status, from the rollup."""
    return campaigns_status_counts(session, tenant_id, [campaign_id])[campaign_id]


def campaigns_status_counts(
    session: Session, tenant_id: str, campaign_ids: list[str]
) -> dict[str, dict[str, int]]:
    """Several campaigns' messages per current status in one read: a list page costs
    one statement, not one per campaign."""
    out: dict[str, dict[str, int]] = {c: {} for c in campaign_ids}
    if campaign_ids:
        params = {"tenant": tenant_id, "campaigns": list(campaign_ids)}
        for campaign_id, status, n in session.execute(_CAMPAIGNS, params):
            if n:
                out[campaign_id][status] = int(n)
    return out


_TOTALS = text(
    """
    SELECT status, test, sum(messages) FROM (
        SELECT status, test, messages FROM message_status_totals
        UNION ALL
        SELECT status, test, messages FROM message_count_deltas
    ) AS counted
    GROUP BY status, test
    """
)


def status_totals(session: Session) -> dict[tuple[str, bool], int]:
    """Messages per status and test flag, every tenant and direction (the /metrics gauge)."""
    return {(status, bool(test)): int(n) for status, test, n in session.execute(_TOTALS) if n}


def _naive(value: datetime) -> datetime:
    """The rollup's hours are naive UTC, like every stored time."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


_HOURLY = text(
    """
    SELECT hour, status, sum(messages) FROM (
        SELECT start AS hour, status, messages FROM message_counts
        WHERE tenant_id = :tenant AND span = 'hour' AND start >= :start AND start < :end
            AND test = :test
        UNION ALL
        SELECT hour, status, messages FROM message_count_deltas
        WHERE tenant_id = :tenant AND hour >= :start AND hour < :end AND test = :test
    ) AS counted
    GROUP BY hour, status
    HAVING sum(messages) <> 0
    """
)


def hourly_status_counts(
    session: Session, tenant_id: str, start: datetime, end: datetime, *, test: bool = False
) -> list[tuple[datetime, str, int]]:
    """The tenant's messages (both directions) of one mode (live unless `test`) per clock
    hour and current status, for the whole hours in [start, end); hours are returned
    aware (UTC)."""
    params = {"tenant": tenant_id, "start": _naive(start), "end": _naive(end), "test": test}
    return [
        (hour.replace(tzinfo=UTC), status, int(n))
        for hour, status, n in session.execute(_HOURLY, params)
    ]
