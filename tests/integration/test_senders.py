"""Several senders per tenant, end to end through the sandbox: `from` picks one, the
default serves otherwise, an unknown `from` is refused, a retry keeps its sender, a
campaign spreads over a pool at each sender's own rate, and inbound messages and status
callbacks for a second number or phone number id reach the right tenant."""

from __future__ import annotations

import random
import types
import uuid
from collections import Counter

import pytest
from sqlalchemy import select

from models import Message, session_scope
from services.campaigns.campaigns import release_due_campaigns
from services.messages.delivery import deliver, deliver_many
from services.policy import limits
from services.tenancy.sender_admin import add_sender, remove_sender, set_default
from services.tenancy.senders import assign, tenant_senders
from tests.conftest import META_PHONE_ID, META_SECRET, META_TOKEN, free_number, make_tenant
from tests.integration.conftest import wait_for

TO = "+12025550143"


def fresh_mg() -> str:
    return "MG" + uuid.uuid4().hex


def twilio_tenant(live, numbers: list[str], services: list[str] = (), legacy: str | None = None):  # type: ignore[no-untyped-def]
    """A tenant on its own Twilio account, which the sandbox knows owns `numbers` and
    `services` (any other From is refused, as Twilio refuses it)."""
    sid, token = "AC" + uuid.uuid4().hex, uuid.uuid4().hex
    owned = [*numbers, *([legacy] if legacy else [])]
    live.control.post(
        "/_sandbox/accounts",
        json={
            "provider": "twilio",
            "account_sid": sid,
            "auth_token": token,
            "numbers": owned,
            "messaging_services": list(services),
        },
    ).raise_for_status()
    account = {"account_sid": sid, "auth_token": token}
    if legacy:
        account["sms_from"] = legacy
    tenant = make_tenant("senders", twilio=account)
    tenant["account_sid"] = sid
    tenant["auth"] = {"Authorization": f"Bearer {tenant['api_key']}"}
    return tenant


def add(tenant_id: str, **payload):  # type: ignore[no-untyped-def]
    with session_scope() as session:
        sender = add_sender(session, tenant_id, payload)
        return sender.id


def send(client, tenant, **fields):  # type: ignore[no-untyped-def]
    body = {"to": TO, "channel": "sms", "body": "Hi", **fields}
    resp = client.post("/v1/messages", json=body, headers=tenant["auth"])
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()


def sent_request(live, message_id: str) -> dict:  # type: ignore[type-arg]
    sends = [s for s in live.sends(herald_id=message_id) if s["accepted"]]
    assert len(sends) == 1, sends
    return sends[0]


def test_from_picks_each_sender_and_the_default_serves_otherwise(live, client, dispatched) -> None:
    first, second, legacy, mg = free_number(), free_number(), free_number(), fresh_mg()
    tenant = twilio_tenant(live, [first, second], [mg], legacy=legacy)
    tid = tenant["tenant_id"]
    first_id = add(tid, provider="twilio", address=first, is_default=True, label="main")
    second_id = add(tid, provider="twilio", address=second)
    mg_id = add(tid, provider="twilio", address=mg)

    by_number = send(client, tenant, **{"from": second})
    by_id = send(client, tenant, **{"from": first_id})
    by_service = send(client, tenant, **{"from": mg})
    by_default = send(client, tenant)
    assert (by_number["from"], by_number["sender_id"]) == (second, second_id)
    assert by_service["sender_id"] == mg_id and by_default["sender_id"] == first_id
    for message in (by_number, by_id, by_service, by_default):
        assert deliver(message["id"]).action == "sent"

    assert sent_request(live, by_number["id"])["request"]["From"] == second

    def delivered() -> bool:  # the second number's status callbacks reach the message
        with session_scope() as session:
            return session.get(Message, by_number["id"]).status == "delivered"

    wait_for(delivered, what="the second number's status callbacks")
    assert sent_request(live, by_id["id"])["request"]["From"] == first
    service_request = sent_request(live, by_service["id"])["request"]
    assert service_request["MessagingServiceSid"] == mg and "From" not in service_request
    # The default sender, not the account's own `sms_from`.
    assert sent_request(live, by_default["id"])["request"]["From"] == first
    # The account's own sender may still be named.
    by_legacy = send(client, tenant, **{"from": legacy})
    assert deliver(by_legacy["id"]).action == "sent"
    assert sent_request(live, by_legacy["id"])["request"]["From"] == legacy


def test_unknown_or_foreign_from_is_refused_naming_from(live, client, dispatched) -> None:
    tenant = twilio_tenant(live, [free_number()])
    other = twilio_tenant(live, [number := free_number()])
    foreign_id = add(other["tenant_id"], provider="twilio", address=number)
    for value, status, code in (
        (free_number(), 422, "sender_not_found"),
        (number, 422, "sender_not_found"),  # another tenant's number
        (foreign_id, 422, "sender_not_found"),  # another tenant's sender id
        (fresh_mg(), 422, "sender_not_found"),
        ("not-a-sender", 400, "invalid_fields"),
    ):
        resp = client.post(
            "/v1/messages",
            json={"to": TO, "channel": "sms", "body": "Hi", "from": value},
            headers=tenant["auth"],
        )
        assert resp.status_code == status, (value, resp.get_json())
        error = resp.get_json()["error"]
        assert error["code"] == code and "from" in error["fields"], error
    # A sender that does not serve the channel.
    sms_only = free_number()
    add(tenant["tenant_id"], provider="twilio", address=sms_only, channels=["sms"])
    resp = client.post(
        "/v1/messages",
        json={"to": TO, "channel": "whatsapp", "body": "Hi", "from": sms_only},
        headers=tenant["auth"],
    )
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "sender_not_usable"


def test_the_sender_chosen_at_accept_is_the_one_sent_from(live, client, dispatched) -> None:
    """The row keeps its sender: removing it, or changing the default, before the send
    (or between attempts) does not change where the message comes from."""
    first, second = free_number(), free_number()
    tenant = twilio_tenant(live, [first, second])
    tid = tenant["tenant_id"]
    first_id = add(tid, provider="twilio", address=first)
    second_id = add(tid, provider="twilio", address=second, is_default=True)
    message = send(client, tenant)
    assert message["sender_id"] == second_id
    with session_scope() as session:
        remove_sender(session, tid, second_id)
        set_default(session, tid, first_id)
    assert deliver(message["id"]).action == "sent"
    assert sent_request(live, message["id"])["request"]["From"] == second


def test_meta_second_phone_number_id_sends_and_routes(live, client, dispatched) -> None:
    """One token (one WABA) with two phone number ids: the second sends from its own URL,
    and its status callbacks and inbound messages reach the tenant."""
    phone_id = "10" + "".join(random.choices("0123456789", k=13))
    live.control.post(
        "/_sandbox/accounts",
        json={
            "provider": "meta",
            "phone_number_id": phone_id,
            "access_token": META_TOKEN,
            "app_secret": META_SECRET,
            "display_phone_number": "+12025550122",
        },
    ).raise_for_status()
    tenant = make_tenant("meta-senders", twilio={})
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    sender_id = add(tenant["tenant_id"], provider="meta", address=phone_id, number="+12025550122")
    resp = client.post(
        "/v1/messages", json={"to": TO, "body": "Hola", "from": phone_id}, headers=auth
    )
    assert resp.status_code == 202, resp.get_json()
    mid = resp.get_json()["id"]
    assert resp.get_json()["sender_id"] == sender_id
    assert deliver(mid).action == "sent"
    assert sent_request(live, mid)["account"] == phone_id  # POST /{phone_id}/messages
    # Without `from`: the account's own phone number id, as before.
    plain = client.post("/v1/messages", json={"to": TO, "body": "Hola"}, headers=auth)
    assert deliver(plain.get_json()["id"]).action == "sent"
    assert sent_request(live, plain.get_json()["id"])["account"] == META_PHONE_ID

    def delivered() -> bool:
        with session_scope() as session:
            return session.get(Message, mid).status in ("delivered", "read")

    wait_for(delivered, what="the second number's status callbacks")
    answer = live.control.post(
        "/_sandbox/inbound",
        json={"provider": "meta", "account": phone_id, "from": "+12025550177", "body": "yo"},
    ).json()
    assert answer["status_code"] == 200, answer
    with session_scope() as session:
        inbound = session.scalars(
            select(Message).where(Message.provider_message_id == answer["message_id"])
        ).one()
        assert (inbound.tenant_id, inbound.direction) == (tenant["tenant_id"], "inbound")
        assert inbound.to_number == "+12025550122"  # the number written to, not the account's


def test_twilio_inbound_to_a_second_number_routes_to_its_tenant(live, client) -> None:
    first, second, mg = free_number(), free_number(), fresh_mg()
    tenant = twilio_tenant(live, [first, second], [mg], legacy=first)
    add(tenant["tenant_id"], provider="twilio", address=second)
    add(tenant["tenant_id"], provider="twilio", address=mg)
    for extra in ({"to": second}, {"to": free_number(), "messaging_service_sid": mg}):
        answer = live.control.post(
            "/_sandbox/inbound",
            json={
                "provider": "twilio",
                "account": tenant["account_sid"],
                "from": "+12025550177",
                "body": "hello",
                **extra,
            },
        ).json()
        assert answer["status_code"] == 200, answer
        with session_scope() as session:
            inbound = session.scalars(
                select(Message).where(Message.provider_message_id == answer["message_id"])
            ).first()
            assert inbound is not None, extra
            assert inbound.tenant_id == tenant["tenant_id"]


@pytest.fixture
def frozen_buckets(monkeypatch):  # type: ignore[no-untyped-def]
    """The rate buckets' clock stands still: each sender can spend exactly its burst
    (its own messages per second), whatever the machine's speed."""
    import time

    now = time.time() + 3600
    monkeypatch.setattr(limits, "time", types.SimpleNamespace(time=lambda: now))


def test_pool_campaign_spreads_sticky_and_paces_each_sender(
    live, client, dispatched, frozen_buckets
) -> None:
    slow, fast = "+12025557001", "+12025557002"  # fixed: the split below is too
    tenant = twilio_tenant(live, [slow, fast])
    tid = tenant["tenant_id"]
    slow_id = add(tid, provider="twilio", address=slow, mps=1)
    fast_id = add(tid, provider="twilio", address=fast, mps=3)
    recipients = [{"to": f"+1202555{n:04d}"} for n in range(100, 130)]
    resp = client.post(
        "/v1/campaigns",
        json={
            "name": "pool",
            "channel": "sms",
            "body": "Offer",
            "rate": 100,
            "senders": [slow_id, fast],
            "recipients": recipients,
        },
        headers=tenant["auth"],
    )
    assert resp.status_code == 201, resp.get_json()
    campaign_id = resp.get_json()["id"]
    release_due_campaigns()
    with session_scope() as session:
        rows = session.scalars(select(Message).where(Message.campaign_id == campaign_id)).all()
        assigned = {m.id: m.options["sender"]["address"] for m in rows}
        by_to = {m.to_number: m.options["sender"]["address"] for m in rows}
        pool = [s for s in tenant_senders(session, tid) if s.id in (slow_id, fast_id)]
    share = Counter(assigned.values())
    assert set(share) == {slow, fast} and share[fast] > share[slow]  # weighted by rate
    assert by_to == {to: assign(pool, to, "sms").address for to in by_to}  # sticky

    # One pass with the clock still: each sender sends its own burst, the rest waits.
    # The campaign path: one gate pass for the batch, then the sends.
    outcomes = Counter(o.action for o in deliver_many(list(assigned)))
    sent = Counter(s["from"] for s in live.sends(provider="twilio", accepted="true"))
    assert (sent[slow], sent[fast]) == (1, 3)
    assert outcomes["throttled"] == len(assigned) - 4

    # A second campaign to the same people: each hears from the same sender again.
    again = client.post(
        "/v1/campaigns",
        json={
            "name": "pool again",
            "channel": "sms",
            "body": "Offer 2",
            "from": "pool",
            "recipients": recipients[:10],
        },
        headers=tenant["auth"],
    )
    assert again.status_code == 201, again.get_json()
    with session_scope() as session:
        rows = session.scalars(
            select(Message).where(Message.campaign_id == again.get_json()["id"])
        ).all()
        assert {m.to_number: m.options["sender"]["address"] for m in rows} == {
            m.to_number: by_to[m.to_number] for m in rows
        }


def test_a_full_queue_holds_only_that_sender(live, client, dispatched) -> None:
    """Twilio 21611 (the sender's queue is full) holds the one number it was about
    (services/policy/breaker.py): the tenant's other senders keep sending."""
    busy, free = free_number(), free_number()
    tenant = twilio_tenant(live, [busy, free])
    add(tenant["tenant_id"], provider="twilio", address=busy)
    add(tenant["tenant_id"], provider="twilio", address=free)
    live.fault(provider="twilio", status=400, code=21611, count=1)
    first = send(client, tenant, **{"from": busy})
    assert deliver(first["id"]).action == "held"
    other = send(client, tenant, **{"from": free}, to="+12025550144")
    assert deliver(other["id"]).action == "sent"
    assert sent_request(live, other["id"])["request"]["From"] == free
    again = send(client, tenant, **{"from": busy}, to="+12025550145")
    assert deliver(again["id"]).action != "sent"  # still held
