"""Test keys end to end: a tenant whose provider accounts are real (they point at the
sandbox, and a live key's messages reach it), a test key, a message to each magic
number: each gets its simulated statuses through the status machine, its events out,
and the sandbox receives nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from models import session_scope
from providers.simulator import OUTCOMES
from services.messages.delivery import deliver
from services.messages.simulation import SIMULATE_TASK, simulate
from services.reporting.events import deliver_pending_events
from services.tenancy.tenants import create_api_key
from tests.integration.conftest import wait_for
from tests.integration.test_events_out import Receiver

# Magic number → (channel, final status, error code, statuses posted to the callback URL).
EXPECTED = {
    "+12015550200": ("sms", "delivered", None, ["sending", "sent", "delivered"]),
    "+12015550201": (
        "sms",
        "undelivered",
        "unknown_destination",
        ["sending", "sent", "undelivered"],
    ),
    "+12015550202": ("sms", "undelivered", "unreachable", ["sending", "sent", "undelivered"]),
    "+12015550203": ("sms", "sent", None, ["sending", "sent"]),
    "+12015550204": ("whatsapp", "read", None, ["sending", "sent", "delivered", "read"]),
    "+12025550143": ("sms", "delivered", None, ["sending", "sent", "delivered"]),  # any other
}


@pytest.fixture
def tasks() -> Iterator[list[tuple[str, str]]]:
    """(task, message id) of everything published, instead of a broker."""
    from services.messages.dispatch import set_dispatcher

    published: list[tuple[str, str]] = []
    set_dispatcher(lambda task, ids, queue: published.extend((task, i) for i in ids))
    yield published
    set_dispatcher(None)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_a_test_key_exercises_the_pipeline_and_reaches_no_provider(
    live, client, auth, tenant, receiver, tasks
) -> None:
    assert set(EXPECTED) >= set(OUTCOMES)  # every magic number is exercised
    with session_scope() as session:
        test_key = create_api_key(session, tenant["tenant_id"], "tests", type="test")
    assert test_key.startswith("hk_test_")
    as_test = {"Authorization": f"Bearer {test_key}"}
    summary = live.control.get("/_sandbox/sends/summary").json()

    sent: dict[str, str] = {}
    for number, (channel, _, _, _) in EXPECTED.items():
        body = {"to": number, "channel": channel, "callback_url": receiver.url}
        if channel == "whatsapp":  # a template: no 24-hour window needed
            body["template"] = {"name": "order_update", "language": "en_US"}
        else:
            body["body"] = "Your code is 123456"
        resp = client.post("/v1/messages", headers=as_test, json=body)
        assert resp.status_code == 202, resp.get_json()
        assert resp.get_json()["test"] is True
        sent[number] = resp.get_json()["id"]
    for mid in sent.values():
        assert deliver(mid).action == "sent"
    # Each acceptance asked for its simulated outcome, as a task, after its commit.
    assert sorted(i for t, i in tasks if t == SIMULATE_TASK) == sorted(sent.values())
    simulate(list(sent.values()))  # what the worker's herald.simulate task runs, per batch
    for mid in sent.values():
        deliver_pending_events(mid)

    for number, (_, status, code, events) in EXPECTED.items():
        mid = sent[number]
        message = client.get(f"/v1/messages/{mid}", headers=as_test).get_json()
        assert (message["status"], message["test"]) == (status, True), number
        assert (message["error"] or {}).get("code") == code, number
        assert message["provider_message_id"] == f"SIM{mid}"
        assert any(e["source"] == "simulator" for e in message["events"]) == (status != "sent"), (
            number
        )
        posted = [e["message"] for e, _sig, _raw in receiver.events if e["message"]["id"] == mid]
        assert [p["status"] for p in posted] == events, number
        assert all(p["test"] is True for p in posted)
        # A live key does not see a test message.
        assert client.get(f"/v1/messages/{mid}", headers=auth).status_code == 404

    # Nothing reached a provider: no request named these messages, none arrived at all.
    for mid in sent.values():
        assert live.sends(herald_id=mid) == []
    assert live.control.get("/_sandbox/sends/summary").json()["total"] == summary["total"]

    # The same tenant's live key still reaches the sandbox: the accounts are real.
    resp = client.post(
        "/v1/messages", headers=auth, json={"to": "+12025550143", "body": "live", "channel": "sms"}
    )
    live_id = resp.get_json()["id"]
    assert resp.get_json()["test"] is False
    assert deliver(live_id).action == "sent"
    wait_for(lambda: len(live.sends(herald_id=live_id)) == 1, what="the live send")
