"""Every read and periodic pass on an empty database and on one holding N messages.

Creates the database `herald_growth` on DATABASE_URL's server, migrates it, adds the 50
campaigns (the big one paused with a page of its rows, so campaign reads answer alike on
both sides), measures each operation (median of several calls, through the Flask app or
the service functions the workers and console call), fills it in the shape Herald writes (SQL
`INSERT ... SELECT generate_series`: 20 tenants, statuses, channels, 50 campaigns with
one big waiting campaign, ~3 events and ~2 provider callbacks per message, contacts),
measures again, prints the table with the ratios and the bytes per message, and drops
the database. With `--idle N` it also starts `herald run` on the database, empty and then
filled, and reads the CPU of the PostgreSQL backends serving it over N seconds in which
nothing is sent: what the beat's periodic passes cost the server at that size. With
`--drain N` it starts `herald run` likewise and posts N signed Twilio `delivered` status
callbacks at once (8 client threads) for N `sent` messages: how long each took from its
arrival (the receipt's `received_at`) to being applied (the message's `updated_at`), as
a client polling the row sees it, the drain's total time and the PostgreSQL CPU over it
(the issue's bar: applied within 100 ms at p99 while 2,000 drain, over 5M messages).
With `--create N` it times creating a campaign of N recipients from a CSV upload through
the API, on the empty and the filled database (each deleted again once timed).

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        python -m bench.growth --messages 1000000 --drain 2000 --create 100000

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from cryptography.fernet import Fernet

DATABASE = "herald_growth"
TENANTS = 20
NUMBER = "+12025550199"
PERSON = "+13030000001"  # the fill's first contact (the big tenant's), one message to it


def _urls(base: str) -> tuple[str, str]:
    """(SQLAlchemy URL, libpq URL) of the growth database on `base`'s server."""
    head, _, _ = base.rpartition("/")
    url = f"{head}/{DATABASE}"
    return url, url.replace("postgresql+psycopg://", "postgresql://")


def _admin(base: str, sql: str) -> None:
    with psycopg.connect(
        base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as conn:
        conn.execute(sql)


def _setup() -> tuple[list[dict[str, str]], Any]:
    from api import create_app
    from herald import migrate
    from models import session_scope
    from services.tenancy.tenants import add_provider_account, create_api_key, create_tenant

    migrate.upgrade()
    tenants = []
    with session_scope() as session:
        for n in range(TENANTS):
            tenant = create_tenant(session, f"growth-{n}")
            add_provider_account(
                session,
                tenant.id,
                "twilio",
                account_sid="AC" + f"{n:02d}" * 16,
                auth_token="token",
                sms_from=f"+120255501{n:02d}",
                whatsapp_from=f"+141552388{n:02d}",
            )
            tenants.append({"tenant_id": tenant.id, "api_key": create_api_key(session, tenant.id)})
    return tenants, create_app({"TESTING": True}).test_client()


# One ULID time part (10 Crockford characters) per created_at, as core/ids.py writes it.
ULID_TIME = """
CREATE OR REPLACE FUNCTION pg_temp.ulid_time(at timestamp) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT string_agg(substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ',
      (((extract(epoch FROM at) * 1000)::bigint >> (45 - 5 * k)) & 31)::int + 1, 1), ''
      ORDER BY k)
  FROM generate_series(0, 9) AS k
$$
"""


# The empty database's campaigns: the same 50, the big one with a page of its waiting
# rows, so the campaign reads (its list page, the campaigns list, the live view) are
# measured against the same answer's shape on both sides, not against "not found".
SAMPLE = 60


def _who(conn: psycopg.Connection[Any]) -> None:
    """`who`: each tenant with its Twilio account and its number n (1-20)."""
    conn.execute(ULID_TIME)
    tenants = [r[0] for r in conn.execute("SELECT id FROM tenants ORDER BY id")]
    accounts = [r[0] for r in conn.execute("SELECT id FROM provider_accounts ORDER BY tenant_id")]
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS who AS SELECT * FROM unnest(%s::text[], %s::text[])"
        " WITH ORDINALITY AS w(tenant, account, n)",
        (tenants, accounts),
    )


def _waiting(conn: psycopg.Connection[Any], first: int, last: int) -> None:
    """The big campaign's waiting rows `first`..`last`."""
    conn.execute(
        """
        INSERT INTO messages (id, tenant_id, direction, channel, provider,
            provider_account_id, to_number, status, attempts, metadata, origin,
            slot_reserved, campaign_id, created_at, updated_at)
        SELECT 'msg_' || pg_temp.ulid_time((now() AT TIME ZONE 'UTC') - interval '1 day')
                || 'W' || lpad(to_hex(g), 15, '0'),
            w.tenant, 'outbound', 'sms', 'twilio', w.account,
            '+1404' || lpad(g::text, 7, '0'), 'scheduled', 0, '{}', 'api', false,
            'cmp_growth001', (now() AT TIME ZONE 'UTC') - interval '1 day',
            (now() AT TIME ZONE 'UTC') - interval '1 day'
        FROM generate_series(%s::int, %s::int) AS g JOIN who w ON w.n = 2
        """,
        (first, last),
    )


def campaigns(dsn: str) -> None:
    """The 50 campaigns (the big one paused, with SAMPLE of its rows), on the empty
    database before it is measured."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _who(conn)
        conn.execute(
            """
            INSERT INTO campaigns (id, tenant_id, name, channel, provider, status, rate,
                allowance, total, skipped, invalid, duplicates, created_at, updated_at)
            SELECT 'cmp_growth' || lpad(c::text, 3, '0'), w.tenant, 'c' || c, 'sms',
                'twilio', CASE WHEN c = 1 THEN 'paused' ELSE 'completed' END, 10, 0,
                0, 0, 0, 0, now() - interval '1 day' * c, now()
            FROM generate_series(1, 50) AS c JOIN who w ON w.n = 1 + c % 20
            """
        )
        _waiting(conn, 1, SAMPLE)
        from services.reporting.rollups import fold_all

        fold_all(max_batches=10_000)
        conn.execute("VACUUM ANALYZE")


def fill(dsn: str, messages: int, big: int) -> None:
    """N messages over 60 days in Herald's shape (the big campaign's rows up to `big`
    waiting)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _who(conn)
        started = time.monotonic()
        step = 200_000
        for first in range(0, messages, step):
            conn.execute(
                """
                INSERT INTO messages (id, tenant_id, direction, channel, provider,
                    provider_account_id, to_number, from_number, status,
                    provider_message_id, attempts, metadata, origin, slot_reserved,
                    campaign_id, price, price_unit, pricing_category, billable, body,
                    created_at, updated_at, sent_at, delivered_at)
                SELECT 'msg_' || pg_temp.ulid_time(at) || lpad(to_hex(g), 16, '0'),
                    w.tenant, CASE WHEN g % 20 = 0 THEN 'inbound' ELSE 'outbound' END,
                    CASE WHEN g % 3 = 0 THEN 'whatsapp' ELSE 'sms' END, 'twilio', w.account,
                    CASE WHEN g % 5000 = 7 THEN %(number)s
                        ELSE '+1303' || lpad((g % 9000000)::text, 7, '0') END,
                    '+120255501' || lpad((w.n - 1)::text, 2, '0'),
                    CASE WHEN g % 20 = 0 THEN 'received'
                        WHEN g % 1000 = 3 THEN 'canceled'
                        WHEN g % 50 = 1 THEN 'failed'
                        WHEN g % 40 = 2 THEN 'undelivered'
                        WHEN g % 10 = 4 THEN 'sent'
                        WHEN g % 2 = 0 THEN 'read' ELSE 'delivered' END,
                    'SM' || lpad(to_hex(g), 32, '0'), 1, '{}', 'api', false,
                    CASE WHEN g % 97 = 0 THEN 'cmp_growth' || lpad((2 + g % 49)::text, 3, '0')
                    END,
                    CASE WHEN g % 3 <> 0 AND g % 20 <> 0 THEN 0.0079 END,
                    CASE WHEN g % 3 <> 0 AND g % 20 <> 0 THEN 'USD' END,
                    CASE WHEN g % 3 = 0 THEN 'marketing' END,
                    CASE WHEN g % 3 = 0 THEN true END,
                    'Your code is ' || g, at, at + interval '3 seconds', at + interval '1 second',
                    at + interval '3 seconds'
                FROM (
                    SELECT g, (now() AT TIME ZONE 'UTC') - interval '2 hours'
                        - interval '60 days' * (1 - g::float8 / %(n)s) AS at
                    FROM generate_series(%(first)s, %(last)s) AS g
                ) AS m JOIN who w ON w.n = 1 + m.g % 20
                """.replace("%(number)s", f"'{NUMBER}'")
                .replace("%(n)s", str(messages))
                .replace("%(first)s", str(first + 1))
                .replace("%(last)s", str(min(messages, first + step)))
            )
            print(
                f"  messages {min(messages, first + step):,} ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
            )
        _waiting(conn, SAMPLE + 1, big)
        conn.execute(
            """
            INSERT INTO message_events (message_id, status, native_status, source, applied, at)
            SELECT id, s.status, s.status, 'callback', true, created_at + s.d
            FROM messages CROSS JOIN (VALUES ('queued', interval '0'),
                ('sent', interval '1 second'), ('delivered', interval '3 seconds')) AS s(status, d)
            WHERE direction = 'outbound' AND messages.status <> 'scheduled'
            """
        )
        conn.execute(
            """
            INSERT INTO webhook_events (provider, kind, dedup_key, tenant_id, message_id,
                provider_message_id, payload, received_at)
            SELECT 'twilio', 'status', 'twilio:' || provider_account_id || ':'
                    || provider_message_id || ':' || s.status,
                tenant_id, id, provider_message_id,
                json_build_object('MessageStatus', s.status), created_at
            FROM messages CROSS JOIN (VALUES ('sent'), ('delivered')) AS s(status)
            WHERE direction = 'outbound' AND provider_message_id IS NOT NULL
            """
        )
        conn.execute(
            """
            INSERT INTO contacts (id, tenant_id, phone, opted_out, created_at, updated_at)
            SELECT 'con_' || lpad(g::text, 26, '0'), w.tenant,
                '+1303' || lpad(g::text, 7, '0'), g % 100 = 0, now(), now()
            FROM generate_series(1, %(n)s) AS g JOIN who w ON w.n = 1 + g % 20
            """.replace("%(n)s", str(max(1000, messages // 25)))
        )
        from services.reporting.rollups import fold_all

        fold_all(max_batches=10_000)
        conn.execute("VACUUM ANALYZE")
        print(f"  filled in {time.monotonic() - started:.0f} s", file=sys.stderr)


def _median_ms(operation: Callable[[], Any], calls: int) -> float:
    operation()  # warm: caches, prepared plans
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        operation()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def operations(tenants: list[dict[str, str]], client: Any) -> dict[str, Callable[[], Any]]:
    from models import Campaign, session_scope, utcnow
    from services.campaigns.campaigns import campaign_to_dict, release_due_campaigns
    from services.messages import gate, reconcile, sweep
    from services.privacy.erasure import erase_number
    from services.reporting import console
    from services.reporting.rollups import fold_all

    big_tenant = tenants[1 % TENANTS]  # cmp_growth001's tenant (the fill's `1 + 1 % 20`)
    auth = {"Authorization": f"Bearer {big_tenant['api_key']}"}

    def get(path: str) -> Callable[[], Any]:
        def call() -> Any:
            response = client.get(path, headers=auth)
            assert response.status_code == 200, (path, response.status_code)

        return call

    def with_session(work: Callable[[Any, str], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with session_scope() as session:
                return work(session, big_tenant["tenant_id"])

        return call

    def overview(session: Any, tenant_id: str) -> None:
        now = utcnow()
        console.status_buckets(session, tenant_id, span=timedelta(hours=1), buckets=12, now=now)
        console.status_buckets(session, tenant_id, span=timedelta(days=1), buckets=24, now=now)
        console.failure_reasons(session, tenant_id, since=now - timedelta(days=1))

    def campaigns_list(session: Any, tenant_id: str) -> None:
        for campaign in console.list_campaigns(session, tenant_id):
            campaign_to_dict(session, campaign)

    def live_view(session: Any, tenant_id: str) -> None:
        campaign = session.get(Campaign, "cmp_growth001")
        if campaign is not None:
            campaign_to_dict(session, campaign)
            console.campaign_send_rate(session, campaign)

    def reconcile_pass() -> None:
        after = timedelta(minutes=10)
        reconcile.unpriced_twilio_messages(after)
        reconcile.stale_twilio_messages(after)

    def release() -> None:
        sweep.release_scheduled()
        gate.release_parked()
        release_due_campaigns()

    def erase(tenant_id: str | None) -> Callable[[], Any]:
        """A person's erasure, rolled back so each call finds the same rows."""

        def call() -> None:
            with session_scope() as session:
                erase_number(session, PERSON, tenant_id)
                session.rollback()

        return call

    return {
        "GET /v1/messages?status=canceled": get("/v1/messages?status=canceled"),
        "GET /v1/messages?campaign_id=<big>": get("/v1/messages?campaign_id=cmp_growth001"),
        "GET /v1/messages?to=<number>": get(f"/v1/messages?to=%2B{NUMBER[1:]}"),
        "GET /v1/usage (30 days)": get("/v1/usage"),
        "GET /v1/usage?group_by=status,channel": get("/v1/usage?group_by=status,channel"),
        "/metrics": get("/metrics"),
        "console overview": with_session(overview),
        "console usage": with_session(
            lambda s, t: console.usage_report(s, t, {"group_by": "channel"})
        ),
        "console campaigns list": with_session(campaigns_list),
        "console number filter": with_session(
            lambda s, t: console.search_messages(s, t, console.MessageFilters(number=NUMBER))
        ),
        "console campaign live view": with_session(live_view),
        "reconcile selection (every 60 s)": reconcile_pass,
        "release (every 1 s, 100k waiting)": release,
        "fold (every 5 s)": fold_all,
        "erase a person (tenant)": erase(big_tenant["tenant_id"]),
        "erase a person (operator, every tenant)": erase(None),
    }


def create_campaign_csv(
    client: Any, tenant: dict[str, str], dsn: str, size: int, tag: str
) -> float:
    """Seconds to create a campaign of `size` recipients uploaded as a CSV through the API
    (the request a user makes), on a tenant without a daily quota; the campaign and its
    rows are deleted afterwards, so the measurements after it see the database as before."""
    import io

    lines = "".join(f"+1303{int(tag) + 2}{n:06d},Name{n}\n" for n in range(size))
    body = io.BytesIO(f"to,name\n{lines}".encode())
    fields = {"name": f"growth {tag}", "channel": "sms", "body": "Offer", "rate": 1000}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET daily_limit = 0 WHERE id = %s", (tenant["tenant_id"],))
    started = time.perf_counter()
    response = client.post(
        "/v1/campaigns",
        headers={"Authorization": f"Bearer {tenant['api_key']}"},
        data={"campaign": json.dumps(fields), "file": (body, "recipients.csv")},
        content_type="multipart/form-data",
    )
    elapsed = time.perf_counter() - started
    created = response.get_json()
    assert response.status_code == 201 and created["total"] == size, created
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM messages WHERE campaign_id = %s", (created["id"],))
        conn.execute("DELETE FROM campaigns WHERE id = %s", (created["id"],))
    return elapsed


def _bytes(dsn: str) -> dict[str, int]:
    tables = ("messages", "message_events", "webhook_events", "message_counts")
    with psycopg.connect(dsn) as conn:
        return {
            t: int(conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0])
            for t in tables
        }


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _backend_cpu(dsn: str) -> dict[int, float]:
    """CPU seconds so far of each backend connected to the growth database (read from
    /proc: the server runs on this machine), this sampling connection excepted."""
    with psycopg.connect(dsn) as conn:
        pids = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (DATABASE,),
            )
        ]
    out = {}
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


class BackendCpu:
    """CPU of the growth database's backends over a window, as a percent of a core.
    Sampled on demand (`sample`, say every second): a backend born meanwhile counts
    from zero, one gone keeps its last sample; `exclude` leaves out the bench's own."""

    def __init__(self, dsn: str, exclude: Iterable[int] = ()) -> None:
        self.dsn, self.exclude = dsn, set(exclude)
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.started = 0.0

    def start(self) -> None:
        self.first = {p: c for p, c in _backend_cpu(self.dsn).items() if p not in self.exclude}
        self.last = dict(self.first)
        self.started = time.monotonic()

    def sample(self) -> None:
        for pid, cpu in _backend_cpu(self.dsn).items():
            if pid not in self.exclude:
                self.first.setdefault(pid, 0.0)
                self.last[pid] = cpu

    def percent(self) -> float:
        """Percent of a core since `start` (samples once more first)."""
        self.sample()
        elapsed = time.monotonic() - self.started
        return 100 * sum(self.last[p] - self.first[p] for p in self.last) / elapsed


@contextlib.contextmanager
def herald_running(url: str, tag: str) -> Iterator[dict[str, Any]]:
    """`herald run` (API, worker, beat, sandbox) on the growth database, its
    HERALD_READY facts yielded once it is ready and past its start-up (migrations
    checked, first ticks, pools filled); stopped on exit. Its output goes to a file in
    its home, so a chatty stack never blocks on a full pipe."""
    from herald.stack import free_port

    home = Path(tempfile.mkdtemp(prefix=f"herald-growth-{tag}-"))
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "HERALD_HOME": str(home),
        "PORT": str(free_port()),
        "HERALD_SANDBOX_PORT": str(free_port()),
        "HERALD_REDIS_PORT": str(free_port()),
        "HERALD_QUEUE_PREFIX": f"growth-{tag}-{os.getpid()}:",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("HERALD_PUBLIC_URL", None)  # callbacks are signed for the API's own URL
    proc = subprocess.Popen(
        [sys.executable, "-m", "herald.cli", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("HERALD_READY "):
                ready = json.loads(line[len("HERALD_READY ") :])
                break
        else:
            raise RuntimeError(f"herald run ended before it was ready; see {home}")
        out = proc.stdout

        def copy() -> None:
            with (home / "herald-run.log").open("a") as log:
                for line in out:
                    log.write(line)

        threading.Thread(target=copy, daemon=True).start()
        time.sleep(15)  # start-up: migrations checked, first ticks, pools filled
        yield ready
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def idle_cpu(url: str, dsn: str, seconds: float) -> float:
    """Percent of a core the PostgreSQL backends spend while `herald run` runs on the
    database with nothing to send, over `seconds` after a warm-up."""
    with herald_running(url, "idle"):
        meter = BackendCpu(dsn)
        meter.start()
        while time.monotonic() - meter.started < seconds:
            time.sleep(1)
            meter.sample()
        return meter.percent()


# ------------------------------------------------------------------ the drain

DRAIN_THREADS = 8
DRAIN_WARM = 16  # callbacks applied first, so the measured ones find the processes warm
DRAIN_TIMEOUT = 120.0


def _drain_messages(dsn: str, tag: str, count: int) -> tuple[dict[str, str], list[dict[str, str]]]:
    """`count` outbound Twilio SMS of the first growth tenant, `sent` with a SID each,
    inserted as the fill writes messages (ids ULID-shaped, naive UTC times): its
    account's facts and the messages' (id, sid, to)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ULID_TIME)
        row = conn.execute(
            "SELECT a.id, a.tenant_id, a.external_id FROM provider_accounts AS a"
            " JOIN tenants AS t ON t.id = a.tenant_id"
            " WHERE t.name = 'growth-0' AND a.provider = 'twilio'"
        ).fetchone()
        assert row is not None, "no growth-0 Twilio account"
        account = {"id": row[0], "tenant_id": row[1], "sid": row[2], "from": "+12025550100"}
        rows = conn.execute(
            """
            INSERT INTO messages (id, tenant_id, direction, channel, provider,
                provider_account_id, to_number, from_number, status, provider_message_id,
                attempts, metadata, origin, slot_reserved, body, created_at, updated_at,
                sent_at)
            SELECT 'msg_' || pg_temp.ulid_time(at) || 'D' || %(tag)s || lpad(to_hex(g), 14, '0'),
                %(tenant)s, 'outbound', 'sms', 'twilio', %(account)s,
                '+1505' || lpad(g::text, 7, '0'), %(from)s, 'sent',
                'SM' || md5('growth-drain-' || %(tag)s || g), 1, '{}', 'api', false,
                'Your code is ' || g, at, at + interval '1 second', at + interval '1 second'
            FROM generate_series(1, %(count)s) AS g,
                LATERAL (SELECT (now() AT TIME ZONE 'UTC') - interval '5 seconds' AS at) AS t
            RETURNING id, provider_message_id, to_number
            """,
            {
                "tag": tag,
                "tenant": account["tenant_id"],
                "account": account["id"],
                "from": account["from"],
                "count": count,
            },
        ).fetchall()
    messages = [{"id": r[0], "sid": r[1], "to": r[2]} for r in sorted(rows)]
    return account, messages


def _drop_drain(dsn: str, ids: list[str]) -> None:
    """Remove the drain's messages, events and receipts (the fill would collide with
    them; the delete trigger keeps the counts right)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM message_events WHERE message_id = ANY(%s)", (ids,))
        conn.execute("DELETE FROM webhook_events WHERE message_id = ANY(%s)", (ids,))
        conn.execute("DELETE FROM webhook_inbox WHERE ref = ANY(%s)", (ids,))
        conn.execute("DELETE FROM messages WHERE id = ANY(%s)", (ids,))


def _signed_callbacks(
    api: str, account: dict[str, str], messages: list[dict[str, str]], token: str
) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(message id, URL, body, headers) of a signed `delivered` status callback for
    each message, built as Twilio sends them (bench/compare.py's ingest_phase)."""
    from sandbox.callbacks import twilio_callback

    out = []
    for m in messages:
        url = f"{api}/webhooks/twilio/status?message_id={m['id']}"
        params = {
            "SmsSid": m["sid"],
            "SmsStatus": "delivered",
            "MessageStatus": "delivered",
            "To": m["to"],
            "MessageSid": m["sid"],
            "AccountSid": account["sid"],
            "From": account["from"],
            "ApiVersion": "2010-04-01",
        }
        cb = twilio_callback(
            url, params, token, kind="status", event="delivered", message_id=m["id"]
        )
        out.append((m["id"], url, cb.body, cb.headers))
    return out


def _post_all(
    callbacks: list[tuple[str, str, bytes, dict[str, str]]], threads: int
) -> tuple[dict[str, float], dict[int, int]]:
    """POST every callback from `threads` client threads at once; the wall-clock time
    (time.time()) each was sent at, and the count of each answer status."""
    import httpx

    sent: dict[str, float] = {}
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client(part: list[tuple[str, str, bytes, dict[str, str]]]) -> None:
        with httpx.Client(timeout=30) as http:
            for message_id, url, body, headers in part:
                at = time.time()
                try:
                    code = http.post(url, content=body, headers=headers).status_code
                except httpx.HTTPError:
                    code = 0
                with lock:
                    sent[message_id] = at
                    statuses[code] = statuses.get(code, 0) + 1

    workers = [
        threading.Thread(target=client, args=(callbacks[i::threads],)) for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sent, statuses


def _wait_delivered(
    conn: psycopg.Connection, ids: list[str], meter: BackendCpu | None, timeout: float
) -> dict[str, float]:
    """Poll (every 5 ms) until these messages are `delivered`: when each was first
    seen so (time.time()). The meter is sampled about once a second meanwhile."""
    seen: dict[str, float] = {}
    left = list(ids)
    deadline = time.monotonic() + timeout
    sampled = time.monotonic()
    while left and time.monotonic() < deadline:
        found = conn.execute(
            "SELECT id FROM messages WHERE id = ANY(%s) AND status = 'delivered'", (left,)
        ).fetchall()
        now = time.time()
        for (message_id,) in found:
            seen[message_id] = now
        if found:
            done = {r[0] for r in found}
            left = [i for i in left if i not in done]
        if meter is not None and time.monotonic() - sampled >= 1:
            meter.sample()
            sampled = time.monotonic()
        time.sleep(0.005)
    return seen


def _percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 (nearest rank) and max of `values`, in ms (NaN when there are none)."""
    if not values:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return 1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {"p50": rank(0.5), "p99": rank(0.99), "max": 1000 * ordered[-1]}


def drain(url: str, dsn: str, count: int, tag: str) -> dict[str, Any]:
    """N signed Twilio `delivered` status callbacks posted at once (DRAIN_THREADS client
    threads) to `herald run` on the database, for N `sent` messages: how long each took
    to be applied, from the rows Herald writes (the receipt's `received_at`, set when
    the API stored the callback; the message's `updated_at`, set by the applier just
    before its UPDATE) and as a client sees it (sent → first polled `delivered`), the
    drain's total time and the PostgreSQL backends' CPU over it."""
    account, messages = _drain_messages(dsn, tag, DRAIN_WARM + count)
    ids = [m["id"] for m in messages]
    try:
        with herald_running(url, f"drain-{tag}") as ready:
            callbacks = _signed_callbacks(ready["api"], account, messages, "token")
            warm, measured = callbacks[:DRAIN_WARM], callbacks[DRAIN_WARM:]
            with psycopg.connect(dsn, autocommit=True) as conn:
                _post_all(warm, DRAIN_THREADS)
                warmed = _wait_delivered(conn, ids[:DRAIN_WARM], None, DRAIN_TIMEOUT)
                if len(warmed) < DRAIN_WARM:
                    raise RuntimeError(f"warm-up callbacks not applied; see {ready}")
                time.sleep(1)
                poller = conn.info.backend_pid
                measured_ids = ids[DRAIN_WARM:]
                meter = BackendCpu(dsn, exclude={poller})
                meter.start()
                started = time.time()
                posting: dict[str, Any] = {}

                def post() -> None:
                    posting["sent"], posting["statuses"] = _post_all(measured, DRAIN_THREADS)
                    posting["done"] = time.time()

                poster = threading.Thread(target=post)
                poster.start()
                seen = _wait_delivered(conn, measured_ids, meter, DRAIN_TIMEOUT)
                cpu = meter.percent()
                load = os.getloadavg()[0]
                poster.join()
                rows = conn.execute(
                    """
                    SELECT m.id, extract(epoch FROM w.received_at),
                        extract(epoch FROM m.updated_at)
                    FROM messages AS m JOIN webhook_events AS w ON w.message_id = m.id
                        AND w.dedup_key = 'twilio:' || m.provider_account_id || ':'
                            || m.provider_message_id || ':delivered'
                    WHERE m.id = ANY(%s) AND m.status = 'delivered'
                    """,
                    (measured_ids,),
                ).fetchall()
    finally:
        _drop_drain(dsn, ids)
    sent = posting["sent"]
    # The applier stamps every message of a batch with one `updated_at`.
    batches = len({r[2] for r in rows})
    received = {r[0]: float(r[1]) for r in rows}
    applied = {r[0]: float(r[2]) for r in rows}
    return {
        "applied": len(rows),
        "batches": batches,
        "statuses": posting["statuses"],
        "received_applied": _percentiles([applied[i] - received[i] for i in applied]),
        "sent_applied": _percentiles([applied[i] - sent[i] for i in applied]),
        "sent_seen": _percentiles([seen[i] - sent[i] for i in seen]),
        "posting_s": posting["done"] - started,
        "drain_s": (max(applied.values()) - started) if applied else math.nan,
        "seen_s": (max(seen.values()) - started) if len(seen) == count else math.nan,
        "cpu": cpu,
        "load": load,
    }


def _print_drain(count: int, total: int, results: dict[str, dict[str, Any]]) -> None:
    names = list(results)
    heads = {"empty": "empty", "filled": f"{total:,}"}
    print(
        f"\nTwilio status callbacks: {count:,} signed `delivered` posted at once by "
        f"{DRAIN_THREADS} threads to `herald run`"
    )
    print(f"  {'':<40}" + "".join(f"{heads.get(n, n):>12}" for n in names))

    def line(label: str, fmt: str, pick: Callable[[dict[str, Any]], Any]) -> None:
        print(f"  {label:<40}" + "".join(f"{pick(results[n]):>12{fmt}}" for n in names))

    line("applied (of posted)", "", lambda r: r["applied"])
    line("applier batches (distinct updated_at)", "", lambda r: r["batches"])
    line("answers", "", lambda r: ",".join(f"{k}x{v}" for k, v in sorted(r["statuses"].items())))
    for key, label in (
        ("received_applied", "received→applied"),
        ("sent_applied", "sent→applied"),
        ("sent_seen", "sent→seen delivered (5 ms poll)"),
    ):
        for q in ("p50", "p99", "max"):
            line(f"{label} {q} ms", ".1f", lambda r, key=key, q=q: r[key][q])
    line("all posted, s", ".2f", lambda r: r["posting_s"])
    line("drain (first sent→last applied), s", ".2f", lambda r: r["drain_s"])
    line("drain (first sent→all seen), s", ".2f", lambda r: r["seen_s"])
    line("PostgreSQL CPU, % of a core", ".1f", lambda r: r["cpu"])
    line("load average (1 min) at the end", ".2f", lambda r: r["load"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--big-campaign", type=int, default=None, help="default N/10, max 100k")
    parser.add_argument("--calls", type=int, default=7)
    parser.add_argument(
        "--idle", type=float, default=0, help="seconds of idle PostgreSQL CPU to read (0: skip)"
    )
    parser.add_argument(
        "--create",
        type=int,
        default=0,
        help="recipients of a campaign created from a CSV through the API (0: skip)",
    )
    parser.add_argument(
        "--drain",
        type=int,
        default=0,
        help="Twilio status callbacks to post at once and time until applied (0: skip)",
    )
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgresql"):
        sys.exit("DATABASE_URL must name a PostgreSQL server")
    url, dsn = _urls(base)
    big = args.big_campaign or min(100_000, max(1000, args.messages // 10))
    _admin(base, f"DROP DATABASE IF EXISTS {DATABASE}")
    _admin(base, f"CREATE DATABASE {DATABASE}")
    try:
        os.environ["DATABASE_URL"] = url
        os.environ.setdefault("HERALD_SECRET_KEY", Fernet.generate_key().decode())
        from core.config import get_settings
        from models import reset_engine

        get_settings.cache_clear()
        reset_engine()
        tenants, client = _setup()
        campaigns(dsn)
        ops = operations(tenants, client)
        empty = {name: _median_ms(op, args.calls) for name, op in ops.items()}
        idle = {"empty": idle_cpu(url, dsn, args.idle)} if args.idle else {}
        drained = {"empty": drain(url, dsn, args.drain, "E")} if args.drain else {}
        creation = {}
        if args.create:
            creation["empty"] = create_campaign_csv(client, tenants[2], dsn, args.create, "1")
        print(f"filling {args.messages:,} messages (+{big:,} waiting)...", file=sys.stderr)
        fill(dsn, args.messages, big)
        full = {name: _median_ms(op, args.calls) for name, op in ops.items()}
        if args.idle:
            idle["filled"] = idle_cpu(url, dsn, args.idle)
        if args.drain:
            drained["filled"] = drain(url, dsn, args.drain, "F")
        sizes = _bytes(dsn)
        if args.create:
            creation["filled"] = create_campaign_csv(client, tenants[2], dsn, args.create, "2")
    finally:
        reset_engine()
        _admin(base, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    total = args.messages + big
    print(f"\n{'operation':<40} {'empty ms':>9} {f'{total:,} ms':>12} {'x':>6}")
    for name in ops:
        ratio = full[name] / empty[name] if empty[name] else float("nan")
        print(f"{name:<40} {empty[name]:>9.1f} {full[name]:>12.1f} {ratio:>6.1f}")
    print("\nbytes per message (pg_total_relation_size / messages):")
    for table, size in sizes.items():
        print(f"  {table:<16} {size / total:>8.0f}")
    print(f"  {'all four':<16} {sum(sizes.values()) / total:>8.0f}")
    if idle:
        print(f"\nPostgreSQL CPU, Herald idle ({args.idle:.0f} s, % of a core):")
        for name, percent in idle.items():
            print(f"  {name:<16} {percent:>8.2f}")
    if creation:
        print(f"\ncampaign creation, {args.create:,} recipients (CSV through the API), s:")
        for name, seconds in creation.items():
            print(f"  {name:<16} {seconds:>8.2f}")
    if drained:
        _print_drain(args.drain, total, drained)


if __name__ == "__main__":
    main()
