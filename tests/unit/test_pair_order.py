"""Pair order: messages from one sender to one recipient leave in the order they were
accepted, whatever the batching, pacing or retries (services/messages/gate.py). The
gate is asked directly: which rows of a batch may go now, and which wait."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from core.config import get_settings
from models import Message, ProviderAccount, session_scope, utcnow
from providers import ErrorKind, ProviderError
from services.messages.claim import claim_for_sending
from services.messages.gate import gate, order_wait
from services.messages.record import record_error
from services.policy.limits import give_back_pair_slot
from tests.conftest import make_tenant

TO = "+12025550143"


def _post(client, auth, bodies: list[str], **extra) -> list[str]:  # type: ignore[no-untyped-def]
    ids = []
    for body in bodies:
        resp = client.post(
            "/v1/messages",
            json={"to": TO, "body": body, "channel": "whatsapp", "provider": "meta", **extra},
            headers=auth,
        )
        assert resp.status_code == 202, resp.get_json()
        ids.append(resp.get_json()["id"])
    return ids


def _set(message_id: str, **values) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        session.execute(update(Message).where(Message.id == message_id).values(**values))


def _release(*message_ids: str) -> None:
    """What the beat's release does to a parked row once it is due."""
    for message_id in message_ids:
        _set(message_id, not_before=None)


@pytest.fixture
def pacing(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HERALD_PAIR_PACING_SECONDS", "6")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def _auth() -> dict[str, str]:
    tenant = make_tenant("order")
    return {"Authorization": f"Bearer {tenant['api_key']}"}


def test_only_the_oldest_unsent_message_of_a_pair_may_go(client, dispatched) -> None:
    auth = _auth()
    first, second, third = _post(client, auth, ["one", "two", "three"])
    sms = client.post(
        "/v1/messages", json={"to": TO, "body": "sms", "channel": "sms"}, headers=auth
    ).get_json()["id"]
    other = client.post(
        "/v1/messages",
        json={"to": "+15005550011", "body": "x", "channel": "whatsapp", "provider": "meta"},
        headers=auth,
    ).get_json()["id"]

    # A batch in any order: the oldest of the pair goes, the later ones wait for it.
    waits = gate([third, other, second, sms, first]).waits
    assert waits[first] == 0.0
    assert waits[second] > 0 and waits[third] > 0
    assert waits[other] == 0.0  # another recipient is another pair
    assert waits[sms] == 0.0  # SMS to the same number goes from another sender

    # A failed (or expired, or canceled) earlier message holds nobody up.
    _set(first, status="failed")
    _release(second, third)
    waits = gate([third, second]).waits
    assert waits[second] == 0.0 and waits[third] > 0

    # Claimed by a worker that died: it may have reached the provider, so the next
    # waits until the sweeper settles it.
    _set(second, status="sending", lease_until=utcnow() - timedelta(seconds=5))
    _release(third)
    assert gate([third]).waits[third] > 0
    _set(second, status="sent")
    assert gate([third]).waits[third] == 0.0


def test_a_deferred_message_keeps_its_turn_under_pacing(client, dispatched, pacing) -> None:
    auth = _auth()
    ids = _post(client, auth, ["reply", "reaction", "location", "contacts"])
    assert gate([ids[0]]).waits[ids[0]] == 0.0  # takes the pair slot
    _set(ids[0], status="sent")

    # The slot is taken: the next one is paced, and the ones after it queue behind it,
    # each later than the one before; none takes the slot meanwhile.
    waits = gate(ids[1:]).waits
    assert 0 < waits[ids[1]] <= 6.0
    assert waits[ids[1]] < waits[ids[2]] < waits[ids[3]]

    # The slot is free again and every row is due: whatever the batch's order, the
    # earliest goes and the later ones wait for it (before, the first row of the batch
    # took the slot: "contacts" before "reaction").
    give_back_pair_slot("meta", _sender(ids[1]), TO)
    _release(*ids[1:])
    waits = gate([ids[3], ids[2], ids[1]]).waits
    assert waits[ids[1]] == 0.0
    assert waits[ids[2]] > 0 and waits[ids[3]] > 0


def test_a_retry_after_a_provider_error_keeps_its_turn(client, dispatched) -> None:
    auth = _auth()
    first, second = _post(client, auth, ["first", "second"])
    claimed = claim_for_sending(first)
    assert claimed is not None
    outcome = record_error(
        claimed[0], ProviderError(ErrorKind.TRANSIENT, "boom", code="131000", http_status=500)
    )
    assert outcome.action == "retry"
    # The first waits for its retry, leased: the second must not overtake it.
    assert gate([second]).waits[second] > 0
    _set(first, status="sent")
    _release(second)
    assert gate([second]).waits[second] == 0.0


def test_order_wait_counts_each_earlier_message_a_step() -> None:
    now = utcnow().replace(tzinfo=None)
    assert order_wait(1, None, now, 6.0) == 6.0
    assert order_wait(3, None, now, 6.0) == 18.0
    assert order_wait(2, None, now, 0.0) == 2.0  # SMS: the beat's step
    assert order_wait(1, now + timedelta(seconds=4), now, 6.0) == pytest.approx(10.0)
    assert order_wait(1, now - timedelta(seconds=4), now, 6.0) == 6.0  # already due


def _sender(message_id: str) -> str:
    """The Meta sender the pair pacing is keyed on: the account's phone number id."""
    with session_scope() as session:
        row = session.get(Message, message_id)
        assert row is not None
        account = session.get(ProviderAccount, row.provider_account_id)
        assert account is not None
        return account.external_id
