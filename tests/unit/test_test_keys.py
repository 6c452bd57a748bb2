"""Test keys: made by the CLI and the admin API, recognisable by prefix; a test key's
messages are marked test, seen only by test keys, counted apart and never priced; the
simulator holds no network client."""

from __future__ import annotations

import ast
import inspect
import json
import socket
import uuid
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


# ---------------------------------------------------------------- nothing live


def _count_messages(tenant_id: str) -> int:
    from sqlalchemy import func, select

    with session_scope() as session:
        return session.scalar(select(func.count()).where(Message.tenant_id == tenant_id))


def test_a_test_key_cannot_resend_a_live_campaign(client, tenant, auth, dispatched) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    as_test = _test_key(tenant["tenant_id"])
    body = {"name": "live", "channel": "sms", "body": "Hi", "recipients": [{"to": "+12025550143"}]}
    campaigns = {}
    for mode, headers in (("live", auth), ("test", as_test)):
        resp = client.post("/v1/campaigns", json=body, headers=headers)
        assert resp.status_code == 201, resp.get_json()
        campaigns[mode] = resp.get_json()["id"]
    with session_scope() as session:  # every row failed: each is resendable
        session.execute(
            update(Message)
            .where(Message.campaign_id.in_(campaigns.values()))
            .values(status="failed", error_code="provider_error")
        )
    before = _count_messages(tenant["tenant_id"])
    refused = client.post(f"/v1/campaigns/{campaigns['live']}/resend", headers=as_test)
    assert refused.status_code == 404 and refused.get_json()["error"]["code"] == "not_found"
    other = client.post(f"/v1/campaigns/{campaigns['test']}/resend", headers=auth)
    assert other.status_code == 404
    assert _count_messages(tenant["tenant_id"]) == before  # nothing new, in either mode
    own = client.post(f"/v1/campaigns/{campaigns['test']}/resend", headers=as_test)
    assert own.status_code == 200 and own.get_json()["resent"] == 1


def test_a_test_key_never_reads_or_replies_to_a_live_inbound_message(
    client, tenant, auth, dispatched, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from providers.meta import MetaProvider
    from tests.unit.test_conversations import _inbound

    calls: list[str] = []
    monkeypatch.setattr(MetaProvider, "mark_read", lambda *a, **k: calls.append("read"))
    inbound = _inbound(tenant["tenant_id"], wamid="wamid.bGl2ZQ==")
    as_test = _test_key(tenant["tenant_id"])
    resp = client.post(f"/v1/messages/{inbound}/read", headers=as_test)
    assert resp.status_code == 404 and calls == []
    with session_scope() as session:
        assert session.get(Message, inbound).read_at is None
    for fields in (
        {"body": "hi", "reply_to": inbound},
        {"reaction": {"message_id": inbound, "emoji": "👍"}},
    ):
        body = {"to": "+12025550143", **fields}
        refused = client.post("/v1/messages", json=body, headers=as_test)
        assert refused.status_code == 400, refused.get_json()
        assert "No message" in str(refused.get_json()["error"]["fields"])
    # The live key still can (the route and the target are unchanged for it).
    assert client.post(f"/v1/messages/{inbound}/read", headers=auth).status_code == 200
    assert calls == ["read"]
    body = {"to": "+12025550143", "body": "hi", "reply_to": inbound}
    assert client.post("/v1/messages", json=body, headers=auth).status_code == 202


def test_a_test_key_changes_no_contact_and_erases_nothing(client, tenant, auth, dispatched) -> None:  # type: ignore[no-untyped-def]
    as_test = _test_key(tenant["tenant_id"])
    made = client.post(
        "/v1/contacts", json={"phone": "+12025550188", "opted_out": True}, headers=auth
    )
    assert made.status_code == 201, made.get_json()
    contact = made.get_json()["id"]
    before = _count_messages(tenant["tenant_id"])
    live_id = client.post(
        "/v1/messages", json={"to": "+12025550143", "body": "x", "channel": "sms"}, headers=auth
    ).get_json()["id"]
    for method, path, body in (
        ("post", "/v1/contacts", {"phone": "+12025550189"}),
        ("patch", f"/v1/contacts/{contact}", {"opted_out": False}),
        ("delete", f"/v1/contacts/{contact}", None),
        ("post", "/v1/erasures", {"phone": "+12025550143"}),
    ):
        resp = getattr(client, method)(path, json=body, headers=as_test)
        assert resp.status_code == 403, (path, resp.get_json())
        assert resp.get_json()["error"]["code"] == "test_key_not_allowed"
    shown = client.get(f"/v1/contacts/{contact}", headers=as_test)  # reads stay allowed
    assert shown.status_code == 200 and shown.get_json()["opted_out"] is True
    with session_scope() as session:  # the live message is still there, unredacted
        assert session.get(Message, live_id).to_number == "+12025550143"
    assert _count_messages(tenant["tenant_id"]) == before + 1


def test_a_test_key_calls_no_provider_for_media_or_templates(
    client, tenant, auth, dispatched
) -> None:  # type: ignore[no-untyped-def]
    import io

    from sqlalchemy import update

    from tests.unit.test_conversations import _inbound

    as_test = _test_key(tenant["tenant_id"])
    upload = client.post(
        "/v1/media",
        data={"file": (io.BytesIO(b"\x89PNG\r\n"), "a.png", "image/png")},
        content_type="multipart/form-data",
        headers=as_test,
    )
    assert upload.status_code == 403
    assert upload.get_json()["error"]["code"] == "test_key_not_allowed"
    removed = client.delete("/v1/media/med_01HZZZZZZZZZZZZZZZZZZZZZZZ", headers=as_test)
    assert removed.status_code == 403
    sync = client.post("/v1/templates/sync", headers=as_test)
    assert sync.status_code == 403 and sync.get_json()["error"]["code"] == "test_key_not_allowed"
    inbound = _inbound(tenant["tenant_id"], wamid="wamid.bWVkaWE=")
    with session_scope() as session:
        session.execute(
            update(Message).where(Message.id == inbound).values(media_urls=["1234567890"])
        )
    fetched = client.get(f"/v1/messages/{inbound}/media/0", headers=as_test)
    assert fetched.status_code == 404 and fetched.get_json()["error"]["code"] == "not_found"


def test_the_seeds_status_route_follows_the_key(client, tenant, auth, dispatched) -> None:  # type: ignore[no-untyped-def]
    sid = "SM" + uuid.uuid4().hex  # its own: the suite shares one table of SIDs
    from sqlalchemy import update

    as_test = _test_key(tenant["tenant_id"])
    body = {"toPhoneNumber": "12025550143", "messageBody": "hi"}
    live = client.post("/api/whatsapp/send", json=body, headers=auth).get_json()
    test = client.post("/api/whatsapp/send", json=body, headers=as_test).get_json()
    assert live["cost"] > 0 and test["cost"] == 0
    with session_scope() as session:
        session.execute(
            update(Message).where(Message.id == live["messageId"]).values(provider_message_id=sid)
        )
    for ref in (live["messageId"], sid):  # by Herald's id and by the SID
        assert client.get(f"/api/whatsapp/status/{ref}", headers=as_test).status_code == 404
        assert client.get(f"/api/whatsapp/status/{ref}", headers=auth).status_code == 200
    shown = client.get(f"/api/whatsapp/status/{test['messageId']}", headers=as_test).get_json()
    assert shown["messageId"] == test["messageId"] and shown["cost"] == 0
    assert client.get(f"/api/whatsapp/status/{test['messageId']}", headers=auth).status_code == 404


def test_simulations_go_in_batches_on_the_bulk_queue(client, tenant, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import celeryconfig
    from core.queue import app
    from services.messages import dispatch
    from services.messages.delivery import deliver
    from services.messages.simulation import SIMULATE_TASK, after_sent, simulate

    assert celeryconfig.task_routes[SIMULATE_TASK] == {"queue": "herald.bulk"}
    handed: list[tuple[str, list[str], str]] = []
    dispatch.set_dispatcher(lambda task, ids, queue: handed.append((task, list(ids), queue)))
    try:
        as_test = _test_key(tenant["tenant_id"])
        ids = [
            client.post(
                "/v1/messages",
                json={"to": to, "body": "x", "channel": "sms"},
                headers=as_test,
            ).get_json()["id"]
            for to in ("+12015550200", "+12015550201", "+12015550203")
        ]
        handed.clear()
        after_sent(ids)
        assert handed == [(SIMULATE_TASK, ids, "herald.bulk")]  # one doorbell for the batch
        for mid in ids:
            assert deliver(mid).action == "sent"
    finally:
        dispatch.set_dispatcher(None)
    assert simulate(ids) == 2  # one call: delivered and undelivered; the third stays sent
    with session_scope() as session:
        statuses = [session.get(Message, mid).status for mid in ids]
    assert statuses == ["delivered", "undelivered", "sent"]
    # Published: one task per BATCH_LIMIT ids, each carrying its list.
    sent: list[tuple[str, object, str]] = []
    monkeypatch.setattr(
        app, "send_task", lambda name, args, queue, **_: sent.append((name, args, queue))
    )
    many = [f"msg_{i:03d}" for i in range(dispatch.BATCH_LIMIT + 1)]
    dispatch._celery_dispatch(SIMULATE_TASK, many, "herald.bulk")
    assert sent == [
        (SIMULATE_TASK, [many[: dispatch.BATCH_LIMIT]], "herald.bulk"),
        (SIMULATE_TASK, [many[dispatch.BATCH_LIMIT :]], "herald.bulk"),
    ]


def test_a_fallback_sms_keeps_the_mode_of_its_message(client, tenant, auth, dispatched) -> None:  # type: ignore[no-untyped-def]
    from services.messages.failover import sweep_failovers

    as_test = _test_key(tenant["tenant_id"])
    made = {}
    for mode, headers in ((True, as_test), (False, auth)):
        # Free-form WhatsApp to someone whose window is closed: stored failed, its SMS next.
        body = {"to": "+12015550200", "body": "Code 4711", "failover": {}}
        resp = client.post("/v1/messages", json=body, headers=headers)
        assert resp.status_code == 202, resp.get_json()
        made[mode] = resp.get_json()["id"]
    sweep_failovers()
    with session_scope() as session:
        for test, mid in made.items():
            fallback = session.get(Message, session.get(Message, mid).failover_id)
            assert fallback is not None and fallback.channel == "sms"
            assert fallback.test is test, (test, fallback.id)


def test_the_console_charts_count_live_messages_only(client, tenant, auth, dispatched) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta as td

    from services.reporting.console import status_buckets
    from tests.unit.test_usage import add

    tid = tenant["tenant_id"]
    now = datetime.now(UTC)
    earlier = now - td(hours=3)
    add(tid, when=earlier)
    add(tid, when=earlier, test=True)
    add(tid, when=earlier, test=True)
    body = {"to": "+12025550143", "body": "x", "channel": "sms"}
    client.post("/v1/messages", json=body, headers=auth)
    client.post("/v1/messages", json=body, headers=_test_key(tid))
    fold_all()
    with session_scope() as session:
        _, day = status_buckets(session, tid, span=td(days=1), buckets=24, now=now)
        _, hour = status_buckets(session, tid, span=td(hours=1), buckets=12, now=now)
    assert sum(sum(c.values()) for c in day) == 2  # the earlier live one and this hour's
    assert sum(sum(c.values()) for c in hour) == 1
