"""messages of one pair leave in the order they were accepted: an acceptance sequence

Revision ID: 0022_pair_order
Revises: 0021_edges

`messages.seq` numbers rows as they are inserted (a sequence, so one order across every
API process, whatever their clocks). The gate (services/messages/gate.py) lets a
message go only when no earlier row of its (account, channel, sender, recipient) is
still `queued` or `sending`; `ix_messages_pair_waiting` answers that with a probe
into an index holding only those rows, so it stays as small as what waits.

Existing rows keep a NULL `seq` (no table rewrite); rows still waiting get one now,
in id (acceptance) order, so they keep their order across the upgrade. A row with no
`seq` is neither blocked nor blocks.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022_pair_order"
down_revision = "0021_edges"
branch_labels = None
depends_on = None

BIG = 100_000  # rows (pg_class estimate) from which the index is built CONCURRENTLY
WAITING = "direction = 'outbound' AND status IN ('queued', 'sending')"
INDEX = (
    f"ix_messages_pair_waiting ON messages (provider_account_id, to_number, seq) WHERE {WAITING}"
)


def upgrade() -> None:
    op.execute("CREATE SEQUENCE IF NOT EXISTS messages_seq AS bigint")
    op.add_column("messages", sa.Column("seq", sa.BigInteger(), nullable=True))
    # A default set after the column exists applies to new rows only: no rewrite.
    op.execute("ALTER TABLE messages ALTER COLUMN seq SET DEFAULT nextval('messages_seq')")
    op.execute("ALTER SEQUENCE messages_seq OWNED BY messages.seq")
    op.execute(
        "UPDATE messages AS m SET seq = o.seq FROM ("
        " SELECT id, nextval('messages_seq') AS seq FROM ("
        "  SELECT id FROM messages WHERE status IN ('scheduled', 'queued', 'sending')"
        "  ORDER BY id) AS w) AS o"
        " WHERE m.id = o.id"
    )
    rows = (
        op.get_bind()
        .execute(sa.text("SELECT reltuples FROM pg_class WHERE oid = 'messages'::regclass"))
        .scalar()
    )
    if (rows or 0) < BIG:
        op.execute(f"CREATE INDEX IF NOT EXISTS {INDEX}")
        return
    with op.get_context().autocommit_block():
        op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX}")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_messages_pair_waiting")
    op.drop_column("messages", "seq")  # drops the sequence it owns
