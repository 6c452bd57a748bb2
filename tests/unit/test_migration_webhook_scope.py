"""Migration 0004_webhook_scope: receipts recorded under the old global keys are
rewritten to name their account, so a retry across the upgrade is still a duplicate."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from tests.unit.migration_schema import schema_at

REVISION = "0004_webhook_scope"


def test_legacy_receipt_keys_are_scoped_and_restored(herald_env) -> None:  # type: ignore[no-untyped-def]
    with schema_at(f"{REVISION}-1") as (conn, cfg):
        now = "2026-01-01T00:00:00+00:00"
        conn.execute(
            text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 't', :now)"),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO provider_accounts (id, tenant_id, provider, external_id, "
                "settings, secrets_enc, created_at) VALUES "
                "('acc_1', 'ten_1', 'twilio', 'AC1', '{}', 'x', :now)"
            ),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO messages (id, tenant_id, direction, channel, provider, "
                "provider_account_id, to_number, status, attempts, metadata, created_at, "
                "updated_at) VALUES ('msg_1', 'ten_1', 'outbound', 'sms', 'twilio', "
                "'acc_1', '+12025550143', 'sent', 1, '{}', :now, :now)"
            ),
            {"now": now},
        )
        for key, message_id in (
            ("twilio:SM1:delivered", "msg_1"),
            ("twilio:in:SM3", "msg_1"),
            ("twilio:SM2:sent", None),  # no message: no account to name
        ):
            conn.execute(
                text(
                    "INSERT INTO webhook_events (provider, kind, dedup_key, message_id, "
                    "payload, received_at) VALUES ('twilio', :kind, :key, :mid, '{}', :now)"
                ),
                {
                    "kind": "inbound" if ":in:" in key else "status",
                    "key": key,
                    "mid": message_id,
                    "now": now,
                },
            )

        def keys() -> set[str]:
            return set(conn.scalars(text("SELECT dedup_key FROM webhook_events")))

        command.upgrade(cfg, REVISION)
        assert keys() == {
            "twilio:acc_1:SM1:delivered",
            "twilio:acc_1:in:SM3",
            "twilio:SM2:sent",
        }
        command.downgrade(cfg, f"{REVISION}-1")
        assert keys() == {"twilio:SM1:delivered", "twilio:in:SM3", "twilio:SM2:sent"}
        conn.rollback()
