"""One tenant cannot hurt another: tenant A's callback URL hangs (a receiver that
accepts, then trickles a header byte a second and never finishes), 40 of A's messages
owe it events, and tenant B's message is still sent while A's deliveries hang, by
`herald run` itself (API, send worker, events worker, beat, Redis, the sandbox)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from bench.trickle import TrickleReceiver
from tests.e2e.stack import RunningStack

pytestmark = pytest.mark.e2e

SENT = {"sent", "delivered", "read"}


@pytest.fixture
def receiver() -> Iterator[TrickleReceiver]:
    trickling = TrickleReceiver(interval=1.0)
    yield trickling
    trickling.stop()


def wait_until(check, what: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def make_tenant_a(callback_url: str) -> str:
    """Tenant A: the sandbox's Twilio account with a sender of its own, events to
    `callback_url`; its API key."""
    from herald.stack import SANDBOX_TWILIO
    from models import session_scope
    from services.tenancy.tenants import add_provider_account, create_api_key, create_tenant

    sid, token = SANDBOX_TWILIO
    with session_scope() as session:
        tenant = create_tenant(session, "noisy", callback_url=callback_url)
        add_provider_account(
            session, tenant.id, "twilio", account_sid=sid, auth_token=token, sms_from="+12025550111"
        )
        return create_api_key(session, tenant.id, "noisy")


def events_of(message_ids: list[str]) -> dict[str, int]:
    """How many of these messages have an event in each status (rows read directly:
    the test shares the stack's database)."""
    from models import EventDelivery, session_scope

    with session_scope() as session:
        return dict(
            session.execute(
                select(EventDelivery.status, func.count(func.distinct(EventDelivery.message_id)))
                .where(EventDelivery.message_id.in_(message_ids))
                .group_by(EventDelivery.status)
            ).all()
        )


def test_a_tenants_hanging_callback_url_does_not_hold_another_tenants_sends(
    tmp_path: Path, receiver: TrickleReceiver
) -> None:
    # A delivery deadline at its longest, so that each hanging delivery lasts as long as
    # the settings allow while B's message goes.
    stack = RunningStack(
        tmp_path / "home",
        {"HERALD_EVENTS_DEADLINE_SECONDS": "30", "HERALD_MPS_TWILIO_SMS": "100"},
    )
    try:
        info = stack.wait_ready()
        tenant_a = httpx.Client(
            base_url=info["api"],
            timeout=10,
            headers={"Authorization": f"Bearer {make_tenant_a(receiver.url)}"},
        )
        tenant_b = httpx.Client(
            base_url=info["api"], timeout=10, headers={"Authorization": f"Bearer {info['api_key']}"}
        )
        # One batch, so one delivery task sends all 40 (the sender allows 100/s here).
        resp = tenant_a.post(
            "/v1/messages/batch",
            json={
                "messages": [
                    {"to": f"+1202555{i + 1000:04d}", "channel": "sms", "body": f"A {i}"}
                    for i in range(40)
                ]
            },
        )
        assert resp.status_code == 200 and resp.json()["accepted"] == 40, resp.text
        a_ids = [item["message"]["id"] for item in resp.json()["data"]]

        def a_all_owe() -> bool:
            return events_of(a_ids).get("pending", 0) == 40

        wait_until(a_all_owe, "A's 40 messages to owe their callback URL events")
        # Hanging mid-answer (trickled to at least once), not merely connected: else B,
        # sent within a fraction of a second, may be checked before any trickle.
        wait_until(
            lambda: len([c for c in receiver.open_connections() if c.trickled > 0]) >= 4,
            "A's deliveries to hang",
        )

        b_posted = time.monotonic()
        resp = tenant_b.post(
            "/v1/messages", json={"to": "+12025550143", "channel": "sms", "body": "B's code"}
        )
        assert resp.status_code == 202, resp.text
        b_id = resp.json()["id"]
        # Beat's periodic release is what sends a scheduled message.
        send_at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        resp = tenant_b.post(
            "/v1/messages",
            json={"to": "+12025550144", "channel": "sms", "body": "later", "send_at": send_at},
        )
        assert resp.status_code == 202, resp.text
        scheduled_id = resp.json()["id"]

        def b_sent() -> dict | None:
            message = tenant_b.get(f"/v1/messages/{b_id}").json()
            return message if message["status"] in SENT else None

        try:
            wait_until(b_sent, "B's message to be sent")
        except AssertionError:
            status = tenant_b.get(f"/v1/messages/{b_id}").json()["status"]
            raise AssertionError(
                f"B's message stuck in {status!r} while A's deliveries hang\n{stack.log_tail()}"
            ) from None
        # At the moment B is sent, A's deliveries are still hanging: connections opened
        # before B was posted are open now, and none of A's events was delivered.
        # (Open, opened before B was posted, and already trickled to: mid-answer.)
        hanging = [c for c in receiver.open_connections() if c.opened < b_posted and c.trickled > 0]
        assert hanging, "A's deliveries ended before B was sent: nothing was proved"
        owed = events_of(a_ids)
        assert owed.get("delivered", 0) == 0 and owed.get("pending", 0) == 40, owed

        def released() -> bool:
            return tenant_b.get(f"/v1/messages/{scheduled_id}").json()["status"] in SENT

        wait_until(released, "beat to release B's scheduled message")
        assert events_of(a_ids).get("delivered", 0) == 0
    finally:
        stack.stop()
