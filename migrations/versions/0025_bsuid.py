"""WhatsApp business-scoped user ids (BSUID) and usernames: a person found by any of them

Revision ID: 0025_bsuid
Revises: 0024_test_keys

Meta names a WhatsApp user by a business-scoped user id (`user_id`, like
`US.13491208655302741918`: a country code, a period, up to 128 letters and digits; a
parent id has `ENT.` after the country) in every webhook, and a user who adopted a
username may arrive with no phone number at all. So:

- `contacts.wa_user_id` (the BSUID), `contacts.wa_username`, and `contacts.phone` may be
  NULL (a username-only person); `ix_contacts_tenant_wa_user_id` finds a person by BSUID
  (unique per tenant, partial: most contacts have none yet).
- `messages.wa_user_id` / `messages.wa_username`: the recipient's (or sender's) BSUID and
  username where known. `messages.to_number` and `from_number` widen to 160 characters so
  a BSUID can be the address (a varchar widening is a catalog change: no rewrite, no
  index rebuild).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025_bsuid"
down_revision = "0024_test_keys"
branch_labels = None
depends_on = None

WIDE = 160
BIG = 100_000  # contacts (pg_class estimate) from which the index is built CONCURRENTLY
INDEX = (
    "ix_contacts_tenant_wa_user_id ON contacts (tenant_id, wa_user_id) WHERE wa_user_id IS NOT NULL"
)


def upgrade() -> None:
    op.add_column("contacts", sa.Column("wa_user_id", sa.String(WIDE), nullable=True))
    op.add_column("contacts", sa.Column("wa_username", sa.String(64), nullable=True))
    op.alter_column("contacts", "phone", existing_type=sa.String(32), nullable=True)
    op.add_column("messages", sa.Column("wa_user_id", sa.String(WIDE), nullable=True))
    op.add_column("messages", sa.Column("wa_username", sa.String(64), nullable=True))
    op.alter_column("messages", "to_number", existing_type=sa.String(32), type_=sa.String(WIDE))
    op.alter_column("messages", "from_number", existing_type=sa.String(64), type_=sa.String(WIDE))
    # Last: building it reads the whole table. A large one is built CONCURRENTLY, after
    # the transaction holding the ALTERs' locks has committed, so accepts (which read
    # contacts) never wait on the build.
    rows = (
        op.get_bind()
        .execute(sa.text("SELECT reltuples FROM pg_class WHERE oid = 'contacts'::regclass"))
        .scalar()
    )
    if (rows or 0) < BIG:
        op.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {INDEX}")
        return
    with op.get_context().autocommit_block():
        op.execute(f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {INDEX}")


def downgrade() -> None:
    # `contacts.phone` stays nullable and the address columns wide: a username user's
    # contact has no phone to restore, and the older code reads both as they are.
    op.execute("DROP INDEX IF EXISTS ix_contacts_tenant_wa_user_id")
    op.drop_column("messages", "wa_username")
    op.drop_column("messages", "wa_user_id")
    op.drop_column("contacts", "wa_username")
    op.drop_column("contacts", "wa_user_id")
