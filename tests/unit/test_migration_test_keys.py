"""Migration 0024_test_keys on a populated database: every key and message is live, the
counts are unchanged, the purge guard of 0019 is kept, test messages are counted apart
from then on, and the downgrade goes back."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from tests.unit.migration_schema import schema_at

REVISION = "0024_test_keys"
PREVIOUS = "0023_event_fks"


def test_keys_and_messages_are_live_and_counts_unchanged(herald_env) -> None:  # type: ignore[no-untyped-def]
    with schema_at(PREVIOUS) as (conn, cfg):
        conn.execute(
            text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 't', now())")
        )
        conn.execute(
            text(
                "INSERT INTO api_keys (id, tenant_id, key_hash, prefix, created_at)"
                " VALUES ('key_1', 'ten_1', 'h', 'hk_', now())"
            )
        )
        insert = (
            "INSERT INTO messages (id, tenant_id, direction, channel, provider, to_number,"
            " status, attempts, metadata, created_at, updated_at{extra})"
            " SELECT 'msg_{prefix}' || g, 'ten_1', 'outbound', 'sms', 'twilio',"
            " '+1202555' || lpad(g::text, 4, '0'),"
            " (ARRAY['delivered', 'sent', 'queued'])[1 + g % 3], 1, '{{}}',"
            " timestamp '2026-01-01' + g * interval '37 minutes',"
            " timestamp '2026-01-01' + g * interval '37 minutes'{values}"
            " FROM generate_series(1, 300) AS g"
        )
        conn.execute(text(insert.format(prefix="a", extra="", values="")))

        def counts(where: str = "true") -> dict[str, int]:
            rows = conn.execute(
                text(
                    "SELECT status, sum(messages) FROM (SELECT status, messages FROM"
                    " message_status_totals WHERE " + where + " UNION ALL SELECT status,"
                    " messages FROM message_count_deltas WHERE " + where + ") AS c"
                    " GROUP BY 1 HAVING sum(messages) <> 0"
                )
            )
            return {status: int(n) for status, n in rows}

        before = counts()
        command.upgrade(cfg, REVISION)
        assert conn.execute(text("SELECT type FROM api_keys")).scalars().all() == ["live"]
        assert conn.execute(text("SELECT count(*) FROM messages WHERE test")).scalar() == 0
        assert counts() == before == counts("NOT test")
        function = conn.execute(
            text("SELECT pg_get_functiondef('herald_count_messages'::regproc)")
        ).scalar()
        assert "herald.retention_purge" in function  # 0019's guard kept

        conn.execute(text(insert.format(prefix="t", extra=", test", values=", true")))
        conn.execute(text("UPDATE messages SET status = 'delivered' WHERE status = 'sent'"))
        from services.reporting.rollups import fold, status_totals

        fold(_Session(conn))
        assert counts("NOT test") == {"delivered": 200, "queued": 100}
        assert counts("test") == {"delivered": 200, "queued": 100}
        assert status_totals(_Session(conn))[("queued", True)] == 100  # type: ignore[arg-type]
        command.downgrade(cfg, PREVIOUS)
        assert "test" not in list(conn.execute(text("SELECT * FROM messages LIMIT 1")).keys())
        # The test messages are live ones now, and counted so.
        assert counts() == {"delivered": 400, "queued": 200}
        conn.rollback()


class _Session:
    """Enough of a Session over one Connection for rollups.fold and status_totals."""

    def __init__(self, conn) -> None:  # type: ignore[no-untyped-def]
        self.conn = conn

    def execute(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.conn.execute(*args, **kwargs)
