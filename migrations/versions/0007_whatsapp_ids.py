"""contacts and messages remember the WhatsApp id (`wa_id`) Meta reports

Revision ID: 0006
Revises: 0005

Meta's `wa_id` can differ from the number dialled (Brazil's ninth digit, Mexico's 521,
Argentina's 549); inbound messages come from the `wa_id`, so the contact keeps it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("contacts", sa.Column("wa_id", sa.String(length=32), nullable=True))
    op.create_index("ix_contacts_tenant_wa_id", "contacts", ["tenant_id", "wa_id"])
    op.add_column("messages", sa.Column("wa_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "wa_id")
    op.drop_index("ix_contacts_tenant_wa_id", table_name="contacts")
    op.drop_column("contacts", "wa_id")
