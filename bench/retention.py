"""The retention purge of a day of messages: its time and WAL against the traffic that
created the day, and the tables' sizes before, after, after VACUUM and after the next
day's traffic (the space a purge frees is what the next days reuse: no bloat).

Creates the database `herald_retention` on DATABASE_URL's server, migrates it, writes
`--keep` messages for a tenant kept 90 days (the last two days: the hot rows) and
`--day` messages of one day 40 days ago for a tenant on the default (30 days), each
as Herald's traffic writes it: an INSERT `queued`, then `sending`, `sent` and `delivered`
UPDATEs, three `message_events`, an event delivery and two raw receipts. Then it runs
services/lifecycle/purge.py's `purge` (after a CHECKPOINT: a day that old is on disk),
VACUUMs the four tables (autovacuum's work), writes the same tenant's next day and
prints the figures. Drops the database.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        python -m bench.retention --day 100000 [--days 5]

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import psycopg

from bench.growth import ULID_TIME

DATABASE = "herald_retention"
TABLES = ("messages", "message_events", "event_deliveries", "webhook_events")


def _urls(base: str) -> tuple[str, str]:
    head, _, _ = base.rpartition("/")
    url = f"{head}/{DATABASE}"
    return url, url.replace("postgresql+psycopg://", "postgresql://")


def _admin(base: str, sql: str) -> None:
    with psycopg.connect(
        base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as conn:
        conn.execute(sql)


def _wal(conn: psycopg.Connection[Any]) -> int:
    return int(conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()[0])


def _sizes(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
    """(heap bytes, index bytes) of each table."""
    out = {}
    for table in TABLES:
        heap, index = conn.execute(
            "SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)", (table, table)
        ).fetchone()
        out[table] = (int(heap), int(index))
    return out


def traffic(
    conn: psycopg.Connection[Any], tenant: str, account: str, n: int, ago: str, span: str, base: int
) -> tuple[float, int]:
    """N messages over `span` ending `ago`, written as the traffic writes them;
    (seconds, WAL bytes)."""
    wal, started = _wal(conn), time.monotonic()
    now = conn.execute("SELECT now() AT TIME ZONE 'UTC'").fetchone()[0]
    conn.execute(
        f"""
        INSERT INTO messages (id, tenant_id, direction, channel, provider, provider_account_id,
            to_number, from_number, status, attempts, metadata, origin, slot_reserved, body,
            created_at, updated_at)
        SELECT 'msg_' || pg_temp.ulid_time(at) || lpad(to_hex(g + {base}), 16, '0'), %s,
            'outbound', 'sms', 'twilio', %s, '+1303' || lpad((g %% 9000000)::text, 7, '0'),
            '+12025550100', 'queued', 0, '{{}}', 'api', false, 'Your code is ' || g, at, at
        FROM (SELECT g, timestamp '{now}' - interval '{ago}'
                  - interval '{span}' * (1 - g::float8 / {n}) AS at
              FROM generate_series(1, {n}) AS g) AS m
        """,
        (tenant, account),
    )
    mine = f"tenant_id = '{tenant}' AND status = %s"
    conn.execute(
        "UPDATE messages SET status = 'sending', attempts = 1,"
        " provider_message_id = 'SM' || substr(id, 5) WHERE " + mine,
        ("queued",),
    )
    conn.execute(
        "UPDATE messages SET status = 'sent', sent_at = created_at WHERE " + mine, ("sending",)
    )
    conn.execute(
        "UPDATE messages SET status = 'delivered', delivered_at = created_at, price = 0.0079,"
        " price_unit = 'USD' WHERE " + mine,
        ("sent",),
    )
    start = f"timestamp '{now}' - interval '{ago}' - interval '{span}'"
    end = f"timestamp '{now}' - interval '{ago}'"
    fresh = (
        f"tenant_id = '{tenant}' AND id >= 'msg_' || pg_temp.ulid_time({start})"
        f" AND id <= 'msg_' || pg_temp.ulid_time({end}) || 'ZZZZZZZZZZZZZZZZ'"
    )
    conn.execute(
        f"""
        INSERT INTO message_events (message_id, status, native_status, source, applied, at)
        SELECT id, s.status, s.status, 'callback', true, created_at
        FROM messages CROSS JOIN (VALUES ('queued'), ('sent'), ('delivered')) AS s(status)
        WHERE {fresh}
        """
    )
    conn.execute(
        f"""
        INSERT INTO event_deliveries (message_id, tenant_id, url, payload, status, attempts,
            next_attempt_at, created_at, delivered_at)
        SELECT id, tenant_id, 'https://acme.example/events',
            json_build_object('to', to_number, 'status', 'delivered'), 'delivered', 1,
            created_at, created_at, created_at
        FROM messages WHERE {fresh}
        """
    )
    conn.execute(
        f"""
        INSERT INTO webhook_events (provider, kind, dedup_key, tenant_id, message_id,
            provider_message_id, payload, received_at)
        SELECT 'twilio', 'status', 'twilio:AC1:' || provider_message_id || ':' || s.status,
            tenant_id, id, provider_message_id,
            json_build_object('MessageStatus', s.status, 'To', to_number), created_at
        FROM messages CROSS JOIN (VALUES ('sent'), ('delivered')) AS s(status)
        WHERE {fresh}
        """
    )
    return time.monotonic() - started, _wal(conn) - wal


def vacuum(conn: psycopg.Connection[Any]) -> tuple[float, int]:
    wal, started = _wal(conn), time.monotonic()
    for table in TABLES:
        conn.execute(f"VACUUM {table}")
    return time.monotonic() - started, _wal(conn) - wal


def _mb(n: int) -> str:
    return f"{n / 1e6:8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--day", type=int, default=100_000, help="messages in the purged day")
    parser.add_argument("--keep", type=int, default=200_000, help="messages kept (hot)")
    parser.add_argument("--keep-db", action="store_true", help="leave the database (no purge)")
    parser.add_argument(
        "--days",
        type=int,
        default=1,
        help="days purged; after the first, each writes the next expired day, VACUUMs, "
        "purges it and VACUUMs again, printing the sizes (do the tables settle?)",
    )
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgresql"):
        sys.exit("DATABASE_URL must name a PostgreSQL server")
    url, dsn = _urls(base)
    _admin(base, f"DROP DATABASE IF EXISTS {DATABASE}")
    _admin(base, f"CREATE DATABASE {DATABASE}")
    try:
        os.environ["DATABASE_URL"] = url
        from cryptography.fernet import Fernet

        os.environ.setdefault("HERALD_SECRET_KEY", Fernet.generate_key().decode())
        from core.config import get_settings
        from models import get_engine, reset_engine, session_scope

        get_settings.cache_clear()
        reset_engine()
        from herald import migrate
        from services.tenancy.tenants import add_provider_account, create_tenant

        migrate.upgrade()
        ids = []
        with session_scope() as session:
            for name, days in (("short", None), ("long", 90)):
                tenant = create_tenant(session, name)
                tenant.retention_days = days
                account = add_provider_account(
                    session,
                    tenant.id,
                    "twilio",
                    account_sid="AC" + "1" * 32,
                    auth_token="t",
                    sms_from="+12025550100",
                )
                ids.append((tenant.id, account.id))
        (short, short_acc), (long, long_acc) = ids
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(ULID_TIME)
            print(f"writing {args.keep:,} kept messages...", file=sys.stderr)
            traffic(conn, long, long_acc, args.keep, "1 hour", "2 days", 0)
            print(f"writing the day of {args.day:,} messages 40 days ago...", file=sys.stderr)
            made_s, made_wal = traffic(conn, short, short_acc, args.day, "40 days", "1 day", 10**9)
            conn.execute("VACUUM ANALYZE")
            before = _sizes(conn)
            if args.keep_db:
                return

            from services.lifecycle.purge import purge

            # A day 40 days old was written out long ago: without this the purge would
            # also pay for writing out the bulk load's dirty buffers.
            conn.execute("CHECKPOINT")
            with get_engine().connect() as sa_conn:
                wal, started = _wal(conn), time.monotonic()
                purged = purge(sa_conn)
                purge_s, purge_wal = time.monotonic() - started, _wal(conn) - wal
            after = _sizes(conn)
            vac_s, vac_wal = vacuum(conn)
            vacuumed = _sizes(conn)
            next_s, next_wal = traffic(
                conn, short, short_acc, args.day, "0 hours", "1 day", 2 * 10**9
            )
            conn.execute("VACUUM ANALYZE")
            refilled = _sizes(conn)
            cycles = []
            for day in range(1, args.days):
                # Each next day newer than the last (as traffic writes: the indexes' right
                # edge), still past the short tenant's retention, then purged as autovacuum
                # and the hourly purge would leave it.
                traffic(
                    conn, short, short_acc, args.day, f"{40 - day} days", "1 day", (day + 2) * 10**9
                )
                conn.execute("VACUUM ANALYZE")
                conn.execute("CHECKPOINT")
                written = _sizes(conn)
                with get_engine().connect() as sa_conn:
                    started = time.monotonic()
                    gone = purge(sa_conn).messages
                    took = time.monotonic() - started
                vacuum(conn)
                cycles.append((written, _sizes(conn), gone, took))
    finally:
        reset_engine()
        if not args.keep_db:
            _admin(base, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")

    print(f"\npurged: {purged.as_dict()}")
    print(f"\n{'':<34} {'seconds':>8} {'WAL MB':>8}")
    print(f"{'the day traffic wrote (bulk SQL)':<34} {made_s:8.2f} {_mb(made_wal)}")
    print(f"{'purge of that day':<34} {purge_s:8.2f} {_mb(purge_wal)}")
    print(f"{'VACUUM of the four tables after':<34} {vac_s:8.2f} {_mb(vac_wal)}")
    print(f"{'the next day (same traffic)':<34} {next_s:8.2f} {_mb(next_wal)}")
    print("\nMB heap+indexes   before    purged  vacuumed  next day  (next day - before)")
    for table in TABLES:
        row = [sum(s[table]) for s in (before, after, vacuumed, refilled)]
        print(f"{table:<16} {''.join(_mb(v) + '  ' for v in row)} {_mb(row[3] - row[0])}")
    total = [sum(sum(s[t]) for t in TABLES) for s in (before, after, vacuumed, refilled)]
    print(f"{'all four':<16} {''.join(_mb(v) + '  ' for v in total)} {_mb(total[3] - total[0])}")
    if cycles:
        print("\nday  purged  in s   MB written: heap  indexes   purged+vacuumed: heap  indexes")
        for n, (written, cleaned, gone, took) in enumerate(cycles, 2):
            cells = [sum(s[t][k] for t in TABLES) for s in (written, cleaned) for k in (0, 1)]
            print(f"{n:>3} {gone:>7,} {took:5.2f}    " + "  ".join(_mb(c) for c in cells))
        for table in TABLES:
            first, last = cycles[0][1][table], cycles[-1][1][table]
            print(
                f"  {table:<16} heap {_mb(last[0] - first[0])}  indexes {_mb(last[1] - first[1])}"
                f"  (MB, day {len(cycles) + 1} - day 2, after the purge)"
            )
    day = sum(sum(before[t]) for t in TABLES) / (args.keep + args.day)
    print(f"\nbytes per message (all four tables, before the purge): {day:,.0f}")


if __name__ == "__main__":
    main()
