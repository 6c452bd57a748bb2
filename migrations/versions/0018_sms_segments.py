"""per tenant: smart encoding of SMS bodies (on by default), a cap on segments, and the
SMS pumping guard (countries it may text, international SMS a day), and its own
keywords and keyword replies

Revision ID: 0018_sms_segments
Revises: 0017_flat_reads

A look-alike character (a curly quote, a long dash) sends a whole SMS as UCS-2, at 70
characters a segment instead of 160: smart encoding swaps them for GSM-7 ones when that
makes the body GSM-7. `sms_max_segments` refuses a body billed as more segments (NULL:
no cap beyond the provider's 1,600 characters). `sms_countries` (NULL: the countries of
the tenant's own numbers) and `international_daily_limit` (NULL: the default) bound SMS
pumping (services/policy/destinations.py). `keywords` and `keyword_replies` (NULL: the
standard words and replies) are services/policy/keywords.py's. Adding a column with a
constant default rewrites nothing in PostgreSQL 11 and later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_sms_segments"
down_revision = "0017_flat_reads"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column("smart_encoding", sa.Boolean(), nullable=False, server_default=sa.true()),
    )
    op.add_column("tenants", sa.Column("sms_max_segments", sa.Integer()))
    op.add_column("tenants", sa.Column("sms_countries", sa.JSON()))
    op.add_column("tenants", sa.Column("international_daily_limit", sa.Integer()))
    op.add_column("tenants", sa.Column("keywords", sa.JSON()))
    op.add_column("tenants", sa.Column("keyword_replies", sa.JSON()))


def downgrade() -> None:
    op.drop_column("tenants", "keyword_replies")
    op.drop_column("tenants", "keywords")
    op.drop_column("tenants", "international_daily_limit")
    op.drop_column("tenants", "sms_countries")
    op.drop_column("tenants", "sms_max_segments")
    op.drop_column("tenants", "smart_encoding")
