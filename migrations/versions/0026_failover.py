"""channel failover: a WhatsApp message sent again as an SMS, once

Revision ID: 0026_failover
Revises: 0025_bsuid

`failover_pending` marks a WhatsApp message that asked for a fallback and whose outcome
is not settled yet; `failover_at` is its deadline (NULL: only a failure triggers it).
The failover sweep (services/messages/failover.py) reads `ix_messages_failover_pending`,
which holds only those rows, so it stays as small as what is in flight with a fallback.

`failover_of` names, on the fallback, the message it stands in for: unique, so a crash,
a retried sweep or a duplicate callback can never create two fallbacks of one message.
`failover_id` names the fallback on the original. All four are NULL on existing rows
(no rewrite). `tenants.failover` is a tenant's default policy (NULL: none).

Provider failover: `senders.priority` (NULL: none) puts a sender in its tenant's failover
order for its channels (services/policy/health.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from models.base import UTCDateTime

revision = "0026_failover"
down_revision = "0025_bsuid"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("failover", sa.JSON(), nullable=True))
    op.add_column("senders", sa.Column("priority", sa.Integer(), nullable=True))
    op.add_column("messages", sa.Column("failover_pending", sa.Boolean(), nullable=True))
    op.add_column("messages", sa.Column("failover_at", UTCDateTime(), nullable=True))
    op.add_column("messages", sa.Column("failover_of", sa.String(32), nullable=True))
    op.add_column("messages", sa.Column("failover_id", sa.String(32), nullable=True))
    op.create_unique_constraint("uq_messages_failover_of", "messages", ["failover_of"])
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_messages_failover_pending ON messages (failover_at)"
        " WHERE failover_pending"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_messages_failover_pending")
    op.drop_constraint("uq_messages_failover_of", "messages", type_="unique")
    for name in ("failover_id", "failover_of", "failover_at", "failover_pending"):
        op.drop_column("messages", name)
    op.drop_column("tenants", "failover")
    op.drop_column("senders", "priority")
