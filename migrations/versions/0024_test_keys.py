"""test keys: a key's type, messages and campaigns marked test, test counted apart;
campaigns' cost estimates

Revision ID: 0024_test_keys
Revises: 0023_event_fks

Cost estimates: `tenants.sms_prices` (the operator's price per SMS segment per country,
NULL: none) and `campaigns.estimated_cost` (worked out at creation, NULL: none), both
nullable, no rewrite (services/content/prices.py).

`api_keys.type` is `live` (every existing key) or `test`. A message or campaign
accepted with a test key is `test` (services/messages/simulation.py sends it to the
simulator, never to a provider). The rollups of 0017 get `test` in their key, so usage
and /metrics count test messages apart and never price them: the count trigger is
replaced by the same function with `test` beside `tenant_id` (the purge guard of 0019
kept), and `message_counts`'s primary key and `message_status_totals`'s take it too.
`ix_messages_tenant_test_id` serves a test key's list of messages (test rows only: as
small as the tests sent).

The columns are added with a constant default: no table rewrite on PostgreSQL 11+.
Every existing row is live; the rollups need no backfill.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024_test_keys"
down_revision = "0023_event_fks"
branch_labels = None
depends_on = None

BIG = 100_000  # rows (pg_class estimate) from which the index is built CONCURRENTLY
INDEX = "ix_messages_tenant_test_id ON messages (tenant_id, id) WHERE test"
GUARD = (
    "    IF TG_OP = 'DELETE'"
    " AND coalesce(current_setting('herald.retention_purge', true), '') = 'on' THEN\n"
    "        RETURN NULL;\n"
    "    END IF;\n"
)


def _function(test: bool) -> str:
    """The count trigger function of 0017 with 0019's purge guard, with or without
    `test` in the rollup key."""
    t = "test, " if test else ""
    o, n = ("o.test, ", "n.test, ") if test else ("", "")
    key = (
        f"tenant_id, {t}hour, direction, channel, provider, category, campaign_id, status,"
        " price_unit"
    )
    row_key = (
        f"tenant_id, {t}date_trunc('hour', created_at), direction, channel, provider,"
        " coalesce(pricing_category, ''), coalesce(campaign_id, ''), status,"
        " coalesce(price_unit, '')"
    )
    groups = ", ".join(str(i) for i in range(1, 11 if test else 10))
    compared = (
        "status, price, price_unit, pricing_category, billable, campaign_id, channel,"
        f" provider, tenant_id, direction, created_at{', test' if test else ''}"
    )
    o_cmp = ", ".join(f"o.{c.strip()}" for c in compared.split(","))
    n_cmp = ", ".join(f"n.{c.strip()}" for c in compared.split(","))
    return f"""
CREATE OR REPLACE FUNCTION herald_count_messages() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
{GUARD}    IF TG_OP = 'INSERT' THEN
        INSERT INTO message_count_deltas ({key}, messages, billable, cost)
        SELECT {row_key}, count(*), count(*) FILTER (WHERE billable), coalesce(sum(price), 0)
        FROM new_rows GROUP BY {groups};
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO message_count_deltas ({key}, messages, billable, cost)
        SELECT {key}, sum(messages), sum(billable), sum(cost) FROM (
            SELECT o.tenant_id, {o}date_trunc('hour', o.created_at) AS hour, o.direction,
                o.channel, o.provider, coalesce(o.pricing_category, '') AS category,
                coalesce(o.campaign_id, '') AS campaign_id, o.status,
                coalesce(o.price_unit, '') AS price_unit, -1 AS messages,
                -(CASE WHEN o.billable THEN 1 ELSE 0 END) AS billable,
                -coalesce(o.price, 0) AS cost
            FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE ({o_cmp}) IS DISTINCT FROM ({n_cmp})
            UNION ALL
            SELECT n.tenant_id, {n}date_trunc('hour', n.created_at), n.direction,
                n.channel, n.provider, coalesce(n.pricing_category, ''),
                coalesce(n.campaign_id, ''), n.status, coalesce(n.price_unit, ''), 1,
                CASE WHEN n.billable THEN 1 ELSE 0 END, coalesce(n.price, 0)
            FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE ({o_cmp}) IS DISTINCT FROM ({n_cmp})
        ) AS change
        GROUP BY {key}
        HAVING sum(messages) <> 0 OR sum(billable) <> 0 OR sum(cost) <> 0;
    ELSE
        INSERT INTO message_count_deltas ({key}, messages, billable, cost)
        SELECT {row_key}, -count(*), -count(*) FILTER (WHERE billable),
            -coalesce(sum(price), 0)
        FROM old_rows GROUP BY {groups};
    END IF;
    RETURN NULL;
END
$$
"""


COUNTS_KEY = (
    "tenant_id, span, start, direction, channel, provider, category, campaign_id, status,"
    " price_unit"
)


def _test_column() -> sa.Column:
    return sa.Column("test", sa.Boolean(), nullable=False, server_default=sa.false())


def upgrade() -> None:
    op.add_column(
        "api_keys", sa.Column("type", sa.String(8), nullable=False, server_default="live")
    )
    op.add_column("messages", _test_column())
    op.add_column("campaigns", _test_column())
    op.add_column("tenants", sa.Column("sms_prices", sa.JSON(), nullable=True))
    op.add_column("campaigns", sa.Column("estimated_cost", sa.JSON(), nullable=True))
    # Writers wait from here to the commit: no delta is written under the old key.
    op.execute("LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE")
    op.add_column("message_count_deltas", _test_column())
    op.add_column("message_counts", _test_column())
    op.add_column("message_status_totals", _test_column())
    op.execute("ALTER TABLE message_counts DROP CONSTRAINT pk_message_counts")
    op.execute(
        f"ALTER TABLE message_counts ADD CONSTRAINT pk_message_counts"
        f" PRIMARY KEY ({COUNTS_KEY}, test)"
    )
    op.execute("ALTER TABLE message_status_totals DROP CONSTRAINT pk_message_status_totals")
    op.execute(
        "ALTER TABLE message_status_totals ADD CONSTRAINT pk_message_status_totals"
        " PRIMARY KEY (direction, status, test)"
    )
    op.execute(_function(test=True))
    rows = (
        op.get_bind()
        .execute(sa.text("SELECT reltuples FROM pg_class WHERE oid = 'messages'::regclass"))
        .scalar()
    )
    if (rows or 0) < BIG:
        op.execute(f"CREATE INDEX IF NOT EXISTS {INDEX}")
        return
    with op.get_context().autocommit_block():
        op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX}")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_messages_tenant_test_id")
    op.execute("LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE")
    op.execute(_function(test=False))
    # The test messages stay, as live ones (the column goes): their counts go back into the
    # live key as deltas (the hourly rows; the fold adds them to the days and the totals).
    rest = "direction, channel, provider, category, campaign_id, status, price_unit"
    op.execute(
        f"INSERT INTO message_count_deltas (tenant_id, hour, {rest}, messages, billable, cost,"
        f" test) SELECT tenant_id, start, {rest}, messages, billable, cost, false"
        " FROM message_counts WHERE test AND span = 'hour'"
    )
    op.execute("DELETE FROM message_counts WHERE test")
    op.execute("DELETE FROM message_status_totals WHERE test")
    op.execute("UPDATE message_count_deltas SET test = false WHERE test")
    op.execute("ALTER TABLE message_status_totals DROP CONSTRAINT pk_message_status_totals")
    op.execute(
        "ALTER TABLE message_status_totals ADD CONSTRAINT pk_message_status_totals"
        " PRIMARY KEY (direction, status)"
    )
    op.execute("ALTER TABLE message_counts DROP CONSTRAINT pk_message_counts")
    op.execute(
        f"ALTER TABLE message_counts ADD CONSTRAINT pk_message_counts PRIMARY KEY ({COUNTS_KEY})"
    )
    for table in ("message_status_totals", "message_counts", "message_count_deltas"):
        op.drop_column(table, "test")
    op.drop_column("campaigns", "estimated_cost")
    op.drop_column("tenants", "sms_prices")
    op.drop_column("campaigns", "test")
    op.drop_column("messages", "test")
    op.drop_column("api_keys", "type")
