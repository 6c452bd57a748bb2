"""Migration 0025_bsuid: contacts and messages take a WhatsApp business-scoped user id
(BSUID) and username, a contact may have no phone, an address may be a BSUID; existing
rows are untouched."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from tests.unit.migration_schema import schema_at

REVISION = "0025_bsuid"
BSUID = "US." + "7" * 128  # the longest Meta allows


def test_a_person_known_by_bsuid_alone_fits_and_existing_rows_stay(herald_env) -> None:  # type: ignore[no-untyped-def]
    with schema_at(f"{REVISION}-1") as (conn, cfg):
        now = "2026-01-01T00:00:00+00:00"
        conn.execute(
            text("INSERT INTO tenants (id, name, created_at) VALUES ('ten_1', 't', :now)"),
            {"now": now},
        )
        conn.execute(
            text(
                "INSERT INTO contacts (id, tenant_id, phone, opted_out, created_at, updated_at)"
                " VALUES ('con_1', 'ten_1', '+12025550143', false, :now, :now)"
            ),
            {"now": now},
        )
        command.upgrade(cfg, REVISION)
        assert conn.execute(text("SELECT phone, wa_user_id FROM contacts")).one() == (
            "+12025550143",
            None,
        )
        conn.execute(
            text(
                "INSERT INTO contacts (id, tenant_id, phone, wa_user_id, wa_username, opted_out,"
                " created_at, updated_at) VALUES ('con_2', 'ten_1', NULL, :b, 'jane', false,"
                " :now, :now)"
            ),
            {"b": BSUID, "now": now},
        )
        conn.execute(
            text(
                "INSERT INTO messages (id, tenant_id, direction, channel, provider, to_number,"
                " from_number, wa_user_id, status, attempts, metadata, created_at, updated_at)"
                " VALUES ('msg_1', 'ten_1', 'inbound', 'whatsapp', 'meta', '15550100001', :b,"
                " :b, 'received', 0, '{}', :now, :now)"
            ),
            {"b": BSUID, "now": now},
        )
        # One person per BSUID and tenant.
        with pytest.raises(IntegrityError), conn.begin_nested():
            conn.execute(
                text(
                    "INSERT INTO contacts (id, tenant_id, wa_user_id, opted_out, created_at,"
                    " updated_at) VALUES ('con_3', 'ten_1', :b, false, :now, :now)"
                ),
                {"b": BSUID, "now": now},
            )
        command.downgrade(cfg, f"{REVISION}-1")
        columns = set(
            conn.scalars(
                text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = 'contacts'"
                )
            )
        )
        assert "wa_user_id" not in columns and "wa_username" not in columns
        conn.rollback()
