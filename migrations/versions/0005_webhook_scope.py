"""webhook receipts scoped to their provider account; unrouted inbound listed by kind

Dedup keys were `<provider>:<provider id>:<status>` (and `<provider>:in:<id>`), global,
so a tenant signing with its own secret could pre-record another tenant's callback.
They now name the provider account: `<provider>:<account id>:<provider id>:<status>`.
Receipts already tied to a message are rewritten to the new form, so a provider's
retry of a callback received before the upgrade is still seen as a duplicate.

Revision ID: 0004_webhook_scope
Revises: 0003
Create Date: 2026-11-28 23:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0004_webhook_scope"
down_revision = "0004"
branch_labels = None
depends_on = None

# The account of the message a receipt is about.
_ACCOUNT = "(SELECT m.provider_account_id FROM messages m WHERE m.id = webhook_events.message_id)"
_TIED = (
    "message_id IS NOT NULL AND kind IN ('status', 'inbound') AND EXISTS "
    "(SELECT 1 FROM messages m WHERE m.id = webhook_events.message_id "
    "AND m.provider_account_id IS NOT NULL)"
)


def upgrade() -> None:
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_events_kind_id", ["kind", "id"], unique=False)
    # Keys are at most 255 characters: the few that would not fit keep their old form.
    op.execute(
        f"UPDATE webhook_events SET dedup_key = provider || ':' || {_ACCOUNT} || ':' || "
        f"substr(dedup_key, length(provider) + 2) WHERE {_TIED} "
        f"AND length(dedup_key) + length({_ACCOUNT}) < 255"
    )


def downgrade() -> None:
    op.execute(
        f"UPDATE webhook_events SET dedup_key = provider || ':' || "
        f"substr(dedup_key, length(provider) + length({_ACCOUNT}) + 3) WHERE {_TIED} "
        f"AND dedup_key LIKE provider || ':' || {_ACCOUNT} || ':%'"
    )
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_events_kind_id")
