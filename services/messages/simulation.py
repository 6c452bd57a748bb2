"""Test messages: sent to the simulator, their statuses applied as callbacks' are.

A message accepted with a test key (`messages.test`) goes through everything a live one
does (validation, opt-outs, quotas, the gate, the claim, the `sending` and `sent`
events) except the provider call: `provider_for` hands the worker the simulator
(providers/simulator.py), whatever the tenant's accounts. Once its `sent` is recorded,
a `herald.simulate` task applies what the recipient's magic number says (delivered,
undelivered, read, or nothing) with the batch status applier the webhook inbox uses
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
from services.messages.dispatch import publish_later
from services.messages.status import StatusChange, apply_statuses, lock_messages

log = logging.getLogger(__name__)

SIMULATE_TASK = "herald.simulate"
SIMULATE_QUEUE = "herald.send"


def provider_for(message: Message) -> Provider:
    """The provider a claimed row is sent with: the simulator for a test message,
    never the provider it names."""
    return get_provider(NAME if message.test else message.provider)


def after_sent(message_ids: list[str]) -> None:
    """Ask for the simulated outcome of test messages whose `sent` is committed."""
    for message_id in message_ids:
        publish_later([message_id], SIMULATE_QUEUE, SIMULATE_TASK)


def simulate(message_id: str) -> int:
    """Apply the statuses the simulator reports for a test message (its magic number's
    outcome) in one transaction; how many moved it. A live message is never touched."""
    with session_scope() as session:
        row = session.execute(
            select(Message.to_number, Message.provider, Message.test).where(
                Message.id == message_id
            )
        ).first()
        if row is None or not row.test:
            return 0
        outcome = outcome_for(row.to_number)
        if not outcome:
            return 0
        locked = lock_messages(session, {message_id}, row.provider, set())
        if message_id not in locked:
            return 0
        now = utcnow()
        changes = [
            StatusChange(
                message_id=message_id,
                new=step.status,
                source=NAME,
                at=now,
                native_status=step.status,
                error_code=step.error_code,
                error_message=step.error_message,
            )
            for step in outcome
        ]
        moved = apply_statuses(session, changes, locked)
    log.info("simulated id=%s statuses=%s", message_id, ",".join(c.new for c in changes))
    return moved
