"""a campaign's content is stored once, on the campaign; campaigns pause for the quota

Revision ID: 0015_campaign_content
Revises: 0014_expiry_waiting_index

Every recipient row used to carry a copy of the campaign's template, body and media (a
100 KB component list cost 105 KB per recipient). A campaign created from now on has
`shared_content` set: its rows carry only what differs per recipient (number, the
template's `variables`, sender) and the worker reads the rest from the campaign.
Campaigns already written keep `shared_content` false, so their rows, which carry
their own copy, are sent from it as before.

`pause_reason` and `resume_at`: a campaign that reached its tenant's daily quota
mid-way pauses with the reason, and resumes by itself once the quota's day is over.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_campaign_content"
down_revision = "0014_expiry_waiting_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "campaigns",
        sa.Column("shared_content", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("campaigns", sa.Column("pause_reason", sa.String(32), nullable=True))
    op.add_column("campaigns", sa.Column("resume_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("campaigns", "resume_at")
    op.drop_column("campaigns", "pause_reason")
    op.drop_column("campaigns", "shared_content")
