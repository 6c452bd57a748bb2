"""Provider failover against the sandbox: a tenant ranks its WhatsApp senders (Meta
first, Twilio second); once Meta fails enough within the window, new messages go out
through Twilio, and come back after a successful probe (services/policy/health.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from models import Message, session_scope
from services.messages.delivery import deliver
from services.policy import health
from services.tenancy.sender_admin import add_sender, remove_sender
from tests.conftest import META_PHONE_ID, open_window

TO = "+12025550143"
TWILIO_WHATSAPP = "+14155550188"
# One recipient per message (each with an open window): messages to one person leave
# in order, and an earlier one waiting for its retry would hold the next.
PEOPLE = [f"+1202555{n:04d}" for n in range(300, 330)]


@pytest.fixture
def ranked(tenant, monkeypatch) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """Meta's phone number id at priority 1, a Twilio WhatsApp number at 2; a threshold
    of 3 errors in 60 s; the clock in the test's hands."""
    from core.config import get_settings
    from services.tenancy.senders import forget_senders

    monkeypatch.setenv("HERALD_PROVIDER_FAILOVER_ERRORS", "3")
    get_settings.cache_clear()
    now = [1_000_000.0]
    monkeypatch.setattr(health, "clock", lambda: now[0])
    health.clear_health()
    for phone in PEOPLE:
        open_window(tenant["tenant_id"], phone)
    with session_scope() as session:
        meta = add_sender(
            session,
            tenant["tenant_id"],
            {"provider": "meta", "address": META_PHONE_ID, "priority": 1},
        )
        twilio = add_sender(
            session,
            tenant["tenant_id"],
            {
                "provider": "twilio",
                "address": TWILIO_WHATSAPP,
                "channels": ["whatsapp"],
                "priority": 2,
            },
        )
        ids = {"meta": meta.id, "twilio": twilio.id}
    forget_senders()
    yield {**ids, "clock": now}  # type: ignore[dict-item]
    with session_scope() as session:
        for sender_id in ids.values():
            remove_sender(session, tenant["tenant_id"], sender_id)
    forget_senders()
    health.clear_health()
    monkeypatch.delenv("HERALD_PROVIDER_FAILOVER_ERRORS")
    get_settings.cache_clear()


_next = iter(range(10**6))


def send(client, auth) -> Message:  # type: ignore[no-untyped-def]
    to = PEOPLE[next(_next) % len(PEOPLE)]
    resp = client.post("/v1/messages", json={"to": to, "body": "hi"}, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    with session_scope() as session:
        message = session.get(Message, resp.get_json()["id"])
        assert message is not None
        return message


def test_new_messages_move_to_the_next_provider_and_come_back(
    live, client, auth, ranked, dispatched
) -> None:
    first = send(client, auth)
    assert first.provider == "meta" and first.options["sender"]["priority"] == 1

    live.fault(provider="meta", status=500, count=3)  # Meta's 5xx, three sends running
    failing = [first, send(client, auth), send(client, auth)]
    for message in failing:
        assert deliver(message.id).action == "retry"
    moved = send(client, auth)
    assert (moved.provider, moved.options["sender"]["id"]) == ("twilio", ranked["twilio"])
    assert deliver(moved.id).action == "sent"
    assert live.sends(herald_id=moved.id)[0]["provider"] == "twilio"
    assert send(client, auth).provider == "twilio"  # open for the rest of the window

    ranked["clock"][0] += 61  # the window passed: half-open, one probe goes to Meta
    probe = send(client, auth)
    assert probe.provider == "meta"
    assert send(client, auth).provider == "twilio"  # only one probe at a time
    assert deliver(probe.id).action == "sent"  # Meta recovered: closed
    assert send(client, auth).provider == "meta"
    for message in failing:  # messages accepted for Meta stay Meta's, never moved
        with session_scope() as session:
            assert session.get(Message, message.id).provider == "meta"


def test_a_failed_probe_opens_it_again(live, client, auth, ranked, dispatched) -> None:
    live.fault(provider="meta", status=500, count=4)
    for _ in range(3):
        assert deliver(send(client, auth).id).action == "retry"
    assert send(client, auth).provider == "twilio"
    ranked["clock"][0] += 61
    probe = send(client, auth)
    assert probe.provider == "meta" and deliver(probe.id).action == "retry"
    assert send(client, auth).provider == "twilio"  # open again for a window


def test_a_recipient_error_is_not_the_provider_down(live, client, auth, ranked, dispatched) -> None:
    for _ in range(4):  # 400 131047 (re-engagement): the message's fault, not Meta's
        resp = client.post("/v1/messages", json={"to": "+15005550012", "body": "hi"}, headers=auth)
        assert deliver(resp.get_json()["id"]).action == "failed"
    assert send(client, auth).provider == "meta"


def test_a_request_naming_its_sender_or_provider_is_not_moved(
    live, client, auth, ranked, dispatched
) -> None:
    live.fault(provider="meta", status=500, count=3)
    for _ in range(3):
        assert deliver(send(client, auth).id).action == "retry"
    named = client.post(
        "/v1/messages", json={"to": TO, "body": "hi", "from": META_PHONE_ID}, headers=auth
    )
    assert named.get_json()["provider"] == "meta"
    chosen = client.post(
        "/v1/messages", json={"to": TO, "body": "hi", "provider": "meta"}, headers=auth
    )
    assert chosen.get_json()["provider"] == "meta"
