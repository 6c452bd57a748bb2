"""media uploaded once and sent many times (`POST /v1/media`); campaigns carry options

Revision ID: 0007_media
Revises: 0006

Meta forgets uploaded media after 30 days, so each row keeps `expires_at`; a message
naming an expired one is refused when it is accepted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0007_media"
down_revision = "0007_templates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "media",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("provider_account_id", sa.String(length=32), nullable=False),
        sa.Column("provider_media_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("mime_type", sa.String(length=128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", models.base.UTCDateTime(), nullable=False),
        sa.Column("expires_at", models.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_media_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["provider_account_id"],
            ["provider_accounts.id"],
            name=op.f("fk_media_provider_account_id_provider_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_media")),
    )
    op.create_index("ix_media_tenant_id_id", "media", ["tenant_id", "id"])
    op.add_column("campaigns", sa.Column("options", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("campaigns", "options")
    op.drop_index("ix_media_tenant_id_id", table_name="media")
    op.drop_table("media")
