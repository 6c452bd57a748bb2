"""messages remember whether an unauthenticated seed caller created them

Revision ID: 0005
Revises: 0003

Unauthenticated calls to the seeds' routes (HERALD_LEGACY_TENANT) get their own
Idempotency-Key space and read only their own messages: `origin` is 'legacy' for
them, 'api' for everything else, and idempotency keys are unique per origin.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004_webhook_scope"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column("origin", sa.String(length=16), nullable=False, server_default="api")
        )
        batch.drop_constraint("uq_messages_idempotency", type_="unique")
        batch.create_unique_constraint(
            "uq_messages_idempotency", ["tenant_id", "origin", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint("uq_messages_idempotency", type_="unique")
        batch.create_unique_constraint("uq_messages_idempotency", ["tenant_id", "idempotency_key"])
        batch.drop_column("origin")
