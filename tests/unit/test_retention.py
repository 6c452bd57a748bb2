"""Retention per tenant: content past it is purged, the counts stay, nothing in flight
goes, each tenant's own setting applies, and a bad setting is a 4xx (API and CLI)."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from core.ids import id_at, utcnow
from herald.cli import main
from models import (
    Campaign,
    EventDelivery,
    Media,
    Message,
    MessageEvent,
    Tenant,
    WebhookEvent,
    get_engine,
    session_scope,
)
from services.lifecycle import purge as purge_module
from services.lifecycle.purge import Purged, purge_tenant
from services.lifecycle.retention import DEFAULT_DAYS, effective_days
from services.reporting.rollups import fold_all
from tests.conftest import make_tenant, statements_run

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@pytest.fixture(autouse=True)
def _totals_match_the_table() -> Iterator[None]:
    """Purged messages stay counted in `message_status_totals` (what /metrics reads);
    other tests compare those totals with the rows of this shared schema, so they are
    recounted from the table after each test here."""
    yield
    fold_all()
    with session_scope() as session:
        session.execute(text("DELETE FROM message_status_totals"))
        session.execute(
            text(
                "INSERT INTO message_status_totals (direction, status, messages)"
                " SELECT direction, status, count(*) FROM messages GROUP BY 1, 2"
            )
        )


def id_then(prefix: str, when: datetime) -> str:
    """An id `new_id(prefix)` could have made at `when` (its 80 random bits random)."""
    return id_at(prefix, when)[:-16] + "".join(random.choices(_CROCKFORD, k=16))


def add_message(
    tenant_id: str,
    days_ago: float,
    status: str = "delivered",
    campaign_id: str | None = None,
    *,
    receipts: bool = True,
) -> str:
    """A message written `days_ago`, with its events, an event delivery and a raw receipt."""
    when = utcnow() - timedelta(days=days_ago)
    message_id = id_then("msg", when)
    with session_scope() as session:
        session.add(
            Message(
                id=message_id,
                tenant_id=tenant_id,
                channel="sms",
                provider="twilio",
                to_number="+12025550143",
                from_number="+12025550100",
                body="your code is 123456",
                status=status,
                campaign_id=campaign_id,
                price=0.0079 if status == "delivered" else None,
                price_unit="USD" if status == "delivered" else None,
                meta={},
                created_at=when,
                updated_at=when,
            )
        )
        session.flush()
        session.add(MessageEvent(message_id=message_id, status=status, source="twilio", at=when))
        session.add(
            EventDelivery(
                message_id=message_id,
                tenant_id=tenant_id,
                url="https://acme.example/events",
                payload={"to": "+12025550143"},
                status="delivered",
                created_at=when,
            )
        )
        if receipts:
            session.add(
                WebhookEvent(
                    provider="twilio",
                    kind="status",
                    dedup_key=f"twilio:test:{message_id}",
                    tenant_id=tenant_id,
                    message_id=message_id,
                    payload={"To": "+12025550143", "Body": "your code is 123456"},
                    received_at=when,
                )
            )
    return message_id


def counts(tenant_id: str) -> set[tuple[object, ...]]:
    """The tenant's rollups (what usage, billing and the console's history read)."""
    fold_all()
    with session_scope() as session:
        return set(
            session.execute(
                text(
                    "SELECT span, start, status, campaign_id, messages, billable, cost"
                    " FROM message_counts WHERE tenant_id = :t"
                ),
                {"t": tenant_id},
            ).all()
        )


def run_purge(tenant_id: str) -> Purged:
    """Purge one tenant as the beat does (the other tests' tenants are left alone)."""
    out = Purged()
    with session_scope() as session:
        days = effective_days(session.get(Tenant, tenant_id).retention_days)
    with get_engine().connect() as conn:
        conn.execute(text("SET lock_timeout = '5s'"))  # a purge that waited fails, not hangs
        conn.commit()
        try:
            purge_tenant(conn, tenant_id, days, utcnow(), float("inf"), out)
        finally:
            conn.execute(text("RESET lock_timeout"))
            conn.commit()
    return out


def remaining(model: type, **where: object) -> int:
    with session_scope() as session:
        return session.query(model).filter_by(**where).count()


def exists(message_id: str) -> bool:
    with session_scope() as session:
        return session.get(Message, message_id) is not None


def test_content_past_retention_goes_and_the_counts_stay() -> None:
    tenant_id = make_tenant("retain", windows=())["tenant_id"]
    old = [add_message(tenant_id, DEFAULT_DAYS + 5, status) for status in ("delivered", "failed")]
    new = add_message(tenant_id, DEFAULT_DAYS - 1)
    before = counts(tenant_id)
    assert sum(n for span, *_, n, _, _ in before if span == "day") == 3

    purged = run_purge(tenant_id)

    assert (purged.messages, purged.events, purged.deliveries, purged.receipts) == (2, 2, 2, 2)
    assert not any(exists(m) for m in old) and exists(new)
    for model in (MessageEvent, EventDelivery):
        assert [remaining(model, message_id=m) for m in old] == [0, 0]
        assert remaining(model, message_id=new) == 1
    assert remaining(WebhookEvent, tenant_id=tenant_id) == 1
    # Usage, billing and the console's history read the rollups: unchanged.
    assert counts(tenant_id) == before
    assert run_purge(tenant_id).messages == 0  # nothing left to do


def test_messages_in_flight_and_live_campaigns_survive() -> None:
    tenant_id = make_tenant("inflight", windows=())["tenant_id"]
    old = DEFAULT_DAYS + 10
    with session_scope() as session:
        for name, status in (
            ("live", "running"),
            ("held", "paused"),
            ("done", "completed"),
            ("stuck", "completed"),  # a row of it still queued reads its content
        ):
            session.add(
                Campaign(
                    id=f"cmp_{name}_{tenant_id[-8:]}",
                    tenant_id=tenant_id,
                    name=name,
                    channel="sms",
                    provider="twilio",
                    body="sale today",
                    invalid_rows=[{"row": 3, "to": "+12025550177"}],
                    status=status,
                    rate=1,
                    updated_at=utcnow() - timedelta(days=old),
                )
            )
    kept = [add_message(tenant_id, old, s) for s in ("scheduled", "queued", "sending")]
    kept += [
        add_message(tenant_id, old, "delivered", f"cmp_{c}_{tenant_id[-8:]}")
        for c in ("live", "held")
    ]
    done = add_message(tenant_id, old, "delivered", f"cmp_done_{tenant_id[-8:]}")
    kept.append(add_message(tenant_id, old, "queued", f"cmp_stuck_{tenant_id[-8:]}"))

    run_purge(tenant_id)

    assert all(exists(m) for m in kept) and not exists(done)
    with session_scope() as session:
        campaigns = {c.name: c for c in session.query(Campaign).filter_by(tenant_id=tenant_id)}
        assert campaigns["done"].body is None and campaigns["done"].invalid_rows is None
        assert campaigns["live"].body == campaigns["stuck"].body == "sale today"


def test_each_tenant_keeps_its_own_retention() -> None:
    short = make_tenant("short", windows=())["tenant_id"]
    long = make_tenant("long", windows=())["tenant_id"]
    with session_scope() as session:
        session.get(Tenant, short).retention_days = 3
        session.get(Tenant, long).retention_days = 90
    ten_days = {t: add_message(t, 10) for t in (short, long)}
    five_days = add_message(short, 5)
    media_id = id_then("med", utcnow() - timedelta(days=10))
    with session_scope() as session:
        account = session.execute(
            text("SELECT id FROM provider_accounts WHERE tenant_id = :t LIMIT 1"), {"t": short}
        ).scalar()
        session.add(
            Media(
                id=media_id,
                tenant_id=short,
                provider="twilio",
                provider_account_id=account,
                provider_media_id="ME1",
                kind="image",
                mime_type="image/png",
                size=1,
                sha256="0" * 64,
                expires_at=utcnow() - timedelta(days=1),
            )
        )

    run_purge(short)
    run_purge(long)

    assert not exists(ten_days[short]) and not exists(five_days)
    assert exists(ten_days[long])
    assert remaining(Media, id=media_id) == 0
    # Dedup keys outlive a short retention: a provider's retry is still recognised.
    assert remaining(WebhookEvent, message_id=five_days) == 1
    assert remaining(WebhookEvent, message_id=ten_days[short]) == 0


def test_the_admin_api_sets_retention_and_refuses_bad_values(client, admin) -> None:  # type: ignore[no-untyped-def]
    tenant_id = make_tenant("api", windows=())["tenant_id"]
    url = f"/admin/v1/tenants/{tenant_id}"
    shown = client.get(url, headers=admin).get_json()
    assert (shown["retention_days"], shown["effective_retention_days"]) == (None, DEFAULT_DAYS)
    for bad in (2, 401, "30", 30.5, True, -1):
        resp = client.patch(url, json={"retention_days": bad}, headers=admin)
        assert resp.status_code == 400, bad
        assert "retention_days" in resp.get_json()["error"]["fields"]
    resp = client.patch(url, json={"retention_days": 45}, headers=admin)
    assert resp.status_code == 200
    assert (resp.get_json()["retention_days"], resp.get_json()["effective_retention_days"]) == (
        45,
        45,
    )
    resp = client.patch(url, json={"retention_days": None}, headers=admin)
    assert resp.get_json()["effective_retention_days"] == DEFAULT_DAYS
    created = client.post(
        "/admin/v1/tenants", json={"name": "kept", "retention_days": 7}, headers=admin
    )
    assert created.status_code == 201 and created.get_json()["tenant"]["retention_days"] == 7
    bad = client.post("/admin/v1/tenants", json={"name": "x", "retention_days": 0}, headers=admin)
    assert bad.status_code == 400


def test_the_cli_sets_retention_and_refuses_bad_values(capsys) -> None:  # type: ignore[no-untyped-def]
    if not os.environ.get("DATABASE_URL"):
        pytest.skip("needs the test database")
    tenant_id = make_tenant("cli", windows=())["tenant_id"]
    assert main(["retention", "set", tenant_id, "14"]) == 0
    assert json.loads(capsys.readouterr().out)["effective_days"] == 14
    assert main(["retention", "set", tenant_id, "1000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "retention_days" in json.loads(err)["error"]["fields"]
    assert main(["retention", "set", "ten_missing", "14"]) == 2
    with pytest.raises(SystemExit):
        main(["retention", "set", tenant_id, "soon"])
    assert main(["retention", "set", tenant_id, "default"]) == 0
    assert main(["retention", "show", tenant_id]) == 0
    shown = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert shown == {
        "tenant_id": tenant_id,
        "retention_days": None,
        "effective_days": DEFAULT_DAYS,
        "default_days": DEFAULT_DAYS,
    }


def test_a_row_held_by_a_send_or_callback_is_skipped_not_waited_for() -> None:
    tenant_id = make_tenant("busy", windows=())["tenant_id"]
    held, free = (add_message(tenant_id, DEFAULT_DAYS + 2) for _ in range(2))
    with get_engine().connect() as other, other.begin():
        other.execute(text("SELECT 1 FROM messages WHERE id = :id FOR UPDATE"), {"id": held})
        purged = run_purge(tenant_id)
    assert purged.messages == 1 and exists(held) and not exists(free)
    assert run_purge(tenant_id).messages == 1 and not exists(held)  # the next run takes it


@pytest.mark.parametrize(("neighbours", "ranged"), [(1, True), (8, False)])
def test_events_are_read_by_range_only_where_the_tenant_fills_the_span(
    monkeypatch: pytest.MonkeyPatch, neighbours: int, ranged: bool
) -> None:
    """Batches of 4, a span read as one range when it holds fewer than 16 messages of all
    tenants: with one neighbour's message between two of its own a tenant fills its spans,
    with eight it does not. Either way its events go and the neighbour's stay."""
    monkeypatch.setattr(purge_module, "BATCH", 4)
    monkeypatch.setattr(purge_module, "CROWD", 16)
    tenant_id = make_tenant("crowded", windows=())["tenant_id"]
    neighbour = make_tenant("neighbour", windows=())["tenant_id"]
    age = DEFAULT_DAYS + 7.3  # apart from the other tests' old messages
    mine, theirs = [], []
    for i in range(12):
        mine.append(add_message(tenant_id, age + i / 100, receipts=False))
        theirs += [
            add_message(neighbour, age + i / 100 + (k + 1) / (100 * (neighbours + 1)))
            for k in range(neighbours)
        ]
    with statements_run() as seen:
        purged = run_purge(tenant_id)

    assert (purged.messages, purged.events, purged.deliveries) == (12, 12, 12)
    statements = [sql for sql, _ in seen if "DELETE FROM message_events" in sql]
    by_range = ["message_id >= (SELECT lo FROM span)" in s for s in statements]
    assert by_range[0] is False  # the first batch has no span measured yet
    assert any(by_range) is ranged
    assert not any(exists(m) for m in mine)
    assert all(exists(m) for m in theirs)
    for model in (MessageEvent, EventDelivery):
        assert sum(remaining(model, message_id=m) for m in mine) == 0
        assert sum(remaining(model, message_id=m) for m in theirs) == len(theirs)
