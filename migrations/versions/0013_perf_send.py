"""messages can be parked until a due time (`not_before`), with their send slot reserved

Revision ID: 0007_perf_send
Revises: 0006

A message waiting for its sender's budget, or for a held sender, is a row with a due
time that the beat releases, not a task re-queued with a countdown: 2,000 messages
waiting on a 10 msg/s sender cost one indexed query a second, not 2,000 tasks spinning.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_perf_send"
down_revision = "0007_perf_callbacks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("not_before", sa.DateTime(), nullable=True))
    op.add_column(
        "messages",
        sa.Column("slot_reserved", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_messages_not_before",
        "messages",
        ["not_before"],
        postgresql_where=sa.text("not_before IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_not_before", table_name="messages")
    op.drop_column("messages", "slot_reserved")
    op.drop_column("messages", "not_before")
