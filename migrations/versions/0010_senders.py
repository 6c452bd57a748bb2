"""senders: several numbers, Messaging Services or phone number ids per provider account

Revision ID: 0007_senders
Revises: 0006

A provider account keeps the credentials; each sender is one address it sends from.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0007_senders"
down_revision = "0007_media"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "senders",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("provider_account_id", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("number", sa.String(length=32), nullable=True),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("mps", sa.Numeric(precision=10, scale=3), nullable=True),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("created_at", models.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_senders_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["provider_account_id"],
            ["provider_accounts.id"],
            name=op.f("fk_senders_provider_account_id_provider_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_senders")),
        sa.UniqueConstraint("provider", "address", name="uq_senders_provider_address"),
    )
    op.create_index(op.f("ix_senders_tenant_id"), "senders", ["tenant_id"])
    op.create_index(op.f("ix_senders_provider_account_id"), "senders", ["provider_account_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_senders_provider_account_id"), table_name="senders")
    op.drop_index(op.f("ix_senders_tenant_id"), table_name="senders")
    op.drop_table("senders")
