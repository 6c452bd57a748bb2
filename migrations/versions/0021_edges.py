"""GET /v1/campaigns pages by (tenant_id, id)

Revision ID: 0021_edges
Revises: 0020_erasure

The campaign list is newest first, keyed on the id (time-ordered) within a tenant, as
the message list is. `ix_campaigns_tenant_id` found the tenant's campaigns but left
them to be sorted whole for every page; (tenant_id, id) hands a page over in order,
its own rows only, and serves every lookup by tenant the old index served.
"""

from __future__ import annotations

from alembic import op

revision = "0021_edges"
down_revision = "0020_erasure"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_campaigns_tenant_id_id", "campaigns", ["tenant_id", "id"])
    op.drop_index("ix_campaigns_tenant_id", table_name="campaigns")


def downgrade() -> None:
    op.create_index("ix_campaigns_tenant_id", "campaigns", ["tenant_id"])
    op.drop_index("ix_campaigns_tenant_id_id", table_name="campaigns")
