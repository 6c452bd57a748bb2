"""A message's ttl: stored as expires_at, refused at claim once passed, failed by the
`herald.expire` sweep while it waits, and given to Twilio as ValidityPeriod."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from models import EventDelivery, Message, MessageEvent, session_scope, utcnow
from providers.twilio import validity_period
from services.messages.claim import claim_for_sending
from services.messages.expiry import expire_waiting

TO = "+12025550143"


def create(client, auth, **fields) -> str:  # type: ignore[no-untyped-def]
    body = {"to": TO, "channel": "sms", "body": "Your code is 123456", **fields}
    resp = client.post("/v1/messages", json=body, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def set_expiry(message_id: str, when: datetime, **values) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        session.execute(
            update(Message).where(Message.id == message_id).values(expires_at=when, **values)
        )


def load(message_id: str) -> Message:
    with session_scope() as session:
        message = session.get(Message, message_id)
        assert message is not None
        session.expunge(message)
        return message


def test_ttl_is_validated_and_stored_from_when_the_message_is_due(client, auth, dispatched) -> None:
    for bad in (0, -5, "60", 1.5, 14 * 24 * 3600 + 1):
        resp = client.post(
            "/v1/messages", json={"to": TO, "channel": "sms", "body": "x", "ttl": bad}, headers=auth
        )
        assert resp.status_code == 400, bad
        assert "ttl" in resp.get_json()["error"]["fields"]
    now_id = create(client, auth, ttl=90)
    message = load(now_id)
    assert message.expires_at - message.created_at == timedelta(seconds=90)
    send_at = (utcnow() + timedelta(hours=2)).replace(microsecond=0)
    later = load(create(client, auth, ttl=600, send_at=send_at.isoformat()))
    assert later.status == "scheduled"
    assert later.expires_at == send_at + timedelta(seconds=600)
    shown = client.get(f"/v1/messages/{now_id}", headers=auth).get_json()
    assert shown["expires_at"] is not None
    assert load(create(client, auth)).expires_at is None  # no ttl, no expiry
    far = client.post(
        "/v1/messages",
        json={"to": TO, "channel": "sms", "body": "x", "ttl": 60, "send_at": "9999-12-31T23:59Z"},
        headers=auth,
    )  # past any calendar: beyond the 35 days a message may be scheduled ahead
    assert far.status_code == 400 and "send_at" in far.get_json()["error"]["fields"]


def test_an_expired_message_is_failed_at_claim_not_sent(client, auth, tenant, dispatched) -> None:
    mid = create(client, auth, ttl=60, callback_url="https://example.com/hook")
    set_expiry(mid, utcnow() - timedelta(seconds=1))
    assert claim_for_sending(mid) is None
    message = load(mid)
    assert (message.status, message.error_code) == ("failed", "expired")
    with session_scope() as session:
        owed = session.scalars(select(EventDelivery).where(EventDelivery.message_id == mid)).all()
        assert owed[-1].payload["message"]["error"]["code"] == "expired"
    fresh = create(client, auth, ttl=3600)
    claimed = claim_for_sending(fresh)
    assert claimed is not None and claimed[0].id == fresh


def test_a_retry_held_after_a_refusal_expires_at_claim(client, auth, dispatched) -> None:
    # The first attempt was refused before Twilio took it (a 503), so nothing is out there.
    mid = create(client, auth, ttl=60)
    assert claim_for_sending(mid) is not None
    with session_scope() as session:
        session.add(
            MessageEvent(
                message_id=mid,
                status="sending",
                source="worker",
                applied=False,
                detail={"kind": "transient"},
            )
        )
    set_expiry(mid, utcnow() - timedelta(seconds=1), lease_until=utcnow() - timedelta(seconds=1))
    assert claim_for_sending(mid) is None
    assert load(mid).error_code == "expired"


def test_an_attempt_that_may_have_reached_the_provider_is_not_expired(
    client, auth, dispatched
) -> None:
    mid = create(client, auth, ttl=60)
    assert claim_for_sending(mid) is not None
    with session_scope() as session:
        session.add(
            MessageEvent(
                message_id=mid,
                status="sending",
                source="worker",
                applied=False,
                detail={"kind": "ambiguous"},
            )
        )
    set_expiry(mid, utcnow() - timedelta(seconds=1), lease_until=utcnow() - timedelta(seconds=1))
    assert claim_for_sending(mid) is not None  # settled by the provider, not by Herald's clock


def test_the_sweep_fails_expired_waiting_rows_only(client, auth, dispatched) -> None:
    clock = utcnow()  # fixed for the test: the sweep is given it, never reads its own
    queued = create(client, auth, ttl=60)
    scheduled = create(client, auth, ttl=60, send_at=(utcnow() + timedelta(days=1)).isoformat())
    not_yet = create(client, auth, ttl=60)
    handed_over = create(client, auth, ttl=60)
    for mid in (queued, scheduled, handed_over):
        set_expiry(mid, clock - timedelta(seconds=1))
    set_expiry(not_yet, clock + timedelta(seconds=1))
    set_expiry(handed_over, clock - timedelta(seconds=1), status="sent")
    expired = expire_waiting(now=clock)
    assert {queued, scheduled} <= set(expired)
    assert not {not_yet, handed_over} & set(expired)
    for mid in (queued, scheduled):
        message = load(mid)
        assert (message.status, message.error_code) == ("failed", "expired")
        with session_scope() as session:
            event = session.scalars(
                select(MessageEvent)
                .where(MessageEvent.message_id == mid)
                .order_by(MessageEvent.id.desc())
            ).first()
            assert (event.status, event.error_code, event.source) == ("failed", "expired", "expiry")
    assert load(not_yet).status == "queued" and load(handed_over).status == "sent"
    assert expire_waiting(now=clock) == []  # nothing twice


def test_validity_period_is_the_remaining_ttl_within_twilios_range() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert validity_period(None, now) is None
    assert validity_period(now + timedelta(seconds=100.7), now) == 100
    assert validity_period(now + timedelta(days=3), now) == 36_000
    assert validity_period(now - timedelta(seconds=5), now) == 1


def test_twilio_params_carry_the_validity_period() -> None:
    from providers.base import AccountCredentials, OutboundMessage
    from providers.twilio import TwilioProvider

    account = AccountCredentials(
        id="pa",
        tenant_id="t",
        provider="twilio",
        external_id="AC1",
        settings={"sms_from": "+1"},
        secrets={},
    )
    plain = OutboundMessage(herald_id="m", channel="sms", to="+12025550143", body="x")
    assert "validity_period" not in TwilioProvider.build_params(account, plain)
    timed = OutboundMessage(
        herald_id="m",
        channel="sms",
        to="+12025550143",
        body="x",
        expires_at=utcnow() + timedelta(days=2),
    )
    assert TwilioProvider.build_params(account, timed)["validity_period"] == 36_000


def test_the_expire_task_is_on_beat() -> None:
    import celeryconfig
    from workers import tasks

    assert celeryconfig.beat_schedule["expire"]["task"] == "herald.expire"
    assert celeryconfig.task_routes["herald.expire"] == {"queue": "herald.periodic"}
    assert tasks.expire.name == "herald.expire"


def test_the_celery_task_takes_a_ttl(tenant, dispatched) -> None:
    from workers.tasks import send_message

    result = send_message.run(
        tenant_id=tenant["tenant_id"], to=TO, channel="sms", body="Your code", ttl=120
    )
    message = load(result["id"])
    assert message.expires_at - message.created_at == timedelta(seconds=120)
    refused = send_message.run(tenant_id=tenant["tenant_id"], to=TO, body="x", ttl=0)
    assert "ttl" in refused["error"]["fields"]
