"""retention per tenant: a setting, a purge that keeps the counts, an index to purge by

Revision ID: 0019_retention
Revises: 0018_sms_segments

`tenants.retention_days` (NULL: the deployment's default, services/lifecycle/retention.py).
The purge (services/lifecycle/) deletes a tenant's messages past it with their events,
deliveries and raw receipts; the rollups must keep counting them, so the count trigger
of 0017 ignores a DELETE made with `herald.retention_purge` set for the transaction (the
guard is added to the function as the database holds it: another migration's change to
it is kept).
`ix_webhook_events_tenant_received` lets the purge find a tenant's old raw receipts
without reading the table (built CONCURRENTLY on a big table, like 0017's indexes).

Nothing is copied or rewritten: the upgrade adds a nullable column (no table rewrite),
replaces a function and adds one index, in place.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_retention"
down_revision = "0018_sms_segments"
branch_labels = None
depends_on = None

BIG = 100_000  # rows (pg_class estimate) from which the index is built CONCURRENTLY
INDEX = "ix_webhook_events_tenant_received"
# A DELETE in a purge transaction leaves the rollups alone: the counts outlive the rows.
GUARD = (
    "BEGIN\n"
    "    IF TG_OP = 'DELETE'"
    " AND coalesce(current_setting('herald.retention_purge', true), '') = 'on' THEN\n"
    "        RETURN NULL;\n"
    "    END IF;\n"
)


def _function() -> str:
    """The count trigger function as the database holds it now (0017's, or as a later
    migration changed it): the guard is added to it, not to a copy of 0017's text."""
    return str(
        op.get_bind()
        .execute(sa.text("SELECT pg_get_functiondef('herald_count_messages'::regproc)"))
        .scalar()
    )


def with_guard(definition: str) -> str:
    """`definition` with the purge guard as its first statement (once)."""
    if GUARD in definition:
        return definition
    assert "BEGIN\n" in definition
    return definition.replace("BEGIN\n", GUARD, 1)


def upgrade() -> None:
    op.add_column("tenants", sa.Column("retention_days", sa.Integer(), nullable=True))
    op.execute(with_guard(_function()))
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT reltuples FROM pg_class WHERE oid = 'webhook_events'::regclass")
    ).scalar()
    columns = "webhook_events (tenant_id, received_at)"
    if (rows or 0) < BIG:
        op.execute(f"CREATE INDEX IF NOT EXISTS {INDEX} ON {columns}")
        return
    with op.get_context().autocommit_block():
        op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON {columns}")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
    op.execute(_function().replace(GUARD, "BEGIN\n", 1))
    op.drop_column("tenants", "retention_days")
