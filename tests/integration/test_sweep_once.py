"""The sweeper re-sends a `sending` row whose worker died, exactly once, through the
sandbox: the row is claimed (status `sending`, a lease) and never sent, as when a worker
is killed between its claim and the provider call; once the lease lapses the sweeper
finds it, and however many doorbells ring for it, the provider gets one send."""

from __future__ import annotations

from services.messages.claim import claim_for_sending
from services.messages.delivery import deliver
from services.messages.sweep import due_for_sweep
from tests.integration.test_delivery import create, expire_lease, load

# Every due row, not the sweeper's 500 oldest: the suite's other tests leave rows due too.
SWEEP_ALL = 1_000_000


def test_a_lapsed_lease_is_swept_and_sent_exactly_once(live, client, auth, dispatched) -> None:
    mid = create(client, auth, channel="sms")
    assert claim_for_sending(mid) is not None  # the worker that claimed it is killed here
    assert load(mid).status == "sending"
    assert mid not in {
        m for m, _ in due_for_sweep(limit=SWEEP_ALL)
    }  # its lease still runs: not swept
    expire_lease(mid)
    assert mid in {m for m, _ in due_for_sweep(limit=SWEEP_ALL)}
    # The sweeper's doorbell, a duplicate of it, and the original's late redelivery.
    actions = [deliver(mid).action for _ in range(3)]
    assert actions.count("sent") == 1, actions
    assert len(live.sends(herald_id=mid)) == 1
    assert load(mid).status == "sent"
    assert mid not in {m for m, _ in due_for_sweep(limit=SWEEP_ALL)}
