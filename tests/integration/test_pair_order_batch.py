"""Pair order inside one batch, against the sandbox: several SMS to one number that a
publisher coalesced into one task leave one after the other, in acceptance order, within
that task (services/messages/delivery.py), not one per beat; and a provider error on the
first holds the rest back (docs/guarantees.md#in-order-per-conversation)."""

from __future__ import annotations

import uuid

from services.messages.delivery import deliver_many
from tests.conftest import TWILIO_SID, TWILIO_TOKEN, make_tenant


def _auth() -> dict[str, str]:
    tenant = make_tenant(
        "pair-batch",
        twilio={"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "sms_from": "+12025550100"},
    )
    return {"Authorization": f"Bearer {tenant['api_key']}"}


def _accept(client, auth, to: str, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    ids = []
    for i in range(count):
        resp = client.post(
            "/v1/messages", json={"to": to, "channel": "sms", "body": f"part {i}"}, headers=auth
        )
        assert resp.status_code == 202, resp.get_json()
        ids.append(resp.get_json()["id"])
    return ids


def _arrived(live, ids: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    sends = sorted(
        (s for s in live.sends(accepted="true") if s["herald_id"] in set(ids)),
        key=lambda s: s["seq"],
    )
    return [s["herald_id"] for s in sends]


def test_a_batch_sends_one_pairs_messages_one_after_the_other(live, client, dispatched) -> None:
    auth = _auth()
    to = f"+1202555{uuid.uuid4().int % 10000:04d}"
    ids = _accept(client, auth, to, 4)
    # The batch in any order: all four leave in this one task, in acceptance order.
    outcomes = deliver_many(list(reversed(ids)))
    assert [o.action for o in outcomes] == ["sent"] * 4
    assert _arrived(live, ids) == ids


def test_a_failed_attempt_holds_the_rest_of_the_batch_back(live, client, dispatched) -> None:
    auth = _auth()
    to = f"+1202555{uuid.uuid4().int % 10000:04d}"
    ids = _accept(client, auth, to, 3)
    live.fault(provider="twilio", status=503, code=20503, count=1)  # the first: ambiguous
    outcomes = deliver_many(ids)
    assert [o.action for o in outcomes] == ["retry", "throttled", "throttled"]
    assert _arrived(live, ids) == []
