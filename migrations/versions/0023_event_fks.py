"""message_events and event_deliveries lose their foreign keys to messages

Revision ID: 0023_event_fks
Revises: 0022_pair_order

Each key made PostgreSQL look up the message for every event and delivery written (3
to 5 a message on the hot path) and, for every message the retention purge deletes,
look for rows still pointing at it in both tables: one index probe per message per
table, 55-60 % of a purge batch (bench/retention.py). Herald writes both only for a
message row it holds locked (accept, the worker's statements, the status applier) and
removes them with their message (the retention purge, erasure), so the keys checked
what the code already guarantees. Orphans left by rows written before this revision
are removed here so the downgrade can put the keys back.
"""

from __future__ import annotations

from alembic import op

revision = "0023_event_fks"
down_revision = "0022_pair_order"
branch_labels = None
depends_on = None

KEYS = (
    ("message_events", "fk_message_events_message_id_messages"),
    ("event_deliveries", "fk_event_deliveries_message_id_messages"),
)


def upgrade() -> None:
    for table, name in KEYS:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")


def downgrade() -> None:
    for table, name in KEYS:
        op.execute(
            f"DELETE FROM {table} t WHERE NOT EXISTS "
            "(SELECT 1 FROM messages m WHERE m.id = t.message_id)"
        )
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY (message_id) "
            "REFERENCES messages (id)"
        )
