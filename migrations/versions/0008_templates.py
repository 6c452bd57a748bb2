"""templates: WhatsApp templates synced from Meta and Twilio Content

Revision ID: 0007_templates
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_templates"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("provider_account_id", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("provider_status", sa.String(length=64), nullable=True),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("status_at", sa.DateTime(), nullable=True),
        sa.Column("category", sa.String(length=32), nullable=True),
        sa.Column("variables", sa.JSON(), nullable=False),
        sa.Column("variable_count", sa.Integer(), nullable=False),
        sa.Column("components", sa.JSON(), nullable=True),
        sa.Column("content_sid", sa.String(length=34), nullable=True),
        sa.Column("provider_template_id", sa.String(length=64), nullable=True),
        sa.Column("synced_at", sa.DateTime(), nullable=True),
        sa.Column("deleted_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_templates_tenant_id_tenants"
        ),
        sa.ForeignKeyConstraint(
            ["provider_account_id"],
            ["provider_accounts.id"],
            name="fk_templates_provider_account_id_provider_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_templates"),
        sa.UniqueConstraint("provider_account_id", "content_sid", name="uq_templates_account_sid"),
    )
    op.create_index("ix_templates_tenant_id_id", "templates", ["tenant_id", "id"])
    op.create_index(
        "uq_templates_account_name_language",
        "templates",
        ["provider_account_id", "name", "language"],
        unique=True,
        postgresql_where=sa.text("content_sid IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_templates_account_name_language", table_name="templates")
    op.drop_index("ix_templates_tenant_id_id", table_name="templates")
    op.drop_table("templates")
