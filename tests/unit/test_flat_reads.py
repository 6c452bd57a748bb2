"""Plans, not timings: every list filter, usage, campaign progress, /metrics, the console's
overview and number filter, reconcile's selection and the releases read what they
return (an index range or a rollup), not the tenant's whole history or the table.

Each test fills `messages` in a transaction it rolls back: another tenant's 14,000
rows, and 6,000 of the tenant's own spread over 30 days (delivered, priced, the older
half from one campaign), with a few rows each filter looks for. Every statement the
operation runs is replayed under EXPLAIN (ANALYZE, BUFFERS) and its buffer accesses summed;
a read of the tenant's history alone is thousands."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from core.ids import id_at
from models import Campaign, get_engine, session_scope, utcnow
from tests.conftest import make_tenant, statements_run

OTHERS = 14_000
OWN = 6_000
NUMBER = "+12025550199"
SENDER = "+15550001111"
BUDGET = 150  # buffer accesses: an index range and a few heap pages, never the history


@pytest.fixture
def crowd(tenant: dict[str, str]) -> Iterator[tuple[Session, str]]:
    other = make_tenant("other")
    now = utcnow()
    _settle()
    with session_scope() as session:
        accounts = {
            t: session.execute(
                text(
                    "SELECT id FROM provider_accounts WHERE tenant_id = :t AND provider = 'twilio'"
                ),
                {"t": t},
            ).scalar_one()
            for t in (tenant["tenant_id"], other["tenant_id"])
        }
        rows: dict[str, list[Any]] = {k: [] for k in ("id", "tenant", "at", "kind")}

        def add(tenant_id: str, at: Any, kind: str, n: int) -> None:
            rows["id"].append(id_at("msg", at)[:-8] + f"{n:08d}")
            rows["tenant"].append(tenant_id)
            rows["at"].append(at.replace(tzinfo=None))
            rows["kind"].append(kind)

        for n in range(OTHERS):  # another tenant, every status, settled (past reconcile's age)
            add(other["tenant_id"], now - timedelta(days=4, minutes=n * 5), "other", n)
        for n in range(OWN):  # the tenant: the last 30 days, half of them in the last day
            back = timedelta(minutes=70 + (n * 7 if n % 2 else n % 1380))
            add(tenant["tenant_id"], now - back, "own", OTHERS + n)
        for i, kind in enumerate(("canceled", "to", "inbound", "failed", "waiting") * 3):
            add(tenant["tenant_id"], now - timedelta(days=20, minutes=i), kind, 90_000 + i)
        replica = _quiet_rollup_trigger(session)
        session.execute(
            text(
                """
                INSERT INTO messages (id, tenant_id, direction, channel, provider,
                    provider_account_id, to_number, from_number, status, provider_message_id,
                    attempts, metadata, origin, slot_reserved, campaign_id, price, price_unit,
                    error_code, created_at, updated_at, sent_at)
                SELECT r.id, r.tenant, CASE r.kind WHEN 'inbound' THEN 'inbound'
                        ELSE 'outbound' END,
                    'sms', 'twilio', CASE r.tenant WHEN :own THEN :a ELSE :b END,
                    CASE WHEN r.kind = 'to' OR (r.kind = 'other' AND r.n % 7 <> 5) THEN :number
                        ELSE '+1303' || lpad(r.n::text, 7, '0') END,
                    CASE r.kind WHEN 'inbound' THEN :number ELSE :sender END,
                    CASE r.kind WHEN 'own' THEN 'delivered' WHEN 'to' THEN 'delivered'
                        WHEN 'inbound' THEN 'received' WHEN 'waiting' THEN 'scheduled'
                        WHEN 'other' THEN (ARRAY['canceled', 'failed', 'queued', 'sent',
                            'delivered', 'scheduled', 'read'])[1 + r.n % 7]
                        ELSE r.kind END,
                    'SMflat' || r.n, 1, '{}', 'api', false,
                    CASE WHEN r.kind = 'waiting' OR (r.kind = 'own' AND r.n % 2 = 0)
                        THEN 'cmp_flat_big'
                        WHEN r.kind = 'other' AND r.n % 7 = 5 THEN 'cmp_flat_wait' END,
                    CASE WHEN r.kind = 'own' THEN 0.0079 WHEN r.kind = 'other' THEN 0.0083 END,
                    CASE WHEN r.kind IN ('own', 'other') THEN 'USD' END,
                    CASE r.kind WHEN 'failed' THEN 'rejected' END,
                    r.at, r.at, CASE WHEN r.kind = 'own' THEN r.at END
                FROM unnest(CAST(:ids AS text[]), CAST(:tenants AS text[]),
                    CAST(:ats AS timestamp[]), CAST(:kinds AS text[]))
                    WITH ORDINALITY AS r(id, tenant, at, kind, n)
                """
            ),
            {
                "own": tenant["tenant_id"],
                "a": accounts[tenant["tenant_id"]],
                "b": accounts[other["tenant_id"]],
                "number": NUMBER,
                "sender": SENDER,
                "ids": rows["id"],
                "tenants": rows["tenant"],
                "ats": rows["at"],
                "kinds": rows["kind"],
            },
        )
        if replica:
            _rolled_up(session)
        session.execute(text("ANALYZE messages"))
        try:
            yield session, tenant["tenant_id"]
        finally:
            session.rollback()


def _settle() -> None:
    """Other tests' committed deltas folded and their dead rows vacuumed, as the beat
    and autovacuum keep them in production (absent before the rollups)."""
    try:
        from services.reporting.rollups import fold_all
    except ImportError:
        return
    fold_all()
    with get_engine().connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("VACUUM message_count_deltas, message_counts")
        )


def _quiet_rollup_trigger(session: Session) -> bool:
    """Fill without the rollup trigger (when there is one): the rows are history,
    counted by _rolled_up as if folded long ago, not a month of deltas pending now."""
    if session.execute(text("SELECT to_regclass('message_counts')")).scalar() is None:
        return False
    session.execute(text("SET LOCAL session_replication_role = replica"))
    return True


_COLUMNS = (
    "direction, channel, provider, coalesce(pricing_category, ''), coalesce(campaign_id, ''),"
    " status, coalesce(price_unit, '')"
)


def _rolled_up(session: Session) -> None:
    """The filled rows added to the rollups, as the fold would have."""
    session.execute(
        text(
            f"""
            INSERT INTO message_counts (tenant_id, span, start, direction, channel, provider,
                category, campaign_id, status, price_unit, messages, billable, cost)
            SELECT tenant_id, s.span, date_trunc(s.span, created_at), {_COLUMNS}, count(*),
                count(*) FILTER (WHERE billable), coalesce(sum(price), 0)
            FROM messages CROSS JOIN (VALUES ('hour'), ('day')) AS s(span)
            WHERE provider_message_id LIKE 'SMflat%'
            GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
            ON CONFLICT ON CONSTRAINT pk_message_counts DO UPDATE SET
                messages = message_counts.messages + excluded.messages,
                billable = message_counts.billable + excluded.billable,
                cost = message_counts.cost + excluded.cost
            """
        )
    )
    session.execute(
        text(
            """
            INSERT INTO message_status_totals (direction, status, messages)
            SELECT direction, status, count(*) FROM messages
            WHERE provider_message_id LIKE 'SMflat%' GROUP BY 1, 2
            ON CONFLICT ON CONSTRAINT pk_message_status_totals DO UPDATE SET
                messages = message_status_totals.messages + excluded.messages
            """
        )
    )
    session.execute(text("SET LOCAL session_replication_role = origin"))


def _cost(session: Session, operation: Callable[[], Any]) -> tuple[int, list[str]]:
    """Buffer accesses of every statement `operation` runs, and the tables it scanned
    whole, from each statement replayed under EXPLAIN ANALYZE."""
    with statements_run(session.get_bind()) as statements:
        operation()
    touched, whole = 0, []
    cursor = session.connection().connection.dbapi_connection.cursor()
    for sql, params in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            continue
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
        (plan,) = cursor.fetchone()
        root = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
        touched += root.get("Shared Hit Blocks", 0) + root.get("Shared Read Blocks", 0)
        whole += [
            n["Relation Name"]
            for n in _nodes(root)
            if n["Node Type"] == "Seq Scan"
            and n.get("Relation Name") in ("messages", "message_events", "webhook_events")
        ]
    return touched, whole


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _bounded(session: Session, operation: Callable[[], Any]) -> Any:
    result: list[Any] = []
    touched, whole = _cost(session, lambda: result.append(operation()))
    assert not whole, whole
    assert touched < BUDGET, (touched, getattr(operation, "__name__", ""))
    return result[0]


@pytest.mark.parametrize(
    ("filters", "found"),
    [({"status": "canceled"}, 3), ({"to": NUMBER}, 3), ({"campaign_id": "cmp_flat_big"}, 50)],
)
def test_each_list_filter_reads_one_page(crowd, filters: dict[str, str], found: int) -> None:
    from services.messages.service import list_messages

    session, tenant_id = crowd
    rows, _ = _bounded(session, lambda: list_messages(session, tenant_id, **filters, limit=50))
    assert len(rows) == found


def test_the_console_number_filter_reads_one_page_of_each_side(crowd) -> None:
    from services.reporting.console import MessageFilters, search_messages

    session, tenant_id = crowd
    rows, _ = _bounded(
        session, lambda: search_messages(session, tenant_id, MessageFilters(number=NUMBER))
    )
    assert {(m.direction, m.status) for m in rows} == {
        ("outbound", "delivered"),
        ("inbound", "received"),
    }
    assert len(rows) == 6


def test_usage_over_30_days_reads_the_rollup(crowd) -> None:
    from services.reporting.usage import usage

    session, tenant_id = crowd
    now = utcnow()
    report = _bounded(
        session, lambda: usage(session, tenant_id, now - timedelta(days=30), now, ["status"])
    )
    totals = report["totals"]
    assert totals["messages"] == OWN + 12  # the inbound ones are not usage
    assert totals["delivered"] == OWN + 3
    assert totals["cost"] == {"USD": f"{Decimal('0.0079') * OWN:.5f}"}


def test_usage_up_to_now_reads_the_current_hour_from_the_rollup(crowd) -> None:
    """The hour in progress is rolled up as it happens: a busy one (3,000 messages since
    the hour began) is not read from the messages at each `GET /v1/usage`."""
    from services.reporting.usage import period, usage

    session, tenant_id = crowd
    now = utcnow()
    hour = now.replace(minute=0, second=0, microsecond=0)
    session.execute(
        text(
            """
            INSERT INTO messages (id, tenant_id, direction, channel, provider, to_number,
                from_number, status, provider_message_id, attempts, metadata, origin,
                slot_reserved, price, price_unit, created_at, updated_at, sent_at)
            SELECT :prefix || lpad(n::text, 8, '0'), :tenant, 'outbound', 'sms', 'twilio',
                '+13035550000', :sender, 'delivered', 'SMhour' || n, 1, '{}', 'api', false,
                0.0079, 'USD', at, at, at
            FROM generate_series(1, 3000) AS n,
                LATERAL (SELECT CAST(:hour AS timestamp)
                    + (CAST(:now AS timestamp) - CAST(:hour AS timestamp)) * n / 3000) AS t(at)
            """
        ),
        {
            "prefix": id_at("msg", hour)[:-8],
            "tenant": tenant_id,
            "sender": SENDER,
            "hour": hour.replace(tzinfo=None),
            "now": now.replace(tzinfo=None),
        },
    )
    session.execute(text("ANALYZE messages"))
    start, end = period({}, now=now)  # the default period: the last 30 days
    report = _bounded(session, lambda: usage(session, tenant_id, start, end, ["status"]))
    assert report["totals"]["messages"] == OWN + 12 + 3000


def test_campaign_progress_and_live_view_read_counters(crowd) -> None:
    from services.campaigns.campaigns import campaign_to_dict
    from services.reporting.console import campaign_send_rate

    session, tenant_id = crowd
    campaign = Campaign(
        id="cmp_flat_big",
        tenant_id=tenant_id,
        name="big",
        channel="sms",
        provider="twilio",
        status="running",
        rate=Decimal(10),
        allowance=Decimal(0),
        total=OWN + 3,
    )
    session.add(campaign)
    session.flush()
    data = _bounded(session, lambda: campaign_to_dict(session, campaign))
    assert data["counts"]["delivered"] == OWN // 2 and data["counts"]["scheduled"] == 3
    _bounded(session, lambda: campaign_send_rate(session, campaign))


def test_a_campaign_release_reads_its_waiting_rows_only(crowd) -> None:
    from services.campaigns import campaigns

    session, tenant_id = crowd
    campaign = Campaign(
        id="cmp_flat_big",
        tenant_id=tenant_id,
        name="big",
        channel="sms",
        provider="twilio",
        status="running",
        rate=Decimal(10),
        allowance=Decimal(0),
        total=OWN + 3,
    )
    session.add(campaign)
    session.flush()
    assert _bounded(session, lambda: campaigns._release(session, campaign, utcnow())) == 3


def test_metrics_read_counters_and_small_indexes(crowd) -> None:
    from services.reporting import metrics
    from services.reporting.rollups import status_totals

    session, _ = crowd
    collector = metrics.HeraldCollector()
    with _borrowed(metrics, session):
        found = _bounded(session, lambda: list(collector._database()))
    by_status: dict[str, float] = {}
    for sample in found[0].samples:  # live and test messages are labelled apart
        status = sample.labels["status"]
        by_status[status] = by_status.get(status, 0.0) + sample.value
    # The counters, not the table: a retention purge removes messages and keeps their
    # counts (the run's chaos test purges thousands), so the table may hold fewer.
    counted = dict(
        session.execute(text("SELECT status, count(*) FROM messages GROUP BY status")).all()
    )
    totals: dict[str, float] = {}
    for (status, _test), n in status_totals(session).items():
        totals[status] = totals.get(status, 0.0) + n
    assert by_status == totals
    assert all(by_status.get(s, 0.0) >= n for s, n in counted.items()), (by_status, counted)
    crowd = dict(
        session.execute(
            text(
                "SELECT status, count(*) FROM messages WHERE provider_message_id LIKE 'SMflat%'"
                " GROUP BY status"
            )
        ).all()
    )
    assert crowd and all(by_status[s] >= n for s, n in crowd.items())


def test_the_overview_reads_the_rollup_and_the_days_failures(crowd) -> None:
    from services.reporting.console import failure_reasons, status_buckets

    session, tenant_id = crowd
    now = utcnow()
    _, counts = _bounded(
        session,
        lambda: status_buckets(session, tenant_id, span=timedelta(days=1), buckets=24, now=now),
    )
    assert sum(c.get("delivered", 0) for c in counts) > 0
    _bounded(session, lambda: failure_reasons(session, tenant_id, since=now - timedelta(days=1)))


@pytest.mark.parametrize(
    "selection", ["unpriced", "stale", "scheduled", "unpriced_backlog", "stale_backlog"]
)
def test_reconcile_and_the_scheduled_release_select_through_small_indexes(
    crowd, selection: str
) -> None:
    from services.messages import reconcile, sweep

    session, _ = crowd
    operations = {
        "unpriced": lambda: reconcile.unpriced_twilio_messages(timedelta(minutes=10)),
        "stale": lambda: reconcile.stale_twilio_messages(timedelta(minutes=10)),
        "scheduled": lambda: sweep.release_scheduled(),
        # What sizes a pass (services/messages/reconcile.py: pass_budget).
        "unpriced_backlog": lambda: reconcile.count_unpriced(timedelta(minutes=10), 901),
        "stale_backlog": lambda: reconcile.count_stale(timedelta(minutes=10), 901),
    }
    with _borrowed(reconcile, session), _borrowed(sweep, session):
        _bounded(session, operations[selection])


@contextlib.contextmanager
def _borrowed(module: Any, session: Session) -> Iterator[None]:
    """`module.session_scope` handing out the test's session (its rows are uncommitted)."""
    saved = module.session_scope
    module.session_scope = lambda: contextlib.nullcontext(session)
    try:
        yield
    finally:
        module.session_scope = saved


@pytest.mark.parametrize("selection", ["stale", "unpriced"])
def test_reconcile_reads_one_batch_of_a_large_backlog(crowd, selection: str) -> None:
    """3,000 messages waiting for reconcile in the last 72 h (a tenant ahead of its
    budget): a pass's selection reads its batch off the index, not the whole backlog
    sorted (5x slower at 1.1M messages with 5,000 waiting: bench/README.md, growth)."""
    from services.messages import reconcile

    session, tenant_id = crowd
    now = utcnow().replace(tzinfo=None)
    status = "sent" if selection == "stale" else "delivered"
    session.execute(
        text(
            """
            INSERT INTO messages (id, tenant_id, direction, channel, provider, to_number,
                from_number, status, provider_message_id, attempts, metadata, origin,
                slot_reserved, created_at, updated_at, sent_at)
            SELECT 'msg_backlog' || lpad(n::text, 6, '0'), :tenant, 'outbound', 'sms',
                'twilio', '+13035550000', :sender, :status, 'SMbacklog' || n, 1, '{}', 'api',
                false, at, at, at
            FROM generate_series(1, 3000) AS n,
                LATERAL (SELECT CAST(:now AS timestamp) - interval '70 hours'
                    + n * interval '1 minute') AS t(at)
            """
        ),
        {"tenant": tenant_id, "sender": SENDER, "status": status, "now": now},
    )
    session.execute(text("ANALYZE messages"))
    select = {
        "stale": reconcile.stale_twilio_messages,
        "unpriced": reconcile.unpriced_twilio_messages,
    }[selection]
    with _borrowed(reconcile, session):
        found = _bounded(session, lambda: select(timedelta(minutes=10)))
    # The oldest first: the ones closest to MAX_AGE, after which they are never asked.
    assert found == [f"msg_backlog{n:06d}" for n in range(1, reconcile.BATCH + 1)]
