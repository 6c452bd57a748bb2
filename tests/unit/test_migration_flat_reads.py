"""Migration 0017_flat_reads on a populated database: the rollups it backfills count
what the messages hold, and the trigger keeps them counting after."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from tests.unit.migration_schema import schema_at

REVISION = "0017_flat_reads"
PREVIOUS = "0014_expiry_waiting_index"


def test_the_rollups_are_backfilled_from_existing_messages(herald_env) -> None:  # type: ignore[no-untyped-def]
    with schema_at(PREVIOUS) as (conn, cfg):
        conn.execute(
            text(
                "INSERT INTO tenants (id, name, created_at) VALUES"
                " ('ten_1', 't', now()), ('ten_2', 'u', now())"
            )
        )
        conn.execute(
            text(
                """
                INSERT INTO messages (id, tenant_id, direction, channel, provider,
                    to_number, status, attempts, metadata, campaign_id, price, price_unit,
                    pricing_category, billable, created_at, updated_at)
                SELECT 'msg_' || g, CASE WHEN g % 3 = 0 THEN 'ten_2' ELSE 'ten_1' END,
                    CASE WHEN g % 10 = 0 THEN 'inbound' ELSE 'outbound' END,
                    CASE WHEN g % 2 = 0 THEN 'sms' ELSE 'whatsapp' END,
                    CASE WHEN g % 2 = 0 THEN 'twilio' ELSE 'meta' END,
                    '+1202555' || lpad(g::text, 4, '0'),
                    (ARRAY['delivered', 'read', 'failed', 'sent', 'queued'])[1 + g % 5],
                    1, '{}', CASE WHEN g % 4 = 0 THEN 'cmp_1' END,
                    CASE WHEN g % 2 = 0 THEN 0.0079 END,
                    CASE WHEN g % 2 = 0 THEN 'USD' END,
                    CASE WHEN g % 2 = 1 THEN 'marketing' END,
                    CASE WHEN g % 2 = 1 THEN g % 3 = 1 END,
                    timestamp '2026-01-01' + g * interval '37 minutes',
                    timestamp '2026-01-01' + g * interval '37 minutes'
                FROM generate_series(1, 2000) AS g
                """
            )
        )
        command.upgrade(cfg, REVISION)

        def rolled(span: str) -> set[tuple[object, ...]]:
            return set(
                conn.execute(
                    text(
                        "SELECT tenant_id, start, direction, channel, provider, category,"
                        " campaign_id, status, price_unit, messages, billable, cost"
                        " FROM message_counts WHERE span = :span"
                    ),
                    {"span": span},
                ).all()
            )

        def counted(unit: str) -> set[tuple[object, ...]]:
            return set(
                conn.execute(
                    text(
                        f"SELECT tenant_id, date_trunc('{unit}', created_at), direction,"
                        " channel, provider, coalesce(pricing_category, ''),"
                        " coalesce(campaign_id, ''), status, coalesce(price_unit, ''),"
                        " count(*), count(*) FILTER (WHERE billable),"
                        " coalesce(sum(price), 0) FROM messages"
                        " GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9"
                    )
                ).all()
            )

        def totals() -> dict[str, int]:
            rows = conn.execute(
                text("SELECT status, sum(messages) FROM message_status_totals GROUP BY status")
            )
            return {status: int(n) for status, n in rows if n}  # a status emptied: 0

        def by_status() -> dict[str, int]:
            rows = conn.execute(text("SELECT status, count(*) FROM messages GROUP BY 1"))
            return {status: int(n) for status, n in rows}

        assert rolled("hour") == counted("hour")
        assert rolled("day") == counted("day")
        assert totals() == by_status()

        # After the upgrade, changes arrive as deltas and fold into the same counts (with
        # today's fold: the schema it reads is the latest one, 0024's `test` in the key).
        command.upgrade(cfg, "head")
        conn.execute(
            text(
                "UPDATE messages SET status = 'delivered', price = 0.01, price_unit = 'USD'"
                " WHERE status = 'sent'"
            )
        )
        conn.execute(text("DELETE FROM messages WHERE id = 'msg_7'"))
        from services.reporting.rollups import fold

        fold(_Session(conn))
        assert conn.execute(text("SELECT count(*) FROM message_count_deltas")).scalar() == 0
        assert rolled("hour") == counted("hour")
        assert rolled("day") == counted("day")
        assert totals() == by_status()
        command.downgrade(cfg, PREVIOUS)
        conn.rollback()


class _Session:
    """Enough of a Session over one Connection for rollups.fold."""

    def __init__(self, conn) -> None:  # type: ignore[no-untyped-def]
        self._conn = conn

    def execute(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self._conn.execute(*args, **kwargs)
