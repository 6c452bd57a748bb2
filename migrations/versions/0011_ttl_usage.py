"""messages expire (`expires_at`), carry Meta's pricing category and billable flag and
their recipient's time zones; campaigns keep their quiet hours

Revision ID: 0007_ttl_usage
Revises: 0006

`expires_at` is indexed for the `herald.expire` sweep, which fails waiting rows past it.
`recipient_zones` is the time zone key a campaign row's quiet hours are judged in
(services/quiet_hours.py), filled at campaign creation so the release filters by it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from models.base import UTCDateTime

revision = "0007_ttl_usage"
down_revision = "0007_senders"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("expires_at", UTCDateTime(), nullable=True))
    op.create_index("ix_messages_expires_at", "messages", ["expires_at"])
    op.add_column("messages", sa.Column("pricing_category", sa.String(length=32), nullable=True))
    op.add_column("messages", sa.Column("billable", sa.Boolean(), nullable=True))
    op.add_column("messages", sa.Column("recipient_zones", sa.Text(), nullable=True))
    op.add_column("campaigns", sa.Column("quiet_hours", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("campaigns", "quiet_hours")
    op.drop_column("messages", "recipient_zones")
    op.drop_column("messages", "billable")
    op.drop_column("messages", "pricing_category")
    op.drop_index("ix_messages_expires_at", table_name="messages")
    op.drop_column("messages", "expires_at")
