"""Claiming rows to send: the lease that is the lock, the opt-out check at claim, and the
provider message built from a claimed row.

* A worker may send only after a conditional UPDATE moves the row to `sending` with
  `lease_until` in the future, from `queued` or from `sending` with an expired lease.
  A redelivered or duplicated task finds nothing to claim.
* Each send carries Herald's id out (Twilio: the StatusCallback URL; Meta:
  `biz_opaque_callback_data`), so a provider callback settles the row even if the
  worker died before recording the provider's id."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, make_transient_to_detached

from core.config import get_settings
from models import (
    Message,
    ProviderAccount,
    session_scope,
    utcnow,
)
from models.base import UTCDateTime
from models.fast import Statement, column_list, naive_utc
from providers import (
    OutboundMessage,
)
from providers.base import AccountCredentials
from services.content import conversations
from services.content.phones import whatsapp_forms
from services.content.schemas import provider_problems
from services.messages.campaign_content import fill_campaign_content
from services.messages.dispatch import enqueue_after_commit
from services.messages.expiry import expired_refusal
from services.messages.gate import Gate
from services.messages.serialize import message_to_dict
from services.messages.status import apply_status
from services.privacy.suppression import hashes_of
from services.reporting.events import EVENTS_QUEUE, EVENTS_TASK, listening
from services.tenancy.senders import outbound_sender
from services.tenancy.tenants import credentials

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryOutcome:
    action: str  # sent | failed | retry | throttled | held | skipped
    retry_in: float | None = None


SKIPPED = DeliveryOutcome("skipped")
SENT = DeliveryOutcome("sent")


def status_callback_url(message_id: str) -> str:
    return f"{get_settings().public_url}/webhooks/twilio/status?message_id={message_id}"


# The hot statements as fixed SQL over arrays, run on the session's own connection
# (models.fast): a batch of any size is one statement with a handful of parameters,
# and nothing is built, cache-keyed or compiled per call. Timestamps go in and come
# out naive UTC, as the columns store them; JSON comes out decoded.
MESSAGE_COLUMNS = tuple(Message.__table__.c)
# Each column's attribute on Message (the `metadata` column is `meta`).
_MESSAGE_KEYS = tuple(Message.__mapper__.get_property_by_column(c).key for c in MESSAGE_COLUMNS)
_MESSAGE_TIMES = tuple(i for i, c in enumerate(MESSAGE_COLUMNS) if isinstance(c.type, UTCDateTime))
_new_message = Message.__mapper__.class_manager.new_instance
_CLAIM = Statement(
    """
    UPDATE messages SET status = 'sending', attempts = attempts + 1, lease_until = :lease,
           updated_at = :now, not_before = NULL, slot_reserved = false
    WHERE id = ANY(CAST(:ids AS text[])) AND direction = 'outbound'
      AND (status = 'queued' OR (status = 'sending' AND lease_until < :now))
    RETURNING """
    + column_list([c.name for c in MESSAGE_COLUMNS])
)
_OPTED_OUT = Statement(
    """
    SELECT tenant_id, phone, wa_id, wa_user_id FROM contacts
    WHERE tenant_id = ANY(CAST(:tenants AS text[])) AND opted_out
      AND phone = ANY(CAST(:forms AS text[]))
    UNION ALL
    SELECT tenant_id, phone, wa_id, wa_user_id FROM contacts
    WHERE tenant_id = ANY(CAST(:tenants AS text[])) AND opted_out
      AND wa_id = ANY(CAST(:forms AS text[]))
    UNION ALL
    SELECT tenant_id, phone, wa_id, wa_user_id FROM contacts
    WHERE tenant_id = ANY(CAST(:tenants AS text[])) AND opted_out
      AND wa_user_id = ANY(CAST(:forms AS text[]))
    UNION ALL
    SELECT tenant_id, number_hash, NULL, NULL FROM suppressions
    WHERE tenant_id = ANY(CAST(:tenants AS text[]))
      AND number_hash = ANY(CAST(:hashes AS text[]))
    """
)
_EVENTS = Statement(
    """
    INSERT INTO message_events
        (message_id, status, native_status, source, applied, error_code, detail, at)
    SELECT v.id, :status, v.native, :source, v.applied, NULL, CAST(v.detail AS json), :at
    FROM unnest(CAST(:ids AS text[]), CAST(:natives AS text[]), CAST(:applied AS boolean[]),
                CAST(:details AS text[])) AS v(id, native, applied, detail)
    """
)


def message_from_row(row: Sequence[Any]) -> Message:
    """A Message from a row of `MESSAGE_COLUMNS`, as the ORM would have loaded it and
    its session's closing left it: detached, every attribute loaded, timestamps aware
    UTC, JSON decoded."""
    values = dict(zip(_MESSAGE_KEYS, row, strict=True))
    for i in _MESSAGE_TIMES:
        if row[i] is not None:
            values[_MESSAGE_KEYS[i]] = row[i].replace(tzinfo=UTC)
    # As the ORM's loader builds an instance: no constructor, the row's values set
    # as its state, then given its identity (every attribute loaded, none changed).
    message = _new_message()
    message.__dict__.update(values)
    make_transient_to_detached(message)
    return message


def insert_events(
    session: Session,
    status: str,
    source: str,
    rows: list[tuple[str, str | None, bool, dict | None]],
    at: datetime,
) -> None:
    """Message events for a batch in one INSERT: (message id, native status, applied,
    detail) each."""
    if not rows:
        return
    _EVENTS.execute(
        session,
        {
            "status": status,
            "source": source,
            "at": naive_utc(at),
            "ids": [r[0] for r in rows],
            "natives": [r[1] for r in rows],
            "applied": [r[2] for r in rows],
            "details": [None if r[3] is None else json.dumps(r[3]) for r in rows],
        },
    )


def claim_for_sending(message_id: str) -> tuple[Message, AccountCredentials] | None:
    """Take the row for one send attempt, or None if another attempt owns or finished it."""
    claimed = claim_many([message_id])
    return claimed[0] if claimed else None


def claim_many(
    message_ids: list[str], known: Gate | None = None
) -> list[tuple[Message, AccountCredentials]]:
    """Take each claimable row of the batch for one send attempt, in one transaction.

    One conditional UPDATE ... RETURNING takes the rows: a row queued, or sending
    with an expired lease, is ours; any other (finished, or leased by a live
    attempt) is left alone, so a redelivered batch claims nothing twice. Rows that
    may not be sent any more (attempts exhausted, recipient opted out since, account
    removed) are failed here and not returned. `known`: what the batch's gate read
    (accounts, listeners), so it is not read again."""
    if not message_ids:
        return []
    settings = get_settings()
    now = utcnow()
    lease = now + timedelta(seconds=settings.send_lease_seconds + settings.http_timeout)
    if known is not None and known.session is not None:
        return _claim(known.session, message_ids, known, now, lease)
    with session_scope() as session:
        return _claim(session, message_ids, known, now, lease)


def _claim(  # type: ignore[no-untyped-def]
    session: Session, message_ids: list[str], known: Gate | None, now, lease
) -> list[tuple[Message, AccountCredentials]]:
    settings = get_settings()
    # The claimed rows come back whole: no second SELECT to load them.
    rows = _CLAIM.tuples(
        session, {"ids": list(message_ids), "now": naive_utc(now), "lease": naive_utc(lease)}
    )
    messages = {m.id: m for m in map(message_from_row, rows)}
    if not messages:
        return []
    # A campaign's rows carry only what differs per recipient: the rest from its campaign.
    fill_campaign_content(session, messages.values(), known.contents if known else None)
    opted_out = _opted_out(session, list(messages.values()))
    if known is not None:
        accounts = known.accounts
        heard = known.listening & messages.keys()
    else:
        accounts = {
            a.id: credentials(a)
            for a in session.scalars(
                select(ProviderAccount).where(
                    ProviderAccount.id.in_({m.provider_account_id for m in messages.values()})
                )
            )
        }
        heard = listening(session, list(messages))
    taken: list[tuple[Message, AccountCredentials]] = []
    first_sends: list[str] = []
    sending: list[tuple[str, str | None, bool, dict | None]] = []
    # The rows' events are inserted together at commit, not one flush per row.
    with session.no_autoflush:
        for message_id in message_ids:
            message = messages.get(message_id)
            if message is None:
                continue
            refusal = None
            account = accounts.get(message.provider_account_id)
            if message.attempts > settings.max_attempts:
                refusal = (
                    "retries_exhausted",
                    f"gave up after {settings.max_attempts} attempts",
                )
            elif (message.tenant_id, message.to_number) in opted_out:
                # A STOP that arrived after the message was accepted (a campaign row
                # released hours later, say) still stops it.
                refusal = (
                    "opted_out",
                    "the recipient opted out after the message was accepted",
                )
            elif expired := expired_refusal(message, now):  # its ttl passed while waiting
                refusal = expired
            elif account is None:
                refusal = ("provider_not_configured", "provider account removed")
            elif problem := content_problem(message):
                refusal = ("content_not_sendable", problem)
            if refusal is not None:
                apply_status(
                    session,
                    message_id,
                    "failed",
                    source="worker",
                    error_code=refusal[0],
                    error_message=refusal[1],
                    listening=message_id in heard,
                )
                continue
            assert account is not None
            if message.attempts == 1 and message_id in heard:
                first_sends.append(message_id)  # queued -> sending: an event out
            sending.append((message_id, None, True, {"attempt": message.attempts}))
            taken.append((message, account))
    insert_events(session, "sending", "worker", sending, now)
    owe_events(session, first_sends)
    return taken


def opted_out_rows(
    session: Session, tenants: Sequence[str], forms: Sequence[str], hashes: Sequence[str] = ()
) -> list[Any]:
    """The opted-out contacts of these tenants holding any of `forms` (as phone, WhatsApp
    id or BSUID: one arm each, each an index probe), and their suppressions among
    `hashes` (a suppression's hash comes back in `phone`)."""
    params = {"tenants": list(tenants), "forms": list(forms), "hashes": list(hashes)}
    return _OPTED_OUT.rows(session, params)


def _opted_out(session, messages: list[Message]) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(tenant, number) pairs among these messages' recipients that have opted out,
    whichever WhatsApp form of the number (or WhatsApp id) the contact holds."""
    if not messages:
        return set()
    forms = {m.to_number: whatsapp_forms(m.to_number) for m in messages}
    every = {form for group in forms.values() for form in group}
    # An erased person who had opted out is a suppression: a keyed hash per form.
    hashed = {
        digest: (tenant, form)
        for tenant in {m.tenant_id for m in messages}
        for digest, form in hashes_of(
            tenant, {m.to_number for m in messages if m.tenant_id == tenant}
        ).items()
    }
    rows = opted_out_rows(session, list({m.tenant_id for m in messages}), list(every), list(hashed))
    out = {(r.tenant_id, r.phone) for r in rows} | {(r.tenant_id, r.wa_id) for r in rows}
    out |= {(r.tenant_id, r.wa_user_id) for r in rows}
    out |= {hashed[r.phone] for r in rows if r.phone in hashed}
    return {
        (m.tenant_id, m.to_number)
        for m in messages
        if any((m.tenant_id, form) in out for form in forms[m.to_number])
    }


def content_problem(message: Message) -> str | None:
    """Why the provider would refuse this row's content, checked again just before
    sending: a row accepted under older rules, or a campaign row, fails here with the
    reason rather than being sent to fail at the provider (or be silently cut)."""
    content = {
        "channel": message.channel,
        "body": message.body,
        "media_url": message.media_urls,
        "template": message.template,
        **(message.options or {}),
    }
    problems = provider_problems(content, message.provider)
    if not problems:
        return None
    return " ".join(f"{field}: {' '.join(texts)}" for field, texts in problems.items())


def outbound_for(message: Message) -> OutboundMessage:
    options = message.options or {}
    return OutboundMessage(
        herald_id=message.id,
        channel=message.channel,
        to=message.to_number,
        body=message.body,
        media_urls=list(message.media_urls or []),
        media_type=options.get("media_type"),
        media_id=options.get("media_id"),
        template=message.template,
        interactive=options.get("interactive"),
        preview_url=bool(options.get("preview_url")),
        status_callback=status_callback_url(message.id) if message.provider == "twilio" else None,
        **outbound_sender(message),  # senders: the sender chosen at accept time
        **conversations.outbound_fields(message),  # reply context, reaction, location…
        expires_at=message.expires_at,
    )


# The moved rows whose events someone takes, whole, with where the events go.
_OWED = Statement(
    "SELECT "
    + ", ".join(f'm."{c.name}"' for c in MESSAGE_COLUMNS)
    + """, coalesce(m.callback_url, t.callback_url) AS url
    FROM messages AS m JOIN tenants AS t ON t.id = m.tenant_id
    WHERE m.id = ANY(CAST(:ids AS text[]))
    """
)
_OWE = Statement(
    """
    INSERT INTO event_deliveries
        (message_id, tenant_id, url, payload, status, attempts, next_attempt_at, created_at)
    SELECT v.id, v.tenant, v.url, CAST(v.payload AS json), 'pending', 0, :now, :now
    FROM unnest(CAST(:ids AS text[]), CAST(:tenants AS text[]), CAST(:urls AS text[]),
                CAST(:payloads AS text[])) AS v(id, tenant, url, payload)
    """
)


def owe_events(session: Session, message_ids: list[str]) -> None:
    """`record_status_event` for a batch of moved rows: one read, one INSERT."""
    if not message_ids:
        return
    owed = [
        (message_from_row(row[:-1]), row[-1])
        for row in _OWED.tuples(session, {"ids": message_ids})
        if row[-1]
    ]
    if owed:
        _OWE.execute(
            session,
            {
                "now": naive_utc(utcnow()),
                "ids": [m.id for m, _ in owed],
                "tenants": [m.tenant_id for m, _ in owed],
                "urls": [url for _, url in owed],
                "payloads": [
                    json.dumps(
                        {"type": "message.status", "message": message_to_dict(m, events=False)}
                    )
                    for m, _ in owed
                ],
            },
        )
        enqueue_after_commit(session, [m.id for m, _ in owed], EVENTS_QUEUE, EVENTS_TASK)
