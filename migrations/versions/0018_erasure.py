"""opt-outs that outlive an erased person, kept as keyed hashes

Revision ID: 0018_erasure
Revises: 0017_flat_reads

Erasing a person (services/privacy/erasure.py) deletes their contact row, and with it
the opt-out flag the send policy reads. `suppressions` keeps the promise instead: one
row per (tenant, number form) holding an HMAC of the tenant id and the number, keyed
from HERALD_SECRET_KEY (as 0016's verify-token hash), so a database leak gives no
number and no way to test guesses, and the same person is not linkable across tenants.
The send policy (services/policy/consent.py) refuses a number whose hash is here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_erasure"
down_revision = "0017_flat_reads"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column("tenant_id", sa.String(32), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("number_hash", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "number_hash", name="pk_suppressions"),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
