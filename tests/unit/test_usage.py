"""GET /v1/usage: counts and cost per group, per currency, within one tenant; and Meta's
pricing recorded from its status webhook."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from core.ids import id_at
from models import Message, session_scope
from services.reporting.usage import record_meta_pricing
from tests.conftest import make_tenant, statements_run

DAY = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def add(tenant_id: str, when: datetime = DAY, **values) -> str:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from models import ProviderAccount

    message_id = id_at("msg", when)[:-16] + uuid.uuid4().hex[:16].upper()
    provider = values.get("provider", "twilio")
    with session_scope() as session:
        account = session.scalars(
            select(ProviderAccount.id).where(
                ProviderAccount.tenant_id == tenant_id, ProviderAccount.provider == provider
            )
        ).first()
        session.add(
            Message(
                id=message_id,
                tenant_id=tenant_id,
                direction="outbound",
                provider_account_id=account,
                created_at=when,
                updated_at=when,
                **{
                    "to_number": "+12025550143",
                    "channel": "sms",
                    "provider": provider,
                    "status": "delivered",
                    **values,
                },
            )
        )
    return message_id


def test_usage_groups_counts_and_cost_per_currency(client) -> None:
    tenant = make_tenant("usage")
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    tid = tenant["tenant_id"]
    add(tid, price=Decimal("0.0079"), price_unit="USD")
    add(tid, price=Decimal("0.0079"), price_unit="USD", status="read")
    add(tid, price=Decimal("0.0100"), price_unit="EUR", status="undelivered")
    add(tid, status="failed")
    add(tid, channel="whatsapp", provider="meta", pricing_category="marketing", billable=True)
    add(tid, channel="whatsapp", provider="meta", pricing_category="service", billable=False)
    add(tid, when=datetime(2026, 3, 12, tzinfo=UTC), price=Decimal("5"), price_unit="USD")
    resp = client.get(
        "/v1/usage?from=2026-03-10&to=2026-03-11&group_by=channel,provider", headers=auth
    )
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["from"] == "2026-03-10T00:00:00Z" and body["group_by"] == ["channel", "provider"]
    sms, wa = body["data"]
    assert (sms["channel"], sms["provider"]) == ("sms", "twilio")
    assert (sms["messages"], sms["sent"], sms["delivered"], sms["read"], sms["failed"]) == (
        4,
        3,
        2,
        1,
        2,
    )
    assert sms["cost"] == {"EUR": "0.01000", "USD": "0.01580"}
    assert (wa["messages"], wa["billable"], wa["cost"]) == (2, 1, {})
    assert body["totals"]["messages"] == 6
    by_category = client.get(
        "/v1/usage?from=2026-03-10&to=2026-03-11&group_by=category", headers=auth
    ).get_json()["data"]
    assert {(g["category"], g["messages"], g["billable"]) for g in by_category} == {
        (None, 4, 0),
        ("marketing", 1, 1),
        ("service", 1, 0),
    }


def test_usage_is_tenant_scoped(client) -> None:
    mine, theirs = make_tenant("usage-a"), make_tenant("usage-b")
    add(theirs["tenant_id"], price=Decimal("1"), price_unit="USD")
    body = client.get(
        "/v1/usage?from=2026-03-10&to=2026-03-11",
        headers={"Authorization": f"Bearer {mine['api_key']}"},
    ).get_json()
    assert body["data"] == [] or body["totals"]["messages"] == 0
    assert body["totals"]["cost"] == {}
    assert client.get("/v1/usage").status_code == 401


def test_meta_estimate_from_a_price_table(client, monkeypatch) -> None:
    from core.config import get_settings

    tenant = make_tenant("usage-est")
    add(
        tenant["tenant_id"],
        channel="whatsapp",
        provider="meta",
        pricing_category="marketing",
        billable=True,
    )
    add(
        tenant["tenant_id"],
        channel="whatsapp",
        provider="meta",
        pricing_category="service",
        billable=False,
    )
    monkeypatch.setenv(
        "HERALD_META_PRICES", '{"currency": "usd", "marketing": "0.025", "service": "0"}'
    )
    get_settings.cache_clear()
    try:
        body = client.get(
            "/v1/usage?from=2026-03-10&to=2026-03-11",
            headers={"Authorization": f"Bearer {tenant['api_key']}"},
        ).get_json()
    finally:
        monkeypatch.delenv("HERALD_META_PRICES")
        get_settings.cache_clear()
    assert body["estimated"] is True
    assert body["totals"]["estimated_cost"] == {"USD": "0.02500"}


def test_bad_usage_queries_are_400(client, auth) -> None:
    for query in (
        "from=yesterday",
        "from=2026-03-10T10:00:00",  # no offset
        "to=2026-02-30",
        "group_by=channel,country",
        "group_by=channel,channel",
        "from=2026-03-11&to=2026-03-10",
        "from=2024-01-01&to=2026-01-01",
        "unknown=1",
        "to=9999-12-31T23:59:59Z",
        "from=0001-01-01",
        "from=2020-01-01",  # to now: over 366 days
    ):
        resp = client.get(f"/v1/usage?{query}", headers=auth)
        assert resp.status_code == 400, query
        assert resp.get_json()["error"]["code"] == "invalid_fields"


def test_meta_pricing_is_recorded_from_a_status(tenant) -> None:
    mid = add(tenant["tenant_id"], channel="whatsapp", provider="meta", status="sent")
    with session_scope() as session:
        record_meta_pricing(
            session,
            mid,
            {
                "id": "wamid.x",
                "status": "sent",
                "pricing": {
                    "billable": True,
                    "pricing_model": "PMP",
                    "category": "utility",
                    "type": "regular",
                },
            },
        )
        record_meta_pricing(session, mid, {"status": "read"})  # no pricing: unchanged
        record_meta_pricing(session, mid, {"pricing": {"category": ["bad"], "billable": "yes"}})
    with session_scope() as session:
        message = session.get(Message, mid)
        assert (message.pricing_category, message.billable) == ("utility", True)


def test_console_usage_page(client, tenant) -> None:
    add(tenant["tenant_id"], price=Decimal("0.0079"), price_unit="USD")
    from tests.unit.test_console import sign_in

    assert sign_in(client, tenant["api_key"]).status_code == 302
    page = client.get("/console/usage?from=2026-03-10&to=2026-03-10&group_by=channel")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "0.00790 USD" in html and '<th scope="col">channel</th>' in html
    assert client.get("/console/usage?to=nope").status_code == 400


def test_the_console_usage_page_reads_the_period_once(client, tenant) -> None:
    """The live figures and the test keys' line beside them come from one read of the
    period's counts, not two."""
    from services.reporting.console import usage_report
    from services.reporting.usage import period, usage

    add(tenant["tenant_id"], price=Decimal("0.0079"), price_unit="USD")
    args = {"from": "2026-03-01T10:30:00Z", "to": "2026-03-12T09:15:00Z", "group_by": "channel"}
    with session_scope() as session, statements_run() as statements:
        report = usage_report(session, tenant["tenant_id"], args)
        page_reads = len(statements)
        statements.clear()
        start, end = period({"from_": _at("2026-03-01T10:30"), "to": _at("2026-03-12T09:15")})
        live = usage(session, tenant["tenant_id"], start, end, ["channel"])
    assert page_reads == len(statements) > 0  # one period's reads, for both figures
    assert report["totals"] == live["totals"] and report["data"] == live["data"]
    assert report["test_totals"]["messages"] == 0


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_total_adds_up_the_campaigns_in_the_database(client) -> None:
    """A tenant's rollup groups are mostly its campaigns: usage not grouped by campaign
    reads them added up (a group per status and currency, not per campaign as well), and
    grouped by campaign keeps them apart, with the same totals."""
    from services.reporting.rollups import fold_all
    from services.reporting.usage import counted_rows, period, usage

    tenant = make_tenant("usage-campaigns")
    tid = tenant["tenant_id"]
    campaigns = [f"cmp_use{n}{tid[-12:]}" for n in range(4)]
    for day in (10, 11):
        for campaign in campaigns:
            add(
                tid,
                when=datetime(2026, 3, day, 12, tzinfo=UTC),
                campaign_id=campaign,
                to_number=f"+120255501{day}",
                price=Decimal("0.0100"),
                price_unit="USD",
            )
    fold_all()
    start, end = period({"from_": _at("2026-03-09T00:00"), "to": _at("2026-03-13T00:00")})
    with session_scope() as session:
        added_up = counted_rows(session, tid, start, end, ())
        apart = counted_rows(session, tid, start, end, ("campaign",))
        total = usage(session, tid, start, end)
        by_campaign = usage(session, tid, start, end, ["campaign"])
    assert len(added_up) == 1 and added_up[0].campaign is None
    assert added_up[0].messages == 8
    assert {row.campaign for row in apart} == set(campaigns)
    assert total["totals"] == by_campaign["totals"]
    assert total["totals"]["messages"] == 8 and total["totals"]["cost"] == {"USD": "0.08000"}
    assert sorted(g["campaign"] for g in by_campaign["data"]) == sorted(campaigns)
    assert all(g["messages"] == 2 for g in by_campaign["data"])
