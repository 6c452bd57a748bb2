"""messages.contact_id takes a contact's id as the tenant gave it (up to 128 characters)

Revision ID: 0027_contact_id_length
Revises: 0026_failover

A message sent to a contact records the contact's own id: the tenant's id for it when
it has one (`id` on POST /v1/contacts, up to 128 characters), else Herald's `con_…`.
The column held 32, so a message or campaign to a contact with a longer id failed on
insert. Widening a varchar is a catalog change in PostgreSQL: no rewrite, no index to
rebuild (none covers the column). The downgrade shortens ids that do not fit.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027_contact_id_length"
down_revision = "0026_failover"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("messages", "contact_id", type_=sa.String(128), existing_nullable=True)


def downgrade() -> None:
    op.alter_column(
        "messages",
        "contact_id",
        type_=sa.String(32),
        existing_nullable=True,
        postgresql_using="left(contact_id, 32)",
    )
