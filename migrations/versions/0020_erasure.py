"""opt-outs that outlive an erased person, kept as keyed hashes

Revision ID: 0020_erasure
Revises: 0019_retention

Erasing a person (services/privacy/erasure.py) deletes their contact row, and with it
the opt-out flag the send policy reads. `suppressions` keeps the promise instead: one
row per (tenant, number form) holding an HMAC of the tenant id and the number, under
a key kept encrypted with HERALD_SECRET_KEY, so a database leak gives no number and no
way to test guesses, and the same person is not linkable across tenants.
The send policy (services/policy/consent.py) refuses a number whose hash is here.

The HMAC key is not derived from HERALD_SECRET_KEY itself: that key rotates
(`herald secrets rotate`), and a hash made under a key that is gone could never be
matched again, so every suppression would be silently lost. `privacy_keys` holds one
random key, encrypted at rest like provider secrets (and re-encrypted by a rotation),
created by the application on first use.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020_erasure"
down_revision = "0019_retention"
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

    op.create_table(
        "privacy_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key_enc", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("privacy_keys")
    op.drop_table("suppressions")
