"""webhook_inbox: provider callbacks received and not yet applied

Revision ID: 0007_perf_callbacks
Revises: 0006

The status callback webhook answers once its one INSERT here commits; an applier takes
rows in batches, applies them set-based and deletes them (issue 12).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0007_perf_callbacks"
down_revision = "0007_ttl_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_inbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("dedup_key", sa.String(length=255), nullable=False),
        sa.Column("accounts", sa.JSON(), nullable=False),
        sa.Column("ref", sa.String(length=64), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("received_at", models.base.UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", models.base.UTCDateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_inbox")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_webhook_inbox_dedup_key")),
    )


def downgrade() -> None:
    op.drop_table("webhook_inbox")
