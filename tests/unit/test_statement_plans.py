"""Plans, not timings: the status applier's lock and the expiry sweep must touch what
they change, not the table. Each test fills `messages` with thousands of rows inside a
transaction it rolls back, runs the statement under EXPLAIN ANALYZE and reads the plan's
buffer and loop counts, which do not depend on how busy the machine is."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from models import session_scope, utcnow
from tests.conftest import free_number, statements_run

FILL = 20_000


@pytest.fixture
def filled(tenant: dict[str, str]) -> Iterator[tuple[Session, str]]:
    """A session whose transaction holds FILL sent Twilio messages of the tenant (and
    rolls them back): stale statistics, as after a burst."""
    with session_scope() as session:
        account = session.execute(
            text("SELECT id FROM provider_accounts WHERE tenant_id = :t AND provider = 'twilio'"),
            {"t": tenant["tenant_id"]},
        ).scalar_one()
        session.execute(
            text(
                """
                INSERT INTO messages (id, tenant_id, direction, channel, provider,
                    provider_account_id, to_number, status, provider_message_id, attempts,
                    metadata, origin, slot_reserved, created_at, updated_at)
                SELECT 'msg_plan' || g, :t, 'outbound', 'sms', 'twilio', :a, '+12025550143',
                    'sent', 'SMplan' || g, 1, '{}', 'api', false, now(), now()
                FROM generate_series(1, :n) AS g
                """
            ),
            {"t": tenant["tenant_id"], "a": account, "n": FILL},
        )
        try:
            yield session, tenant["tenant_id"]
        finally:
            session.rollback()


def _explain(session: Session, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The executed plan of `sql` (psycopg's %(name)s parameters) as JSON."""
    cursor = session.connection().connection.dbapi_connection.cursor()
    cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
    (plan,) = cursor.fetchone()
    return (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]


def _outline(plan: dict[str, Any], depth: int = 0) -> str:
    """The plan as indented lines (node, relation, index, condition, buffers), for a
    failure message that says which plan the server chose."""
    cond = plan.get("Index Cond") or plan.get("Recheck Cond") or plan.get("Filter") or ""
    line = (
        f"{'  ' * depth}{plan['Node Type']} {plan.get('Relation Name') or ''} "
        f"{plan.get('Index Name') or ''} {cond} "
        f"buffers={plan.get('Shared Hit Blocks', 0) + plan.get('Shared Read Blocks', 0)}"
    )
    return "\n".join([line, *(_outline(c, depth + 1) for c in plan.get("Plans", ()))])


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def test_the_appliers_lock_reads_only_the_rows_it_locks(filled) -> None:
    from services.messages.status import _LOCK

    session, _ = filled
    plan = _explain(
        session,
        _LOCK.sql,
        {
            "ids": [f"msg_plan{i}" for i in (1, 500, 9000)],
            "provider": "twilio",
            "provider_ids": [f"SMplan{i}" for i in (2, 700, 15000, 19999)],
        },
    )
    assert plan["Actual Rows"] == 7
    scans = [n for n in _nodes(plan) if n.get("Relation Name") == "messages"]
    assert all(n["Node Type"] != "Seq Scan" for n in scans), scans
    # A whole-table (or whole-index) read of 20,000 rows touches hundreds of pages.
    touched = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
    assert touched < 120, _outline(plan)


def test_a_callback_found_by_provider_id_reads_one_index_entry(filled) -> None:
    from services.callbacks.receipts import find_message

    session, tenant_id = filled
    account = session.execute(
        text("SELECT id FROM provider_accounts WHERE tenant_id = :t AND provider = 'twilio'"),
        {"t": tenant_id},
    ).scalar_one()
    with statements_run(session.get_bind()) as statements:
        found = find_message(session, [account], None, "SMplan12345", provider="twilio")
        missing = find_message(session, [account], None, "SMnowhere", provider="twilio")
    assert found is not None and found.id == "msg_plan12345"
    assert missing is None
    sql, params = statements[-1]
    plan = _explain(session, sql, params)
    touched = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
    assert touched < 20, touched


def test_the_expiry_sweep_runs_its_inner_scan_once_for_10000_waiting_rows(filled) -> None:
    from services.messages import expiry

    session, _ = filled
    # Statistics that say nothing waits (the state in which the planner chose to run the
    # inner FOR UPDATE ... LIMIT once per waiting row), then 10,000 waiting rows.
    session.execute(text("ANALYZE messages"))
    past = utcnow() - timedelta(minutes=1)
    session.execute(
        text(
            "UPDATE messages SET status = 'queued', provider_message_id = NULL,"
            " expires_at = :past WHERE id LIKE 'msg_plan%' AND"
            " substr(id, 9)::int <= 10000"
        ),
        {"past": past},
    )
    sql, params = expiry.sweep_statement(utcnow(), expiry.SWEEP_LIMIT)
    plan = _explain(session, sql, params)
    assert plan["Actual Rows"] == expiry.SWEEP_LIMIT
    loops = [
        (n["Node Type"], n["Actual Loops"])
        for n in _nodes(plan)
        if n["Node Type"] in ("Limit", "LockRows", "Seq Scan", "Bitmap Heap Scan")
    ]
    assert loops and all(count == 1 for _, count in loops), loops


def test_the_gates_pair_order_probe_reads_only_the_rows_still_to_send(filled) -> None:
    """The gate asks, for each row of a batch, whether an earlier message of its pair is
    still to send: an index probe into the rows still to send, however many messages the
    pair already had (here 20,000 sent to the same number)."""
    from services.messages.gate import _GATE, AHEAD_LIMIT

    session, _ = filled
    session.execute(
        text(
            """
            INSERT INTO messages (id, tenant_id, direction, channel, provider,
                provider_account_id, to_number, status, attempts, metadata, origin,
                slot_reserved, created_at, updated_at)
            SELECT 'msg_wait' || g, tenant_id, 'outbound', 'sms', 'twilio',
                provider_account_id, '+12025550143', 'queued', 0, '{}', 'api', false,
                now(), now()
            FROM messages, generate_series(1, 50) AS g WHERE id = 'msg_plan1'
            """
        )
    )
    ids = [f"msg_wait{i}" for i in range(1, 51)]
    plan = _explain(session, _GATE.sql, {"ids": ids, "ahead_limit": AHEAD_LIMIT})
    assert plan["Actual Rows"] == 50
    scans = [n for n in _nodes(plan) if n.get("Relation Name") == "messages"]
    assert all(n["Node Type"] != "Seq Scan" for n in scans), _outline(plan)
    # One probe per row of the batch, into the index of rows still to send (the pair's
    # 20,000 sent rows are not in it), reading at most AHEAD_LIMIT entries each.
    probes = [n for n in scans if n.get("Index Name") == "ix_messages_pair_waiting"]
    assert len(probes) == 1 and probes[0]["Actual Loops"] == 50, _outline(plan)
    assert probes[0]["Actual Rows"] <= AHEAD_LIMIT, _outline(plan)


def test_the_send_policy_finds_a_person_by_phone_or_bsuid_through_indexes(filled) -> None:
    """A BSUID among the recipients is matched on `wa_user_id` (migration 0025_bsuid):
    the accept path's one contact SELECT must stay index probes with 20,000 contacts."""
    from services.messages.claim import _OPTED_OUT
    from services.policy.consent import _POLICY_SELECT

    session, tenant_id = filled
    session.execute(
        text(
            """
            INSERT INTO contacts (id, tenant_id, phone, wa_id, wa_user_id, opted_out,
                created_at, updated_at)
            SELECT 'con_plan' || g, :t, '+1202' || lpad(g::text, 7, '0'), NULL,
                CASE WHEN g % 2 = 0 THEN 'US.' || lpad(g::text, 20, '0') END,
                g % 3 = 0, now(), now()
            FROM generate_series(1, :n) AS g
            """
        ),
        {"t": tenant_id, "n": FILL},
    )
    # Statistics that know them (ANALYZE counts the transaction's own rows): which index
    # a plan takes on statistics from before such an import differs between servers and
    # with what else the table held (docs/operations.md, contacts' statistics).
    session.execute(text("ANALYZE contacts"))
    wanted = ["+12020000007", "US.00000000000000000042", "US.00000000000000019998"]
    plan = _explain(
        session, _POLICY_SELECT.sql, {"tenant": tenant_id, "numbers": wanted, "hashes": []}
    )
    assert plan["Actual Rows"] == 3, _outline(plan)
    scans = [n for n in _nodes(plan) if n.get("Relation Name") == "contacts"]
    assert scans and all(n["Node Type"] != "Seq Scan" for n in scans), _outline(plan)
    assert plan["Shared Hit Blocks"] + plan["Shared Read Blocks"] < 60, _outline(plan)
    plan = _explain(
        session,
        _OPTED_OUT.sql,
        {"tenants": [tenant_id], "forms": wanted, "hashes": []},
    )
    assert plan["Actual Rows"] == 2, _outline(plan)  # 42 and 19998 opted out (g % 3 == 0)
    scans = [n for n in _nodes(plan) if n.get("Relation Name") == "contacts"]
    assert scans and all(n["Node Type"] != "Seq Scan" for n in scans), _outline(plan)


def test_the_failover_sweep_reads_only_the_pending_rows(filled) -> None:
    """The failover sweep's choice reads the partial index of the messages whose
    fallback is pending, not the 20,000 others (a boolean `IS TRUE` would not match the
    index's predicate and scan the table)."""
    from sqlalchemy.dialects import postgresql

    from models.fast import naive_utc
    from services.messages.failover import due_statement

    session, _ = filled
    session.execute(
        text(
            "UPDATE messages SET failover_pending = true, failover_at = now() + interval '1 hour'"
            " WHERE id IN ('msg_plan1', 'msg_plan2', 'msg_plan3')"
        )
    )
    now = utcnow()
    statement = due_statement(now, 200)
    compiled = statement.compile(
        dialect=postgresql.psycopg.dialect(), compile_kwargs={"render_postcompile": True}
    )
    params = {k: naive_utc(v) if hasattr(v, "tzinfo") else v for k, v in compiled.params.items()}
    plan = _explain(session, str(compiled), params)
    scans = [n for n in _nodes(plan) if n.get("Relation Name") == "messages"]
    assert all(n["Node Type"] != "Seq Scan" for n in scans), _outline(plan)
    touched = plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
    # The pending rows other tests of the run left, plus these three: a scan of the table
    # reads thousands.
    assert touched < 200, _outline(plan)


def _tuples_read(session: Session) -> dict[str, int]:
    """Rows this transaction has read so far from the tables an erasure searches (by
    sequential scan or fetched through an index): counters, not timings."""
    rows = session.execute(
        text(
            "SELECT relname, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
            " FROM pg_stat_xact_user_tables WHERE schemaname = current_schema()"
            " AND relname IN ('messages', 'webhook_events')"
        )
    )
    return {name: int(read) for name, read in rows}


def _nobodys_number(session: Session) -> str:
    """A valid number that no message or receipt of this run names yet: an operator's
    erasure reaches every tenant, and other tests message the usual test numbers."""

    def named(number: str) -> bool:
        return session.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE to_number LIKE :p"
                " OR from_number LIKE :p)"
                " OR EXISTS (SELECT 1 FROM webhook_events WHERE payload::text LIKE :p)"
                " OR EXISTS (SELECT 1 FROM contacts WHERE phone LIKE :p OR wa_id LIKE :p)"
            ),
            {"p": f"%{number[2:]}%"},
        ).scalar_one()

    return free_number(taken=named)


@pytest.mark.parametrize("operator", [False, True], ids=["tenant", "operator"])
def test_an_erasure_reads_the_persons_rows_not_the_tenants(filled, operator) -> None:
    """A person with a contact and two messages in a tenant of 20,000 (one found by its
    number, one by the contact it names), each with two receipts, and one early receipt
    tied to no message: the erasure finds those and reads little else (it
    read every message and receipt of the tenant, or of all tenants, by contact id and by
    receipt text)."""
    from services.privacy.erasure import _erase, erase_number

    session, tenant_id = filled
    person = _nobodys_number(session)
    session.execute(
        text(
            """
            INSERT INTO webhook_events (provider, kind, dedup_key, tenant_id, message_id,
                provider_message_id, payload, received_at)
            SELECT 'twilio', 'status', 'twilio:plan:' || m.id || ':' || s, m.tenant_id, m.id,
                m.provider_message_id,
                json_build_object('MessageStatus', s, 'To', m.to_number), now()
            FROM messages m CROSS JOIN unnest(ARRAY['sent', 'delivered']) AS s
            WHERE m.id LIKE 'msg_plan%'
            """
        )
    )
    # Their contact, named by one of the messages sent to an earlier number of theirs.
    session.execute(
        text(
            "INSERT INTO contacts (id, tenant_id, phone, opted_out, created_at, updated_at)"
            " VALUES ('con_plan', :t, :p, false, now(), now())"
        ),
        {"t": tenant_id, "p": person},
    )
    session.execute(
        text("UPDATE messages SET to_number = :p WHERE id = 'msg_plan7'"), {"p": person}
    )
    session.execute(text("UPDATE messages SET contact_id = 'con_plan' WHERE id = 'msg_plan7007'"))
    session.execute(
        text(
            "UPDATE webhook_events SET payload = json_build_object('To', CAST(:p AS text))"
            " WHERE message_id IN ('msg_plan7', 'msg_plan7007')"
        ),
        {"p": person},
    )
    session.execute(
        text(
            "INSERT INTO webhook_events (provider, kind, dedup_key, tenant_id, payload,"
            " received_at) VALUES ('twilio', 'status', 'twilio:plan:early', :t,"
            " json_build_object('To', CAST(:p AS text)), now())"
        ),
        {"t": tenant_id, "p": person},
    )
    session.execute(text("ANALYZE messages"))
    session.execute(text("ANALYZE webhook_events"))
    unmatched = session.execute(
        text("SELECT count(*) FROM webhook_events WHERE message_id IS NULL")
    ).scalar_one()
    before = _tuples_read(session)
    if operator:
        # An operator's statements (receipts of no tenant too), over this tenant alone: over
        # every tenant of the run they probe each index once per tenant and number form,
        # which on a few thousand rows and hundreds of tenants costs more than reading the
        # table, so the planner rightly reads it; at 5.1M messages it probes
        # (bench/growth.py).
        done = _erase(session, {person}, [tenant_id], everywhere=True)
    else:
        done = erase_number(session, person, tenant_id)
    after = _tuples_read(session)

    assert done.counts["messages"] == 2 and done.counts["webhook_events"] == 5
    assert done.counts["contacts"] == 1
    read = {table: after[table] - before.get(table, 0) for table in after}
    # The person's own rows, read a few times over, and the receipts tied to no message
    # (this run's other tests leave some); never the tenant's 20,000 messages and 40,000
    # receipts.
    assert read["messages"] < 200, read
    assert read["webhook_events"] < 200 + 2 * unmatched, (read, unmatched)
