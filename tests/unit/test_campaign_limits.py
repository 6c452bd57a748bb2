"""One tenant's campaign cannot hurt the others: what it stores is bounded (its content
once, not once per recipient), template components are capped as Meta caps them on
every path, a campaign lists at most HERALD_CAMPAIGN_MAX_RECIPIENTS recipients, and
its messages count against the tenant's daily quota, at creation and as it sends."""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from core.config import ConfigError, get_settings, load_settings
from models import Campaign, Tenant, get_engine, session_scope, utcnow
from services.campaigns.campaigns import create_campaign, load_campaign_request
from services.campaigns.campaigns import release_due_campaigns as release
from services.policy import limits


def messages_size() -> int:
    with get_engine().connect() as conn:
        return int(conn.scalar(text("SELECT pg_total_relation_size('messages')")))


def big_components(size: int) -> list[dict[str, Any]]:
    """Template components of about `size` bytes, random so compression cannot hide them."""
    texts = [secrets.token_hex(500) for _ in range(size // 1000)]
    return [{"type": "body", "parameters": [{"type": "text", "text": t} for t in texts]}]


def set_limits(tenant_id: str, daily: int | None, hourly: int | None = 0) -> None:
    with session_scope() as session:
        session.execute(
            update(Tenant)
            .where(Tenant.id == tenant_id)
            .values(daily_limit=daily, hourly_limit=hourly)
        )


def test_a_large_template_is_stored_once_not_once_per_recipient(tenant) -> None:
    set_limits(tenant["tenant_id"], daily=0)
    components = big_components(100_000)
    data = load_campaign_request(
        {"name": "big", "channel": "whatsapp", "template": {"name": "offer", "language": "en_US"}}
    )
    # Past the request schema (which caps components now): storage is bounded whatever
    # the template.
    data["template"]["components"] = components
    recipients = [{"to": f"+1202555{n:04d}", "variables": [f"R{n}"]} for n in range(1000)]
    before = messages_size()
    with session_scope() as session:
        campaign = create_campaign(
            session, session.get(Tenant, tenant["tenant_id"]), data, iter(recipients)
        )
        assert campaign.total == 1000
    per_recipient = (messages_size() - before) / 1000
    # A copy of the template per row was about 105 KB each; a row with its own number
    # and variables is a few hundred bytes.
    assert per_recipient < 2_000, f"{per_recipient:,.0f} bytes per recipient"


BUTTON = {"type": "button", "sub_type": "quick_reply", "index": "0", "parameters": []}
OVER_CAPS = {
    "header": [{"type": "header", "parameters": [{"type": "text", "text": "h" * 61}]}],
    "body": [
        {
            "type": "body",
            "parameters": [
                {"type": "text", "text": "b" * 600},
                {"type": "text", "text": "b" * 425},
            ],
        }
    ],
    "buttons": [dict(BUTTON, index=str(n)) for n in range(11)],
    "footer": [{"type": "footer", "text": "f" * 61}],
    "size": big_components(100_000),
}


@pytest.mark.parametrize("case", sorted(OVER_CAPS))
def test_template_components_over_metas_caps_are_refused_on_every_path(client, auth, case) -> None:
    template = {"name": "offer", "language": "en_US", "components": OVER_CAPS[case]}
    one = client.post(
        "/v1/messages",
        headers=auth,
        json={"to": "+12025550143", "provider": "meta", "template": template},
    )
    batch = client.post(
        "/v1/messages/batch",
        headers=auth,
        json={"messages": [{"to": "+12025550143", "provider": "meta", "template": template}]},
    )
    campaign = client.post(
        "/v1/campaigns",
        headers=auth,
        json={
            "name": "caps",
            "channel": "whatsapp",
            "provider": "meta",
            "template": template,
            "recipients": [{"to": "+12025550143"}],
        },
    )
    for answer in (one.get_json(), batch.get_json()["data"][0], campaign.get_json()):
        error = answer["error"]
        assert error["code"] == "invalid_fields", answer
        assert "components" in error["fields"]["template"], error
    assert one.status_code == campaign.status_code == 400
    assert batch.get_json()["data"][0]["status"] == 400
    with session_scope() as session:
        assert not session.scalar(select(func.count(Campaign.id)).where(Campaign.name == "caps"))


def test_template_components_within_the_caps_are_taken(client, auth) -> None:
    template = {
        "name": "offer",
        "language": "en_US",
        "components": [
            {"type": "header", "parameters": [{"type": "text", "text": "h" * 60}]},
            {"type": "body", "parameters": [{"type": "text", "text": "b" * 1024}]},
            *[dict(BUTTON, index=str(n)) for n in range(10)],
        ],
    }
    one = client.post(
        "/v1/messages",
        headers=auth,
        json={"to": "+12025550143", "provider": "meta", "template": template},
    )
    assert one.status_code == 202, one.get_json()


@pytest.fixture
def cap_of_five(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HERALD_CAMPAIGN_MAX_RECIPIENTS", "5")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_a_campaign_over_the_recipient_cap_is_refused_whole(client, auth, cap_of_five) -> None:
    recipients = [{"to": f"+120255502{n:02d}"} for n in range(6)]
    listed = client.post(
        "/v1/campaigns",
        headers=auth,
        json={"name": "capped", "channel": "sms", "body": "Hi", "recipients": recipients},
    )
    lines = ["to"] + [r["to"] for r in recipients]
    uploaded = client.post(
        "/v1/campaigns",
        headers=auth,
        content_type="multipart/form-data",
        data={
            "campaign": '{"name": "capped", "channel": "sms", "body": "Hi"}',
            "file": (io.BytesIO("\n".join(lines).encode()), "r.csv"),
        },
    )
    for answer in (listed, uploaded):
        assert answer.status_code == 400, answer.get_json()
        error = answer.get_json()["error"]
        assert error["code"] == "too_many_recipients"
        assert "at most 5 recipients" in error["fields"]["recipients"][0]
    with session_scope() as session:
        assert not session.scalar(select(func.count(Campaign.id)).where(Campaign.name == "capped"))
    five = client.post(
        "/v1/campaigns",
        headers=auth,
        json={"name": "five", "channel": "sms", "body": "Hi", "recipients": recipients[:5]},
    )
    assert five.status_code == 201 and five.get_json()["total"] == 5


def test_the_recipient_cap_setting_is_validated() -> None:
    assert load_settings({}).campaign_max_recipients == 100_000
    assert load_settings({"HERALD_CAMPAIGN_MAX_RECIPIENTS": "20"}).campaign_max_recipients == 20
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match="HERALD_CAMPAIGN_MAX_RECIPIENTS"):
            load_settings({"HERALD_CAMPAIGN_MAX_RECIPIENTS": bad})


def sms_campaign(client, auth, count: int, **fields: Any):  # type: ignore[no-untyped-def]
    recipients = [{"to": f"+120255503{n:02d}"} for n in range(count)]
    body = {"name": "quota", "channel": "sms", "body": "Hi", "rate": 100, **fields}
    return client.post("/v1/campaigns", headers=auth, json={**body, "recipients": recipients})


def test_a_campaign_over_what_the_daily_quota_has_left_is_refused(client, auth, tenant) -> None:
    set_limits(tenant["tenant_id"], daily=10, hourly=100)
    over = sms_campaign(client, auth, 11)
    assert over.status_code == 422, over.get_json()
    error = over.get_json()["error"]
    assert error["code"] == "quota_exceeded"
    assert "daily quota (10 a day) has 10 left today" in error["message"]
    assert "recipients" in error["fields"]

    granted, _ = limits.take_quota(tenant["tenant_id"], 100, 10, 7)  # the API used 7 today
    assert granted == 7
    later_today = sms_campaign(client, auth, 5)
    assert later_today.status_code == 429, later_today.get_json()
    assert "has 3 left today" in later_today.get_json()["error"]["message"]
    assert int(later_today.headers["Retry-After"]) > 0
    tomorrow = (utcnow() + timedelta(days=1)).isoformat()
    assert sms_campaign(client, auth, 5, send_at=tomorrow).status_code == 201  # a new day
    with session_scope() as session:
        assert (
            session.scalar(
                select(func.count(Campaign.id)).where(Campaign.tenant_id == tenant["tenant_id"])
            )
            == 1
        )  # the refused ones wrote nothing
    assert sms_campaign(client, auth, 3).status_code == 201


def test_a_campaign_pauses_at_the_daily_quota_and_resumes_the_next_day(
    client, auth, tenant, dispatched
) -> None:
    set_limits(tenant["tenant_id"], daily=10, hourly=100)
    created = sms_campaign(client, auth, 8)
    assert created.status_code == 201, created.get_json()
    cid = created.get_json()["id"]
    limits.take_quota(tenant["tenant_id"], 100, 10, 5)  # meanwhile the API used 5

    release(utcnow() + timedelta(seconds=5))
    shown = client.get(f"/v1/campaigns/{cid}", headers=auth).get_json()
    assert shown["counts"]["queued"] == 5 and shown["counts"]["scheduled"] == 3
    assert (shown["status"], shown["pause_reason"]) == ("paused", "daily_quota")
    assert shown["resume_at"] is not None
    # The quota is used up, by the API and the campaign together.
    refused = client.post(
        "/v1/messages", headers=auth, json={"to": "+12025550199", "channel": "sms", "body": "x"}
    )
    assert refused.status_code == 429
    release(utcnow() + timedelta(seconds=10))  # paused: nothing more goes
    assert client.get(f"/v1/campaigns/{cid}", headers=auth).get_json()["counts"]["queued"] == 5

    # The day is over: a new day's quota, and the campaign goes on by itself.
    client_redis = limits.get_redis()
    assert client_redis is not None
    client_redis.delete(limits._day_key(tenant["tenant_id"], utcnow()))
    with session_scope() as session:
        session.execute(
            update(Campaign)
            .where(Campaign.id == cid)
            .values(resume_at=utcnow() - timedelta(seconds=1))
        )
    release(utcnow() + timedelta(seconds=15))
    shown = client.get(f"/v1/campaigns/{cid}", headers=auth).get_json()
    assert (shown["status"], shown["pause_reason"]) == ("running", None)
    assert shown["counts"]["queued"] == 8 and shown["counts"]["scheduled"] == 0
