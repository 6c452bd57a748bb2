"""a keyed hash of each account's Meta verify token, looked up by index

Revision ID: 0016_verify_token_hash
Revises: 0015_campaign_content

`GET /webhooks/meta` (Meta's subscription check, unauthenticated) decrypted every Meta
account per request to compare verify tokens: 53 ms with 1,002 accounts, for anyone.
The column holds an HMAC of the token (keyed from HERALD_SECRET_KEY, so a database leak
gives no token and no way to test guesses); `''` for an account without one. Existing
rows are filled by the application the first time a verify request finds them NULL
(services/tenancy/tenants.py): the key lives with the application, not the migration.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_verify_token_hash"
down_revision = "0015_campaign_content"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("provider_accounts", sa.Column("verify_token_hash", sa.String(64)))
    op.create_index("ix_provider_accounts_verify_token", "provider_accounts", ["verify_token_hash"])


def downgrade() -> None:
    op.drop_index("ix_provider_accounts_verify_token", table_name="provider_accounts")
    op.drop_column("provider_accounts", "verify_token_hash")
