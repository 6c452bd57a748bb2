"""A campaign's cost estimate at creation: segments times the tenant's SMS price per
destination country, set by the operator (admin API, CLI); none without prices."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from herald.cli import main
from services.content.prices import estimate_cost

PRICES = {"currency": "USD", "per_segment": {"US": "0.0079", "GB": "0.0400"}}
TWO_SEGMENTS = "x" * 161  # GSM-7: 153 a part once over 160


def _campaign(client, auth, recipients: list[str], body: str = "Hi"):  # type: ignore[no-untyped-def]
    body_json = {
        "name": "sale",
        "channel": "sms",
        "body": body,
        "recipients": [{"to": to} for to in recipients],
    }
    resp = client.post("/v1/campaigns", json=body_json, headers=auth)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def _set(client, admin, tenant_id: str, **values) -> object:  # type: ignore[no-untyped-def]
    return client.patch(f"/admin/v1/tenants/{tenant_id}", json=values, headers=admin)


def test_the_estimate_is_segments_times_each_countrys_price(
    client, admin, tenant, auth, dispatched
) -> None:  # type: ignore[no-untyped-def]
    tid = tenant["tenant_id"]
    resp = _set(client, admin, tid, sms_prices=PRICES, sms_countries=["US", "GB"])
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["sms_prices"] == PRICES
    made = _campaign(
        client, auth, ["+12025550101", "+12025550102", "+447400123456"], body=TWO_SEGMENTS
    )
    # (2 * 0.0079 + 0.04) * 2 segments = 0.1116
    assert made["segments_total"] == 6
    assert made["estimated_cost"] == {"amount": "0.11", "currency": "USD"}
    shown = client.get(f"/v1/campaigns/{made['id']}", headers=auth).get_json()
    assert shown["estimated_cost"] == made["estimated_cost"]

    # A country the table does not price: no estimate, unless `*` prices the rest.
    priced = _campaign(client, auth, ["+12025550103", "+447400123457"])
    _set(client, admin, tid, sms_countries=["US", "GB", "FR"])
    assert _campaign(client, auth, ["+33612345678"])["estimated_cost"] is None
    assert priced["estimated_cost"] == {"amount": "0.05", "currency": "USD"}
    other = {"currency": "EUR", "per_segment": {"*": "0.05", "US": "0.01"}}
    _set(client, admin, tid, sms_prices=other)
    assert _campaign(client, auth, ["+33612345679", "+12025550104"])["estimated_cost"] == {
        "amount": "0.06",
        "currency": "EUR",
    }


def test_no_prices_no_estimate(client, tenant, auth, dispatched) -> None:  # type: ignore[no-untyped-def]
    assert _campaign(client, auth, ["+12025550105"])["estimated_cost"] is None


@pytest.mark.parametrize(
    "prices",
    [
        {"currency": "usd", "per_segment": {"US": "0.01"}},
        {"currency": "USD", "per_segment": {"XX": "0.01"}},
        {"currency": "USD", "per_segment": {"US": "-1"}},
        {"currency": "USD", "per_segment": {"US": "abc"}},
        {"currency": "USD", "per_segment": {"US": "NaN"}},
        {"currency": "USD", "per_segment": {"US": "0.0000001"}},
        {"currency": "USD", "per_segment": {}},
        {"currency": "USD"},
        {"currency": "USD", "per_segment": {"US": "0.01"}, "extra": 1},
    ],
)
def test_bad_prices_are_refused(client, admin, tenant, prices) -> None:  # type: ignore[no-untyped-def]
    resp = _set(client, admin, tenant["tenant_id"], sms_prices=prices)
    assert resp.status_code == 400 and "sms_prices" in resp.get_json()["error"]["fields"]


def test_the_cli_sets_prices(capsys: pytest.CaptureFixture[str], tenant) -> None:  # type: ignore[no-untyped-def]
    code = main(["tenant", "update", tenant["tenant_id"], "--sms-prices", json.dumps(PRICES)])
    assert code == 0 and json.loads(capsys.readouterr().out)["sms_prices"] == PRICES
    assert main(["tenant", "update", tenant["tenant_id"], "--sms-prices", "null"]) == 0
    assert json.loads(capsys.readouterr().out)["sms_prices"] is None


def test_a_hundred_thousand_recipients_cost_one_pass() -> None:
    countries = Counter({"US": 60_000, "GB": 40_000})
    assert estimate_cost(PRICES, 1, countries) == {"amount": "2074.00", "currency": "USD"}
    assert estimate_cost(None, 1, countries) is None
    assert estimate_cost(PRICES, 1, Counter({None: 1})) is None  # no country: not priced
