"""Limits kept in Redis: tenant quotas before queueing, sender budgets and pair
pacing before each send."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from core.config import get_settings
from models import Message, Tenant, session_scope
from services.messages.delivery import deliver
from services.messages.gate import send_gate
from tests.conftest import TWILIO_SID, TWILIO_TOKEN, make_tenant

TO = "+12025550143"


def limited_tenant(hourly: int, daily: int, **accounts) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    tenant = make_tenant("quota", **accounts)
    with session_scope() as session:
        session.execute(
            update(Tenant)
            .where(Tenant.id == tenant["tenant_id"])
            .values(hourly_limit=hourly, daily_limit=daily)
        )
    return tenant, {"Authorization": f"Bearer {tenant['api_key']}"}


def test_hourly_quota_refuses_with_retry_after(client, dispatched) -> None:
    _, auth = limited_tenant(3, 0)
    codes = [
        client.post("/v1/messages", json={"to": TO, "body": f"m{i}"}, headers=auth).status_code
        for i in range(3)
    ]
    assert codes == [202, 202, 202]
    refused = client.post("/v1/messages", json={"to": TO, "body": "one too many"}, headers=auth)
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 0 < int(refused.headers["Retry-After"]) <= 3700
    assert len(dispatched) == 3


def test_daily_quota_and_replays_do_not_count(client, dispatched) -> None:
    _, auth = limited_tenant(0, 2)
    headers = {**auth, "Idempotency-Key": "same"}
    answers = [  # one message, replayed twice
        client.post("/v1/messages", json={"to": TO, "body": "x"}, headers=headers).status_code
        for _ in range(3)
    ]
    assert answers == [202, 200, 200]
    assert (
        client.post("/v1/messages", json={"to": TO, "body": "y"}, headers=auth).status_code == 202
    )
    assert (
        client.post("/v1/messages", json={"to": TO, "body": "z"}, headers=auth).status_code == 429
    )


def test_quota_is_shared_by_api_and_celery_task(client, dispatched) -> None:
    from workers.tasks import send_message

    tenant, auth = limited_tenant(2, 0)
    assert (
        send_message.run(tenant_id=tenant["tenant_id"], to=TO, body="via task")["status"]
        == "queued"
    )
    assert (
        client.post("/v1/messages", json={"to": TO, "body": "api"}, headers=auth).status_code == 202
    )
    result = send_message.run(tenant_id=tenant["tenant_id"], to=TO, body="again")
    assert result["error"]["code"] == "rate_limited"


def test_sender_budget_throttles_without_spending_attempts(client, dispatched) -> None:
    _tenant, auth = limited_tenant(
        0,
        0,
        twilio={
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "sms_from": "+12025550133",
            "mps": 1,
        },
    )
    ids = [
        client.post(
            "/v1/messages", json={"to": TO, "body": f"s{i}", "channel": "sms"}, headers=auth
        ).get_json()["id"]
        for i in range(2)
    ]
    assert send_gate(ids[0]) == 0.0
    wait = send_gate(ids[1])
    assert wait is not None and 0 < wait <= 1.0
    outcome = deliver(ids[1])
    assert outcome.action == "throttled" and outcome.retry_in > 0
    with session_scope() as session:
        row = session.get(Message, ids[1])
        assert (row.status, row.attempts) == ("queued", 0)


@pytest.fixture
def pacing(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HERALD_PAIR_PACING_SECONDS", "6")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_whatsapp_pair_pacing(client, pacing, dispatched) -> None:
    _tenant, auth = limited_tenant(
        0,
        0,
        meta={"phone_number_id": "1" + tenant_suffix(), "access_token": "t", "app_secret": "s"},
    )
    first, second = (
        client.post("/v1/messages", json={"to": TO, "body": b}, headers=auth).get_json()["id"]
        for b in ("one", "two")
    )
    other = client.post(
        "/v1/messages", json={"to": "+15005550011", "body": "x"}, headers=auth
    ).get_json()["id"]
    assert send_gate(first) == 0.0
    assert 5.0 < send_gate(second) <= 6.0  # same user: about one message per 6 s
    assert send_gate(other) == 0.0  # another user is not held back
    sms = client.post(
        "/v1/messages", json={"to": TO, "body": "sms", "channel": "sms"}, headers=auth
    ).get_json()["id"]
    assert send_gate(sms) == 0.0  # pacing is WhatsApp's rule, not SMS's


def tenant_suffix() -> str:
    import uuid

    return str(uuid.uuid4().int)[:14]


def test_console_shows_a_sender_whose_budget_the_workers_spent_as_held() -> None:
    """The console reads the same budget the send path reserves slots from
    (services/policy/limits.py reserve_send_slots), not a key nothing writes any more."""
    from services.policy.limits import get_redis, key, reserve_send_slots
    from services.reporting.console import sender_budgets

    tenant = make_tenant("budget", twilio={**_twilio(), "sms_from": "+12025550177"})
    get_redis().delete(key("slots", "twilio", "+12025550177"))  # type: ignore[union-attr]
    rate = get_settings().mps_twilio_sms
    with session_scope() as session:
        before = {b["sender"]: b for b in sender_budgets(session, tenant["tenant_id"])}
    assert before["+12025550177"]["held"] is False
    reserve_send_slots("twilio", "+12025550177", rate, int(rate) * 3)  # three seconds' worth
    with session_scope() as session:
        after = {b["sender"]: b for b in sender_budgets(session, tenant["tenant_id"])}
    assert after["+12025550177"]["held"] is True
    assert after["+12025550177"]["tokens"] == 0


def _twilio() -> dict[str, str]:
    return {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN}
