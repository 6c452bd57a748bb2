"""every read and periodic pass served by an index or a rollup, not a scan

Revision ID: 0017_flat_reads
Revises: 0016_verify_token_hash

Indexes: each list filter leads with tenant_id, then the filter, then id (keyset
pagination newest first); small partial indexes for what the periodic passes read
(queued rows by age, scheduled rows by due time, a campaign's waiting rows, Twilio
messages still to reconcile or price). `ix_messages_campaign_id` goes: the unique
(campaign_id, to_number) index already leads with campaign_id.

Rollups: `message_counts` (per tenant, clock hour and day, and every dimension
`GET /v1/usage` groups by) and `message_status_totals` (per direction and status), so
usage, campaign progress and /metrics sum a few rollup rows, not the messages. A statement-level
trigger on `messages` appends one grouped delta per statement to
`message_count_deltas` (append-only: concurrent writers never wait on a counter row);
`services/reporting/rollups.py` folds the deltas in, and readers add the deltas not
yet folded. The rollups are backfilled from the existing rows under a lock that holds
writers off for the backfill, so no change is counted twice or lost.

On a big `messages` table (an in-place upgrade) the indexes are built CONCURRENTLY,
outside the migration's transaction; a small one builds them in it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_flat_reads"
down_revision = "0016_verify_token_hash"
branch_labels = None
depends_on = None

REPLACED = "ix_messages_campaign_id"  # the unique (campaign_id, to_number) index serves it
BIG = 100_000  # rows (pg_class estimate) from which indexes are built CONCURRENTLY

TWILIO_OUT = "provider = 'twilio' AND direction = 'outbound' AND provider_message_id IS NOT NULL"
# name, columns, partial predicate
INDEXES: list[tuple[str, str, str | None]] = [
    ("ix_messages_tenant_status_id", "tenant_id, status, id", None),
    ("ix_messages_tenant_to_id", "tenant_id, to_number, id", None),
    ("ix_messages_tenant_from_id", "tenant_id, from_number, id", "from_number IS NOT NULL"),
    ("ix_messages_tenant_campaign_id", "tenant_id, campaign_id, id", "campaign_id IS NOT NULL"),
    ("ix_messages_campaign_waiting", "campaign_id, id", "status = 'scheduled'"),
    ("ix_messages_campaign_sent_at", "campaign_id, sent_at", "campaign_id IS NOT NULL"),
    ("ix_messages_scheduled_due", "send_at", "status = 'scheduled' AND send_at IS NOT NULL"),
    ("ix_messages_queued_updated", "updated_at", "status = 'queued'"),
    (
        "ix_messages_twilio_unsettled",
        "created_at",
        f"{TWILIO_OUT} AND status IN ('sending', 'sent')",
    ),
    (
        "ix_messages_twilio_unpriced",
        "created_at",
        f"{TWILIO_OUT} AND status IN ('delivered', 'read', 'undelivered')"
        " AND price IS NULL AND price_unit IS NULL",
    ),
]

KEY = "tenant_id, hour, direction, channel, provider, category, campaign_id, status, price_unit"
# The rollup's key: each delta counted in its clock hour and in its day (`span`).
COUNTS_KEY = (
    "tenant_id, span, start, direction, channel, provider, category, campaign_id, status,"
    " price_unit"
)
# The rollup key of a message row (NULLs as '' so the key is unique and groupable).
ROW_KEY = (
    "tenant_id, date_trunc('hour', created_at), direction, channel, provider,"
    " coalesce(pricing_category, ''), coalesce(campaign_id, ''), status,"
    " coalesce(price_unit, '')"
)

TRIGGER_FUNCTION = f"""
CREATE OR REPLACE FUNCTION herald_count_messages() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO message_count_deltas ({KEY}, messages, billable, cost)
        SELECT {ROW_KEY}, count(*), count(*) FILTER (WHERE billable), coalesce(sum(price), 0)
        FROM new_rows GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO message_count_deltas ({KEY}, messages, billable, cost)
        SELECT {KEY}, sum(messages), sum(billable), sum(cost) FROM (
            SELECT o.tenant_id, date_trunc('hour', o.created_at) AS hour, o.direction,
                o.channel, o.provider, coalesce(o.pricing_category, '') AS category,
                coalesce(o.campaign_id, '') AS campaign_id, o.status,
                coalesce(o.price_unit, '') AS price_unit, -1 AS messages,
                -(CASE WHEN o.billable THEN 1 ELSE 0 END) AS billable,
                -coalesce(o.price, 0) AS cost
            FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE (o.status, o.price, o.price_unit, o.pricing_category, o.billable,
                   o.campaign_id, o.channel, o.provider, o.tenant_id, o.direction,
                   o.created_at)
                IS DISTINCT FROM
                  (n.status, n.price, n.price_unit, n.pricing_category, n.billable,
                   n.campaign_id, n.channel, n.provider, n.tenant_id, n.direction,
                   n.created_at)
            UNION ALL
            SELECT n.tenant_id, date_trunc('hour', n.created_at), n.direction,
                n.channel, n.provider, coalesce(n.pricing_category, ''),
                coalesce(n.campaign_id, ''), n.status, coalesce(n.price_unit, ''), 1,
                CASE WHEN n.billable THEN 1 ELSE 0 END, coalesce(n.price, 0)
            FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE (o.status, o.price, o.price_unit, o.pricing_category, o.billable,
                   o.campaign_id, o.channel, o.provider, o.tenant_id, o.direction,
                   o.created_at)
                IS DISTINCT FROM
                  (n.status, n.price, n.price_unit, n.pricing_category, n.billable,
                   n.campaign_id, n.channel, n.provider, n.tenant_id, n.direction,
                   n.created_at)
        ) AS change
        GROUP BY {KEY}
        HAVING sum(messages) <> 0 OR sum(billable) <> 0 OR sum(cost) <> 0;
    ELSE
        INSERT INTO message_count_deltas ({KEY}, messages, billable, cost)
        SELECT {ROW_KEY}, -count(*), -count(*) FILTER (WHERE billable),
            -coalesce(sum(price), 0)
        FROM old_rows GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9;
    END IF;
    RETURN NULL;
END
$$
"""

TRIGGERS = (
    "CREATE TRIGGER messages_count_insert AFTER INSERT ON messages"
    " REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"
    " EXECUTE FUNCTION herald_count_messages()",
    "CREATE TRIGGER messages_count_update AFTER UPDATE ON messages"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT"
    " EXECUTE FUNCTION herald_count_messages()",
    "CREATE TRIGGER messages_count_delete AFTER DELETE ON messages"
    " REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT"
    " EXECUTE FUNCTION herald_count_messages()",
)


def _key_columns() -> list[sa.Column]:
    return [
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("hour", sa.DateTime(), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("campaign_id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("price_unit", sa.String(8), nullable=False),
    ]


def _sums() -> list[sa.Column]:
    return [
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.Column("billable", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Numeric(18, 5), nullable=False),
    ]


def upgrade() -> None:
    columns = _key_columns()
    columns[1] = sa.Column("start", sa.DateTime(), nullable=False)
    op.create_table(
        "message_counts",
        sa.Column("span", sa.String(4), nullable=False),  # 'hour' | 'day'
        *columns,
        *_sums(),
        sa.PrimaryKeyConstraint(*COUNTS_KEY.split(", "), name="pk_message_counts"),
    )
    op.create_index(
        "ix_message_counts_campaign",
        "message_counts",
        ["campaign_id", "status"],
        postgresql_where=sa.text("campaign_id <> '' AND span = 'day'"),
    )
    op.create_table(
        "message_status_totals",
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("messages", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("direction", "status", name="pk_message_status_totals"),
    )
    op.create_table(
        "message_count_deltas",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        *_key_columns(),
        *_sums(),
    )
    op.create_index("ix_message_count_deltas_tenant", "message_count_deltas", ["tenant_id"])
    op.execute(TRIGGER_FUNCTION)
    # Writers wait from here to the commit: the backfill and the trigger see the same rows.
    op.execute("LOCK TABLE messages IN SHARE ROW EXCLUSIVE MODE")
    for statement in TRIGGERS:
        op.execute(statement)
    op.execute(
        f"INSERT INTO message_counts ({COUNTS_KEY}, messages, billable, cost)"
        f" SELECT tenant_id, 'hour', {ROW_KEY.split(', ', 1)[1]}, count(*),"
        " count(*) FILTER (WHERE billable), coalesce(sum(price), 0)"
        " FROM messages GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10"
    )
    rest = "direction, channel, provider, category, campaign_id, status, price_unit"
    op.execute(
        f"INSERT INTO message_counts ({COUNTS_KEY}, messages, billable, cost)"
        f" SELECT tenant_id, 'day', date_trunc('day', start), {rest}, sum(messages),"
        " sum(billable), sum(cost) FROM message_counts WHERE span = 'hour'"
        f" GROUP BY tenant_id, date_trunc('day', start), {rest}"
    )
    op.execute(
        "INSERT INTO message_status_totals (direction, status, messages)"
        " SELECT direction, status, sum(messages) FROM message_counts WHERE span = 'day'"
        " GROUP BY direction, status"
    )
    _create_indexes()


def _create_indexes() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT reltuples FROM pg_class WHERE oid = 'messages'::regclass")
    ).scalar()
    big = (rows or 0) >= BIG

    def statements(concurrently: bool) -> list[str]:
        how = "CONCURRENTLY IF NOT EXISTS" if concurrently else "IF NOT EXISTS"
        return [
            f"CREATE INDEX {how} {name} ON messages ({columns})"
            + (f" WHERE {where}" if where else "")
            for name, columns, where in INDEXES
        ] + [f"DROP INDEX {'CONCURRENTLY ' if concurrently else ''}IF EXISTS {REPLACED}"]

    if not big:
        for statement in statements(False):
            op.execute(statement)
        return
    with op.get_context().autocommit_block():
        for statement in statements(True):
            op.execute(statement)


def downgrade() -> None:
    op.create_index("ix_messages_campaign_id", "messages", ["campaign_id"])
    for name, _, _ in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    for name in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS messages_count_{name} ON messages")
    op.execute("DROP FUNCTION IF EXISTS herald_count_messages()")
    op.drop_table("message_count_deltas")
    op.drop_table("message_status_totals")
    op.drop_index("ix_message_counts_campaign", table_name="message_counts")
    op.drop_table("message_counts")
