"""Test keys: made by the CLI and the admin API, recognisable by prefix; a test key's
messages are marked test, seen only by test keys, counted apart and never priced; the
simulator holds no network client."""

from __future__ import annotations

import ast
import inspect
import json
import socket
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

import providers.simulator as simulator_module
from herald.cli import main
from models import Message, session_scope
from providers import get_provider
from providers.base import AccountCredentials, OutboundMessage
from providers.simulator import SimulatorProvider, outcome_for
from services.reporting.rollups import fold_all
from services.tenancy.tenants import create_api_key
from tests.conftest import ADMIN_TOKEN, make_tenant


def _test_key(tenant_id: str) -> dict[str, str]:
    with session_scope() as session:
        key = create_api_key(session, tenant_id, "tests", type="test")
    return {"Authorization": f"Bearer {key}"}


# ---------------------------------------------------------------- the simulator


def test_the_simulator_has_no_network_client(monkeypatch: pytest.MonkeyPatch) -> None:
    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(simulator_module))):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "dataclasses", "datetime", "providers"}
    provider = get_provider("simulator")
    assert isinstance(provider, SimulatorProvider) and vars(provider) == {}

    def no_network(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the simulator opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    account = AccountCredentials("acc_1", "ten_1", "twilio", "AC1", {}, {"auth_token": "real"})
    result = provider.send(account, OutboundMessage("msg_1", "sms", "+12015550201", body="hi"))
    assert result.provider_message_id == "SIMmsg_1"
    assert (
        provider.find_sent(account, OutboundMessage("msg_1", "sms", "+1"), datetime.now(UTC)) == []
    )


def test_magic_numbers_decide_the_outcome() -> None:
    assert [s.status for s in outcome_for("+12015550200")] == ["delivered"]
    assert [(s.status, s.error_code) for s in outcome_for("+12015550201")] == [
        ("undelivered", "unknown_destination")
    ]
    assert [(s.status, s.error_code) for s in outcome_for("+12015550202")] == [
        ("undelivered", "unreachable")
    ]
    assert outcome_for("+12015550203") == ()
    assert [s.status for s in outcome_for("whatsapp:+12015550204")] == ["delivered", "read"]
    assert [s.status for s in outcome_for("+447700900123")] == ["delivered"]  # any other


# ---------------------------------------------------------------- keys


def test_the_cli_creates_a_test_key(capsys: pytest.CaptureFixture[str], tenant, client) -> None:  # type: ignore[no-untyped-def]
    assert main(["key", "create", tenant["tenant_id"], "--type", "test"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["type"] == "test" and made["api_key"].startswith("hk_test_")
    assert main(["key", "list", tenant["tenant_id"]]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {k["type"] for k in listed} == {"live", "test"}
    assert all(k["prefix"].startswith("hk_test_") for k in listed if k["type"] == "test")
    headers = {"Authorization": f"Bearer {made['api_key']}"}
    assert client.get("/v1/messages", headers=headers).status_code == 200
    with pytest.raises(SystemExit):
        main(["key", "create", tenant["tenant_id"], "--type", "sandbox"])


def test_the_admin_api_creates_a_test_key(client, admin, tenant) -> None:  # type: ignore[no-untyped-def]
    base = f"/admin/v1/tenants/{tenant['tenant_id']}/keys"
    resp = client.post(base, json={"name": "ci", "type": "test"}, headers=admin)
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["type"] == "test"
    assert resp.get_json()["api_key"].startswith("hk_test_")
    live = client.post(base, json={"name": "prod"}, headers=admin).get_json()
    assert live["type"] == "live" and not live["api_key"].startswith("hk_test_")
    bad = client.post(base, json={"type": "demo"}, headers=admin)
    assert bad.status_code == 400 and bad.get_json()["error"]["fields"]["type"]
    assert ADMIN_TOKEN not in bad.get_data(as_text=True)


# ---------------------------------------------------------------- the API


def test_each_mode_sees_its_own_messages(client, tenant, auth, dispatched) -> None:  # type: ignore[no-untyped-def]
    as_test = _test_key(tenant["tenant_id"])
    body = {"to": "+12025550143", "body": "hi", "channel": "sms"}
    test_msg = client.post("/v1/messages", headers=as_test, json=body).get_json()
    live_msg = client.post("/v1/messages", headers=auth, json=body).get_json()
    assert (test_msg["test"], live_msg["test"]) == (True, False)
    with session_scope() as session:
        assert session.get(Message, test_msg["id"]).test is True

    def listed(headers: dict[str, str]) -> list[str]:
        return [m["id"] for m in client.get("/v1/messages", headers=headers).get_json()["data"]]

    assert listed(as_test) == [test_msg["id"]]
    assert test_msg["id"] not in listed(auth) and live_msg["id"] in listed(auth)
    assert client.get(f"/v1/messages/{live_msg['id']}", headers=as_test).status_code == 404
    assert client.get(f"/v1/messages/{test_msg['id']}", headers=auth).status_code == 404
    assert client.post(f"/v1/messages/{live_msg['id']}/cancel", headers=as_test).status_code == 404
    shown = client.get(f"/v1/messages/{test_msg['id']}", headers=as_test).get_json()
    assert shown["test"] is True
    # One Idempotency-Key, two modes: the test request is not a replay of the live one.
    keyed = {"Idempotency-Key": "order-1"}
    assert client.post("/v1/messages", headers={**auth, **keyed}, json=body).status_code == 202
    again = client.post("/v1/messages", headers={**as_test, **keyed}, json=body)
    assert again.status_code == 409


def test_a_test_key_is_checked_as_a_live_one(client, tenant, dispatched) -> None:  # type: ignore[no-untyped-def]
    as_test = _test_key(tenant["tenant_id"])
    bad = client.post("/v1/messages", headers=as_test, json={"to": "12", "body": "x"})
    assert bad.status_code == 400
    with session_scope() as session:
        from services.policy.consent import mark_opted_out

        mark_opted_out(session, tenant["tenant_id"], "+12015550200")
    refused = client.post(
        "/v1/messages",
        headers=as_test,
        json={"to": "+12015550200", "body": "x", "channel": "sms"},
    )
    assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "opted_out"


def test_usage_and_metrics_count_test_messages_apart_and_never_price_them(
    client, tenant, auth, dispatched
) -> None:  # type: ignore[no-untyped-def]
    as_test = _test_key(tenant["tenant_id"])
    body = {"to": "+12025550143", "body": "hi", "channel": "sms"}
    for _ in range(2):
        test_id = client.post("/v1/messages", headers=as_test, json=body).get_json()["id"]
    client.post("/v1/messages", headers=auth, json=body)
    with session_scope() as session:  # as if a price had come: a test message is never billed
        row = session.get(Message, test_id)
        row.price, row.price_unit, row.billable = Decimal("0.0079"), "USD", True
    fold_all()
    start = (datetime.now(UTC) - timedelta(hours=2)).isoformat(timespec="seconds")
    query = f"/v1/usage?from={start.replace('+00:00', 'Z')}"
    test_usage = client.get(query, headers=as_test).get_json()
    live_usage = client.get(query, headers=auth).get_json()
    assert test_usage["test"] is True and live_usage["test"] is False
    assert test_usage["totals"]["messages"] == 2 and live_usage["totals"]["messages"] == 1
    assert test_usage["totals"]["cost"] == {} and test_usage["totals"]["billable"] == 0
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'herald_messages{status="queued",test="true"}' in metrics
    assert 'herald_messages{status="queued",test="false"}' in metrics


def test_the_rollups_keep_test_messages_apart(client, tenant, auth) -> None:  # type: ignore[no-untyped-def]
    from tests.unit.test_usage import DAY, add

    tid = tenant["tenant_id"]
    add(tid, price=Decimal("0.0079"), price_unit="USD")
    add(tid, price=Decimal("0.0079"), price_unit="USD", test=True)
    moved = add(tid, status="sent", test=True)
    with session_scope() as session:  # a status change: the trigger's UPDATE path
        session.get(Message, moved).status = "undelivered"
    fold_all()
    query = f"/v1/usage?from={DAY.date()}&to={(DAY + timedelta(days=1)).date()}&group_by=status"
    live = client.get(query, headers=auth).get_json()
    test = client.get(query, headers=_test_key(tid)).get_json()
    assert live["totals"]["messages"] == 1 and live["totals"]["cost"] == {"USD": "0.00790"}
    assert test["totals"]["messages"] == 2 and test["totals"]["cost"] == {}
    assert {g["status"]: g["messages"] for g in test["data"]} == {
        "delivered": 1,
        "undelivered": 1,
    }


def test_test_messages_take_no_sender_budget(client, dispatched) -> None:  # type: ignore[no-untyped-def]
    from services.messages.gate import send_gates
    from tests.conftest import TWILIO_SID, TWILIO_TOKEN

    tenant = make_tenant(
        "budget",
        twilio={
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "sms_from": "+12025550134",
            "mps": 1,
        },
    )
    as_test = _test_key(tenant["tenant_id"])
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}

    def send(headers: dict[str, str], to: str) -> str:
        body = {"to": to, "body": "x", "channel": "sms"}
        return client.post("/v1/messages", json=body, headers=headers).get_json()["id"]

    # Three test messages at once on a sender of 1 message a second: none waits, and the
    # live message after them still has the sender's whole budget.
    tests = [send(as_test, f"+1201555020{i}") for i in range(3)]
    live = send(auth, "+12025550143")
    assert send_gates([*tests, live]) == dict.fromkeys([*tests, live], 0.0)


def test_a_test_keys_campaign_is_a_test_campaign(client, tenant, auth, dispatched) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    as_test = _test_key(tenant["tenant_id"])
    body = {
        "name": "trial",
        "channel": "sms",
        "body": "Hi",
        "recipients": [{"to": "+12015550200"}, {"to": "+12015550201"}],
    }
    resp = client.post("/v1/campaigns", json=body, headers=as_test)
    assert resp.status_code == 201, resp.get_json()
    campaign = resp.get_json()
    assert campaign["test"] is True
    with session_scope() as session:
        rows = session.scalars(select(Message.test).where(Message.campaign_id == campaign["id"]))
        assert list(rows) == [True, True]
    assert client.get(f"/v1/campaigns/{campaign['id']}", headers=auth).status_code == 404
    shown = client.get(f"/v1/campaigns/{campaign['id']}", headers=as_test).get_json()
    assert shown["test"] is True
    listed = client.get("/v1/campaigns", headers=auth).get_json()["data"]
    assert campaign["id"] not in [c["id"] for c in listed]


def test_the_console_marks_test_messages(app, client, tenant, auth, dispatched) -> None:  # type: ignore[no-untyped-def]
    from tests.unit.test_console import sign_in

    as_test = _test_key(tenant["tenant_id"])
    body = {"to": "+12025550143", "body": "hi", "channel": "sms"}
    test_id = client.post("/v1/messages", headers=as_test, json=body).get_json()["id"]
    live_id = client.post("/v1/messages", headers=auth, json=body).get_json()["id"]
    console = app.test_client()
    sign_in(console, tenant["api_key"])
    page = console.get("/console/messages").get_data(as_text=True)
    rows = {mid: page.split(mid)[0].rsplit("<tr>", 1)[-1] for mid in (test_id, live_id)}
    assert 'class="badge test"' in rows[test_id] and "badge test" not in rows[live_id]
    shown = console.get(f"/console/messages/{test_id}").get_data(as_text=True)
    assert 'class="badge test"' in shown
    usage = console.get("/console/usage").get_data(as_text=True)
    assert 'id="test-usage"' in usage and "1 message, 0 delivered" in usage
