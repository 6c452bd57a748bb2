"""Test messages: sent to the simulator, their statuses applied as callbacks' are.

A message accepted with a test key (`messages.test`) goes through everything a live one
does (validation, opt-outs, quotas, the gate, the claim, the `sending` and `sent`
events) except the provider call: `provider_for` hands the worker the simulator
(providers/simulator.py), whatever the tenant's accounts. Once its `sent` is recorded,
a `herald.simulate` task (one per batch of ids, on herald.bulk) applies what each
recipient's magic number says (delivered, undelivered, read, or nothing) with the batch
status applier the webhook inbox uses
(`lock_messages` + `apply_statuses`): forward only, one event each, events out owed to
the tenant's callback URL in the same transaction. A lost task leaves the message
`sent`, as a lost delivery receipt leaves a live one.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from models import Message, session_scope, utcnow
from providers import Provider, get_provider
from providers.simulator import NAME, outcome_for
from services.messages.dispatch import SIMULATE_TASK, publish_later
from services.messages.status import StatusChange, apply_statuses, lock_messages

log = logging.getLogger(__name__)

# Beside the campaign batches, never on herald.send: a 100,000-row test campaign's
# simulations must not queue ahead of a live password code (celeryconfig task_routes).
SIMULATE_QUEUE = "herald.bulk"


def provider_for(message: Message) -> Provider:
    """The provider a claimed row is sent with: the simulator for a test message,
    never the provider it names."""
    return get_provider(NAME if message.test else message.provider)


def after_sent(message_ids: list[str]) -> None:
    """Ask for the simulated outcome of test messages whose `sent` is committed: one
    doorbell for the whole batch (the publisher splits it into tasks of BATCH_LIMIT ids)."""
    if message_ids:
        publish_later(list(message_ids), SIMULATE_QUEUE, SIMULATE_TASK)


def simulate(message_ids: list[str] | str) -> int:
    """Apply the statuses the simulator reports for test messages (each recipient's
    magic number's outcome) in one transaction: one lock and one apply for the batch;
    how many changes moved a message. A live message is never touched. A single id (a
    task published before batches) is a batch of one."""
    ids = [message_ids] if isinstance(message_ids, str) else list(dict.fromkeys(message_ids))
    if not ids:
        return 0
    with session_scope() as session:
        rows = session.execute(
            select(Message.id, Message.to_number).where(Message.id.in_(ids), Message.test.is_(True))
        ).all()
        outcomes = {row.id: outcome_for(row.to_number) for row in rows}
        outcomes = {mid: steps for mid, steps in outcomes.items() if steps}
        if not outcomes:
            return 0
        # The provider only matters for provider ids, of which there are none here.
        locked = lock_messages(session, set(outcomes), NAME, set())
        now = utcnow()
        changes = [
            StatusChange(
                message_id=mid,
                new=step.status,
                source=NAME,
                at=now,
                native_status=step.status,
                error_code=step.error_code,
                error_message=step.error_message,
            )
            for mid in sorted(outcomes)
            if mid in locked
            for step in outcomes[mid]
        ]
        if not changes:
            return 0
        moved = apply_statuses(session, changes, locked)
    log.info("simulated messages=%d statuses=%d moved=%d", len(outcomes), len(changes), moved)
    return moved
