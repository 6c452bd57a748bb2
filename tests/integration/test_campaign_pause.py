"""Pause and resume against a running campaign, its messages really sent (to the
sandbox, which counts what reaches the provider) and beat's ticks given their time:
while paused, nothing more leaves however many ticks pass; resumed, the rest leave at
the campaign's rate, each exactly once."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from sqlalchemy import select

from models import Message, session_scope, utcnow
from services.campaigns.campaigns import release_due_campaigns
from services.messages.delivery import deliver_many
from tests.integration.test_delivery import bulk_tenant

RATE, SIZE = 4, 18


class Beat:
    """Beat's campaign ticks at times the test gives, and the bulk worker that sends
    what each tick released (in this process, to the sandbox)."""

    def __init__(self, live, dispatched) -> None:  # type: ignore[no-untyped-def]
        self.live, self.dispatched = live, dispatched
        self.start = utcnow()
        self.done = 0  # batches already sent

    def tick(self, second: float) -> int:
        """Release at `second` after the start; send what was released; how many."""
        release_due_campaigns(self.start + timedelta(seconds=second))
        batches = self.dispatched.batches[self.done :]
        self.done = len(self.dispatched.batches)
        ids = [i for batch in batches for i in batch]
        if ids:
            assert {o.action for o in deliver_many(ids)} == {"sent"}
        return len(ids)

    def accepted(self, ids: set[str]) -> Counter:
        """The provider's accepted sends of these messages, by message."""
        return Counter(
            s["herald_id"] for s in self.live.sends(accepted="true") if s["herald_id"] in ids
        )


def test_a_paused_campaign_sends_nothing_more_and_resumed_sends_the_rest_once(
    live, client, dispatched
) -> None:
    # A sender of its own with room to spare: the budget is not what this test is about
    # (the suite's other tests share the default sandbox sender's within each second).
    _, auth = bulk_tenant("pause", "+12025550148")
    recipients = [{"to": f"+1202555{n:04d}"} for n in range(7100, 7100 + SIZE)]
    created = client.post(
        "/v1/campaigns",
        headers=auth,
        json={
            "name": "pause me",
            "channel": "sms",
            "body": "Offer",
            "rate": RATE,
            "recipients": recipients,
        },
    )
    assert created.status_code == 201, created.get_json()
    cid = created.get_json()["id"]
    with session_scope() as session:
        ours = set(session.scalars(select(Message.id).where(Message.campaign_id == cid)))
    assert len(ours) == SIZE
    beat = Beat(live, dispatched)

    # Running: one second's worth, then the rate's.
    assert beat.tick(0) == RATE
    assert beat.tick(1) == RATE
    sent_before = beat.accepted(ours)
    assert sum(sent_before.values()) == 2 * RATE

    paused = client.post(f"/v1/campaigns/{cid}/pause", headers=auth)
    assert paused.status_code == 200 and paused.get_json()["status"] == "paused"
    for second in range(2, 40):  # many ticks, hours of allowance had it run
        assert beat.tick(second) == 0, second
    assert beat.tick(3600) == 0
    assert beat.accepted(ours) == sent_before  # nothing more reached the provider
    shown = client.get(f"/v1/campaigns/{cid}", headers=auth).get_json()
    assert shown["status"] == "paused" and shown["counts"]["scheduled"] == SIZE - 2 * RATE

    resumed = client.post(f"/v1/campaigns/{cid}/resume", headers=auth)
    assert resumed.status_code == 200 and resumed.get_json()["status"] == "running"
    # Resumed, it starts afresh at its rate: no burst of what the pause would have banked.
    assert beat.tick(3601) == RATE
    assert beat.tick(3602) == RATE
    assert beat.tick(3603) == SIZE - 4 * RATE
    assert beat.tick(3604) == 0
    assert beat.accepted(ours) == Counter(dict.fromkeys(ours, 1))  # every one, once
    assert not set(beat.accepted(ours)) - ours
