"""a person's erasure reads what names them, not all of a tenant's rows

Revision ID: 0028_erasure_reads
Revises: 0027_contact_id_length

An erasure finds a person's messages by number (indexed since 0017), by contact id and by
BSUID, and their raw receipts by message id and, for receipts tied to no message, by text.
The last three read every row of the tenant: a tenant with tens of millions of rows in its
retention window waited tens of seconds on `DELETE /v1/contacts/<id>`. Three partial
indexes hold only the rows that can match: messages that name a contact, messages that
name a BSUID, receipts tied to no message. Built CONCURRENTLY on a big table, like 0017's.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028_erasure_reads"
down_revision = "0027_contact_id_length"
branch_labels = None
depends_on = None

BIG = 100_000  # rows (pg_class estimate) from which indexes are built CONCURRENTLY
INDEXES = {
    "ix_messages_tenant_contact": (
        "messages (tenant_id, contact_id) WHERE contact_id IS NOT NULL",
        "messages",
    ),
    "ix_messages_tenant_wa_user": (
        "messages (tenant_id, wa_user_id) WHERE wa_user_id IS NOT NULL",
        "messages",
    ),
    "ix_webhook_events_unmatched": (
        "webhook_events (tenant_id) WHERE message_id IS NULL",
        "webhook_events",
    ),
}


def upgrade() -> None:
    bind = op.get_bind()
    for name, (definition, table) in INDEXES.items():
        rows = bind.execute(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = CAST(:t AS regclass)"),
            {"t": table},
        ).scalar()
        if (rows or 0) < BIG:
            op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")
            continue
        with op.get_context().autocommit_block():
            op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {definition}")


def downgrade() -> None:
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
