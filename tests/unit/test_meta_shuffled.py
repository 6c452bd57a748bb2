"""Meta statuses in any order (Meta does not promise order, and retries arrive late):
each message ends at the furthest status any delivery named, with every timestamp,
whether the statuses come one per delivery or batched, in a seeded shuffle."""

from __future__ import annotations

import random
import uuid

import pytest

from tests.unit.test_webhooks import get, meta_change, meta_post, new_message, status

SEED = 2612


@pytest.mark.parametrize("batched", [False, True])
def test_shuffled_meta_statuses_end_at_the_furthest(client, auth, dispatched, batched) -> None:
    rng = random.Random(SEED + batched)
    ids = [new_message(client, auth) for _ in range(4)]
    plan = {
        ids[0]: ["sent", "delivered", "read"],
        ids[1]: ["sent", "delivered"],
        ids[2]: ["sent", "read"],  # delivered never came
        ids[3]: ["sent", "failed"],
    }
    run = uuid.uuid4().hex[:8]  # wamids of this run alone (a wamid is held once)
    statuses = [
        status(mid, f"wamid.SH{run}{n}", state)
        for n, (mid, states) in enumerate(plan.items())
        for state in states
    ]
    rng.shuffle(statuses)
    print("seed", SEED + batched, [s["status"] for s in statuses])
    chunks = [statuses] if batched else [[s] for s in statuses]
    for chunk in chunks:
        payload = {
            "object": "whatsapp_business_account",
            "entry": [{"id": "W", "changes": [meta_change(statuses=chunk)]}],
        }
        assert meta_post(client, payload).status_code == 200
    final = {mid: get(client, auth, mid) for mid in ids}
    assert (
        final[ids[0]]["status"] == "read"
        and final[ids[0]]["delivered_at"]
        and final[ids[0]]["read_at"]
    )
    assert final[ids[1]]["status"] == "delivered" and final[ids[1]]["read_at"] is None
    assert final[ids[2]]["status"] == "read" and final[ids[2]]["delivered_at"]  # read implies it
    assert final[ids[3]]["status"] == "failed"
    for n, mid in enumerate(ids):
        assert final[mid]["provider_message_id"] == f"wamid.SH{run}{n}"
