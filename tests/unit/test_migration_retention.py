"""Migration 0019_retention on a populated database of the previous schema: it upgrades
in place (every row kept, the rollups untouched), and the purge then removes what is past
retention while the rollups keep counting it."""

from __future__ import annotations

from datetime import timedelta

from alembic import command
from sqlalchemy import text

from core.ids import utcnow
from tests.unit.migration_schema import schema_at
from tests.unit.test_retention import id_then

REVISION = "0019_retention"
PREVIOUS = "0018_sms_segments"
TABLES = ("messages", "message_events", "event_deliveries", "webhook_events")


def test_a_populated_database_upgrades_in_place_and_purges_keeping_counts(herald_env) -> None:  # type: ignore[no-untyped-def]
    with schema_at(PREVIOUS) as (conn, cfg):
        conn.execute(
            text(
                "INSERT INTO tenants (id, name, created_at) VALUES"
                " ('ten_a', 'default', now()), ('ten_b', 'long', now())"
            )
        )
        now = utcnow()
        rows = []
        for i in range(300):
            tenant = "ten_a" if i % 2 else "ten_b"
            when = now - timedelta(days=45 if i < 200 else 1, minutes=i)
            status = ("delivered", "read", "failed", "queued")[i % 4]
            rows.append(
                {
                    "id": id_then("msg", when),
                    "tenant": tenant,
                    "status": status,
                    "when": when,
                    "price": 0.0079 if status == "delivered" else None,
                    "unit": "USD" if status == "delivered" else None,
                }
            )
        conn.execute(
            text(
                "INSERT INTO messages (id, tenant_id, direction, channel, provider,"
                " to_number, body, status, attempts, metadata, price, price_unit,"
                " created_at, updated_at) VALUES (:id, :tenant, 'outbound', 'sms',"
                " 'twilio', '+12025550143', 'hello', :status, 1, '{}', :price,"
                " :unit, :when, :when)"
            ),
            rows,
        )
        conn.execute(
            text(
                "INSERT INTO message_events (message_id, status, source, applied, at)"
                " SELECT id, status, 'twilio', true, created_at FROM messages"
            )
        )
        conn.execute(
            text(
                "INSERT INTO event_deliveries (message_id, tenant_id, url, payload, status,"
                " attempts, next_attempt_at, created_at) SELECT id, tenant_id,"
                " 'https://x.example', '{}', 'delivered', 1, created_at, created_at"
                " FROM messages"
            )
        )
        conn.execute(
            text(
                "INSERT INTO webhook_events (provider, kind, dedup_key, tenant_id,"
                " message_id, payload, received_at) SELECT 'twilio', 'status',"
                " 'twilio:AC1:' || id, tenant_id, id, '{\"To\": \"+12025550143\"}',"
                " created_at FROM messages"
            )
        )

        def sizes() -> dict[str, int]:
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}

        def rollups() -> set[tuple[object, ...]]:
            # The counts as readers see them (folded rows plus deltas not folded yet),
            # read with SQL any schema version holds: today's fold reads a later key.
            days = conn.execute(
                text(
                    "SELECT tenant_id, day, status, sum(messages), sum(billable), sum(cost)"
                    " FROM (SELECT tenant_id, start AS day, status, messages, billable, cost"
                    " FROM message_counts WHERE span = 'day' UNION ALL"
                    " SELECT tenant_id, date_trunc('day', hour), status, messages, billable,"
                    " cost FROM message_count_deltas) AS c GROUP BY 1, 2, 3"
                    " HAVING sum(messages) <> 0 OR sum(billable) <> 0 OR sum(cost) <> 0"
                )
            ).all()
            totals = conn.execute(
                text(
                    "SELECT direction, status, sum(messages) FROM (SELECT direction, status,"
                    " messages FROM message_status_totals UNION ALL SELECT direction, status,"
                    " messages FROM message_count_deltas) AS t GROUP BY 1, 2"
                    " HAVING sum(messages) <> 0"
                )
            ).all()
            return set(days) | {("totals", *row) for row in totals}

        before_rows, before_counts = sizes(), rollups()
        command.upgrade(cfg, REVISION)
        assert sizes() == before_rows  # in place: nothing copied, nothing lost
        assert rollups() == before_counts
        assert (
            conn.execute(text("SELECT count(*) FROM tenants WHERE retention_days IS NULL")).scalar()
            == 2
        )
        assert conn.execute(
            text("SELECT to_regclass('ix_webhook_events_tenant_received')")
        ).scalar()
        conn.execute(text("UPDATE tenants SET retention_days = 90 WHERE id = 'ten_b'"))
        conn.commit()

        from services.lifecycle.purge import purge

        purged = purge(conn)

        # ten_a (the default, 30 days): its 100 old messages go but the 50 queued, and
        # all its old raw receipts; ten_b (90 days) keeps everything.
        assert (purged.messages, purged.receipts) == (50, 100) and not purged.unfinished
        assert sizes() == {
            "messages": 250,
            "message_events": 250,
            "event_deliveries": 250,
            "webhook_events": 200,
        }
        left = conn.execute(
            text(
                "SELECT count(*) FROM messages WHERE tenant_id = 'ten_a'"
                " AND created_at < now() - interval '30 days' AND status <> 'queued'"
            )
        ).scalar()
        assert left == 0
        assert rollups() == before_counts  # usage, billing, history: unchanged
        command.downgrade(cfg, PREVIOUS)
        conn.commit()


class _Session:
    """Enough of a Session over one Connection for rollups.fold."""

    def __init__(self, conn) -> None:  # type: ignore[no-untyped-def]
        self._conn = conn

    def execute(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self._conn.execute(*args, **kwargs)
