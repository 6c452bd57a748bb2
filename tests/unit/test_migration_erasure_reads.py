"""Migration 0028_erasure_reads: three partial indexes that hold only the rows an erasure
can match (messages naming a contact or a BSUID, receipts tied to no message), built in
place over existing rows, which stay as they were."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from tests.unit.migration_schema import schema_at

REVISION = "0028_erasure_reads"
INDEXES = {
    "ix_messages_tenant_contact": "WHERE (contact_id IS NOT NULL)",
    "ix_messages_tenant_wa_user": "WHERE (wa_user_id IS NOT NULL)",
    "ix_webhook_events_unmatched": "WHERE (message_id IS NULL)",
}


def _indexes(conn) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return dict(
        conn.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes"
                " WHERE schemaname = current_schema() AND indexname = ANY(:names)"
            ),
            {"names": list(INDEXES)},
        ).all()
    )


def test_the_indexes_are_built_over_existing_rows(herald_env) -> None:  # type: ignore[no-untyped-def]
    with schema_at(f"{REVISION}-1") as (conn, cfg):
        now = "2026-01-01T00:00:00+00:00"
        conn.execute(
            text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 't', :now)"),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO messages (id, tenant_id, direction, channel, provider, to_number,"
                " contact_id, wa_user_id, status, attempts, metadata, created_at, updated_at)"
                " VALUES ('msg_1', 'ten_1', 'outbound', 'sms', 'twilio', '+12025550143',"
                " 'con_1', NULL, 'sent', 1, '{}', :now, :now),"
                " ('msg_2', 'ten_1', 'inbound', 'whatsapp', 'meta', '15550100001',"
                " NULL, 'US.1', 'received', 0, '{}', :now, :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO webhook_events (provider, kind, dedup_key, tenant_id, message_id,"
                " payload, received_at) VALUES"
                " ('twilio', 'status', 'k1', 'ten_1', 'msg_1', '{}', :now),"
                " ('twilio', 'status', 'k2', 'ten_1', NULL, '{}', :now)"
            ),
            {"now": now},
        )
        assert _indexes(conn) == {}
        command.upgrade(cfg, REVISION)
        built = _indexes(conn)
        assert set(built) == set(INDEXES)
        for name, predicate in INDEXES.items():
            assert built[name].endswith(predicate), built[name]
        conn.execute(text("SET enable_seqscan = off"))
        assert conn.execute(
            text("SELECT id FROM messages WHERE tenant_id = 'ten_1' AND contact_id = 'con_1'")
        ).all() == [("msg_1",)]
        assert conn.execute(
            text("SELECT dedup_key FROM webhook_events WHERE message_id IS NULL")
        ).all() == [("k2",)]
        command.downgrade(cfg, f"{REVISION}-1")
        assert _indexes(conn) == {}
        assert conn.execute(text("SELECT count(*) FROM messages")).scalar() == 2
        conn.rollback()
