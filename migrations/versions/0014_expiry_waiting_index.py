"""the expiry sweep's index holds only rows still waiting with a ttl

Revision ID: 0014_expiry_waiting_index
Revises: 0007_perf_send

`ix_messages_expires_at` indexed every message ever sent with a ttl; the sweep reads
only the ones still `scheduled` or `queued`. The partial index keeps just those, so it
stays as small as what is waiting, whatever the table's size.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_expiry_waiting_index"
down_revision = "0007_perf_send"
branch_labels = None
depends_on = None

WAITING = "expires_at IS NOT NULL AND status IN ('scheduled', 'queued')"


def upgrade() -> None:
    op.create_index(
        "ix_messages_expires_waiting",
        "messages",
        ["expires_at"],
        postgresql_where=sa.text(WAITING),
    )
    op.drop_index("ix_messages_expires_at", table_name="messages")


def downgrade() -> None:
    op.create_index("ix_messages_expires_at", "messages", ["expires_at"])
    op.drop_index("ix_messages_expires_waiting", table_name="messages")
