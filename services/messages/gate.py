"""Whether a batch may go now: each sender's budget, holds (the breaker), pair order
and pair pacing. A message that must wait is parked in its row (`not_before`, its budget
slot reserved) for the beat's `release_parked`, not re-queued as a task. A test message
(services/messages/simulation.py) keeps its pair's order but takes no budget, pair slot
or hold of the real sender: it never reaches the provider, and a test loop must not slow
the tenant's live traffic.

Pair order: a message goes only when no earlier-accepted message (`messages.seq`) of
its pair (account, channel, sender, recipient) is still `queued` or `sending`. A
message that must wait (pacing, budget, hold, a retry's backoff) keeps its place: the
ones after it wait too, without taking its pair slot. Once it is final (sent, failed,
expired, canceled) it no longer holds them up."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.config import get_settings
from models import (
    Message,
    session_scope,
    utcnow,
)
from models.fast import Statement, naive_utc
from providers.base import AccountCredentials
from services.messages.campaign_content import ContentCache
from services.policy import breaker
from services.policy.limits import give_back_pair_slot, reserve_send_slots, take_pair_slot
from services.tenancy.secrets import decrypt_json
from services.tenancy.senders import sender_for

log = logging.getLogger(__name__)

# The batch's rows still to send, their accounts, and whether anyone listens for
# their events (the message's callback URL, else its tenant's).
_GATE = Statement(
    """
    SELECT m.id, m.status, m.lease_until, m.provider, m.channel, m.to_number, m.options,
           m.from_number, m.seq, m.test,
           m.not_before, m.slot_reserved, m.provider_account_id,
           a.tenant_id AS account_tenant_id, a.provider AS account_provider,
           a.external_id, a.settings, a.secrets_enc,
           (coalesce(m.callback_url, t.callback_url) IS NOT NULL
            AND coalesce(m.callback_url, t.callback_url) != '') AS listening,
           ahead.n AS ahead, ahead.due AS ahead_due
    FROM messages AS m
    JOIN provider_accounts AS a ON a.id = m.provider_account_id
    JOIN tenants AS t ON t.id = m.tenant_id
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, min(p.not_before) AS due FROM (
            SELECT p.not_before FROM messages AS p
            WHERE p.provider_account_id = m.provider_account_id
              AND p.to_number = m.to_number AND p.seq < m.seq
              AND p.direction = 'outbound' AND p.status IN ('queued', 'sending')
              AND p.channel = m.channel AND p.from_number IS NOT DISTINCT FROM m.from_number
            LIMIT :ahead_limit
        ) AS p
    ) AS ahead
    WHERE m.id = ANY(CAST(:ids AS text[])) AND m.status IN ('queued', 'sending')
    """
)
# How many earlier messages of a pair the gate counts (a blocked message waits a step
# for each, up to this many, before it looks again).
AHEAD_LIMIT = 50
# Without pair pacing (SMS), how long a message waits per earlier one still to send
# before it looks again; the beat releases parked rows every second.
ORDER_STEP_SECONDS = 1.0
_PARK = Statement(
    """
    UPDATE messages AS m SET not_before = v.due, slot_reserved = v.reserved
    FROM unnest(CAST(:ids AS text[]), CAST(:dues AS timestamp[]), CAST(:reserved AS boolean[]))
         AS v(id, due, reserved)
    WHERE m.id = v.id AND m.status IN ('queued', 'sending')
    """
)


def send_gate(message_id: str) -> float | None:
    """Seconds to wait for the sender's budget (None: nothing to send; 0.0: go).

    Taken before the claim, so a throttled message keeps its attempts: the
    per-sender messages-per-second budget and WhatsApp's pair pacing, both in
    Redis so every worker shares them. A message that must wait is parked: its row
    gets a due time (`not_before`) that the beat's `release_due` acts on, rather
    than a task coming back with a countdown."""
    return send_gates([message_id]).get(message_id)


@dataclass
class Gate:
    """What the gate learned about a batch, so the claim and the record need not ask
    again: the waits (0.0: go), who listens for events, each account's credentials."""

    waits: dict[str, float]
    listening: set[str]
    accounts: dict[str, AccountCredentials]
    # The gate's open transaction, while the batch's first chunk is claimed in it.
    session: Session | None = None
    # The batch's campaigns' content, read once for all its chunks (campaign_content.py).
    contents: ContentCache = field(default_factory=dict)
    # Rows (of unpaced pairs) waiting only for earlier rows of their pair in this same
    # batch: the batch tries them again once those were sent (delivery.py).
    following: set[str] = field(default_factory=set)


def send_gates(message_ids: list[str]) -> dict[str, float]:
    """`send_gate` for a batch, with one query: ids absent from the answer have nothing
    to send (finished, owned by another attempt, or held for longer than a sweep)."""
    return gate(message_ids).waits


# Decrypted secrets by their ciphertext: a new secret is a new ciphertext, so a cached
# entry is never stale; bounded by the accounts one process sends for.
_secrets: dict[str, dict] = {}
_SECRETS_KEPT = 1000


def _credentials(row) -> AccountCredentials:  # type: ignore[no-untyped-def]
    secrets = _secrets.get(row.secrets_enc)
    if secrets is None:
        if len(_secrets) >= _SECRETS_KEPT:
            _secrets.clear()
        secrets = _secrets[row.secrets_enc] = decrypt_json(row.secrets_enc)
    return AccountCredentials(
        id=row.provider_account_id,
        tenant_id=row.account_tenant_id,
        provider=row.account_provider,
        external_id=row.external_id,
        settings=dict(row.settings or {}),
        secrets=dict(secrets),
    )


def gate(message_ids: list[str], session: Session | None = None) -> Gate:
    """The gate for a batch: one query (the rows, their accounts, who listens), the
    sender holds and budgets in Redis, and one statement parking the rows that must
    wait. A budget slot is reserved for a parked row, so its release sends it without
    asking the budget again; rows parked for a hold or pair pacing ask again. In
    `session`'s transaction when given (the caller commits), else in its own."""
    if session is None:
        with session_scope() as own:
            return gate(message_ids, own)
    rows = _GATE.rows(session, {"ids": list(message_ids), "ahead_limit": AHEAD_LIMIT})
    now = utcnow()
    naive_now = naive_utc(now)  # the rows' times are naive UTC
    by_id = {row.id: row for row in rows}
    holds = breaker.holds_for(rows)
    settings = get_settings()
    waits: dict[str, float] = {}
    park: dict[str, tuple[float, bool]] = {}  # id: (seconds, slot reserved)
    budget: dict[tuple[str, str, float], list] = {}
    paced: set[str] = set()
    following: set[str] = set()
    for message_id in message_ids:  # the caller's order: the oldest takes the budget first
        row = by_id.get(message_id)
        if row is None or message_id in waits or message_id in park:
            continue
        if row.status == "sending" and row.lease_until and row.lease_until > naive_now:
            continue  # another attempt owns it
        if row.slot_reserved and row.not_before and row.not_before > naive_now:
            waits[message_id] = (row.not_before - naive_now).total_seconds()  # parked
            continue
        hold = None if row.test else holds.get(message_id)
        if hold is not None:  # the sender is held (services/policy/breaker.py): not claimed
            breaker.note_held([message_id], hold)
            park[message_id] = (hold.seconds, False)
            if hold.seconds <= settings.sweep_after_seconds:
                waits[message_id] = hold.seconds
            continue
        provider, sender, rate, spacing = _budget(row)
        if row.ahead:  # an earlier message of its pair is still to send: it goes first
            wait = order_wait(row.ahead, row.ahead_due, naive_now, spacing)
            park[message_id] = (wait, False)
            waits[message_id] = wait
            if spacing <= 0 and row.ahead == _ahead_in_batch(rows, row):
                following.add(message_id)
            continue
        if row.test:  # the simulator's: no provider budget, pacing or hold to keep
            waits[message_id] = 0.0
            continue
        if spacing > 0:
            pair_wait = take_pair_slot(provider, sender, row.to_number, spacing)
            if pair_wait > 0:
                park[message_id] = (pair_wait, False)
                waits[message_id] = pair_wait
                continue
            paced.add(message_id)
        if row.slot_reserved or rate <= 0:
            waits[message_id] = 0.0  # released: its slot was taken when it was parked
            continue
        budget.setdefault((provider, sender, rate), []).append(row)
    for (provider, sender, rate), group in budget.items():
        for row, wait in zip(
            group, reserve_send_slots(provider, sender, rate, len(group)), strict=True
        ):
            waits[row.id] = wait
            if wait > 0:
                park[row.id] = (wait, True)
                if row.id in paced:  # it does not go now: free the pair slot
                    give_back_pair_slot(provider, sender, row.to_number)
    if park:
        _park(session, park, now)
    go = [mid for mid, wait in waits.items() if wait == 0]
    accounts = {}
    for mid in go:
        row = by_id[mid]
        if row.provider_account_id not in accounts:
            accounts[row.provider_account_id] = _credentials(row)
    return Gate(waits, {r.id for r in rows if r.listening}, accounts, following=following)


def _pair(row) -> tuple:  # type: ignore[no-untyped-def]
    return (row.provider_account_id, row.channel, row.from_number, row.to_number)


def _ahead_in_batch(rows, row) -> int:  # type: ignore[no-untyped-def]
    """How many rows of this batch are earlier rows of `row`'s pair (only asked for a
    row that waits for its pair: rare, so no index of the batch is kept)."""
    pair = _pair(row)
    return sum(1 for r in rows if r.seq is not None and r.seq < row.seq and _pair(r) == pair)


def order_wait(ahead: int, ahead_due: datetime | None, now: datetime, spacing: float) -> float:
    """Seconds a message waits while `ahead` earlier messages of its pair are still to
    send (the first of them parked until `ahead_due`, naive UTC like `now`): each of
    them needs a pair slot (`spacing`; ORDER_STEP_SECONDS without pacing) first. It
    takes no pair slot meanwhile, so it never takes an earlier one's turn; if they are
    slower (a retry's backoff, a hold), it looks again, finds them still ahead, and
    waits again."""
    step = spacing if spacing > 0 else ORDER_STEP_SECONDS
    start = max(0.0, (ahead_due - now).total_seconds()) if ahead_due is not None else 0.0
    return start + step * ahead


def _park(session, park: dict[str, tuple[float, bool]], now: datetime) -> None:  # type: ignore[no-untyped-def]
    """Give each row its due time, in one statement."""
    _PARK.execute(
        session,
        {
            "ids": list(park),
            "dues": [naive_utc(now + timedelta(seconds=sec)) for sec, _ in park.values()],
            "reserved": [reserved for _, reserved in park.values()],
        },
    )


def _budget(row) -> tuple[str, str, float, float]:  # type: ignore[no-untyped-def]
    """(provider, sender, messages per second, pair spacing) for a gate row."""
    settings = get_settings()
    account = row.settings or {}
    if row.provider == "meta":
        sender, default_rate = row.external_id, settings.mps_meta
    elif row.channel == "whatsapp":
        sender = account.get("whatsapp_from") or account.get("messaging_service_sid") or ""
        default_rate = settings.mps_twilio_whatsapp
    else:
        sender = account.get("sms_from") or account.get("messaging_service_sid") or ""
        default_rate = settings.mps_twilio_sms
    rate = float(account.get("mps") or default_rate)
    picked = sender_for(row)  # senders: the row's own sender, at its own rate
    if picked is not None:
        sender, rate = picked[0], picked[1] or rate
    spacing = settings.pair_pacing_seconds if row.channel == "whatsapp" else 0.0
    return row.provider, sender, rate, spacing


def release_parked(limit: int = 5000) -> list[tuple[str, str | None]]:
    """Parked rows whose due time has come, released in one statement: (id, campaign)
    of those still to send. The beat runs this every second; a release whose doorbell
    is lost is found by the sweeper like any queued row."""
    now = utcnow()
    due = (
        select(Message.id)
        .where(Message.not_before <= now)
        .order_by(Message.not_before)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    with session_scope() as session:
        rows = session.execute(
            update(Message)
            .where(Message.id.in_(due))
            .values(not_before=None, updated_at=now)
            .returning(Message.id, Message.campaign_id, Message.status)
            .execution_options(synchronize_session=False)
        ).all()
    return [(r.id, r.campaign_id) for r in rows if r.status in ("queued", "sending")]
