"""The message status machine: forward only, terminal states final.

Every change is a conditional UPDATE whose WHERE clause lists the states the
move is allowed from, so two webhooks racing on one message cannot both win and
a late `sent` can never overwrite `delivered`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, inspect, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from models import EventDelivery, Message, MessageEvent, update_message, utcnow
from models.base import UTCDateTime
from models.fast import Statement, aware_utc, json_rows
from services.messages.dispatch import enqueue_after_commit
from services.reporting.events import (
    EVENTS_QUEUE,
    EVENTS_TASK,
    record_event,
    record_status_event,
)

PROGRESS = ("scheduled", "queued", "sending", "sent", "delivered", "read")
RANK = {s: i for i, s in enumerate(PROGRESS)}
TERMINAL = frozenset({"failed", "undelivered", "canceled"})
OUTBOUND = frozenset(PROGRESS) | TERMINAL


def can_move(current: str, new: str) -> bool:
    """Whether `current` → `new` is a legal move.

    Failures are believed until the message is known delivered: a provider
    saying `undelivered` after `delivered` is kept as an event only.
    """
    if current in TERMINAL or current == new:
        return False
    if new == "canceled":
        return current in ("scheduled", "queued")
    if new in TERMINAL:
        return RANK[current] < RANK["delivered"]
    return RANK.get(new, -1) > RANK[current]


def allowed_from(new: str) -> list[str]:
    return [s for s in OUTBOUND if s not in TERMINAL and can_move(s, new)]


def apply_status(
    session: Session,
    message_id: str,
    new: str,
    *,
    source: str,
    native_status: str | None = None,
    at: datetime | None = None,
    error_code: str | None = None,
    provider_code: str | None = None,
    error_message: str | None = None,
    detail: dict[str, Any] | None = None,
    provider_message_id: str | None = None,
    price: Decimal | None = None,
    price_unit: str | None = None,
    from_number: str | None = None,
    listening: bool | None = None,
) -> bool:
    """Move the message to `new` if that is forward, and record the event either way.

    Returns whether the status changed. Provider id and price are filled in even
    when the status does not move (a `sent` callback may be the first to carry
    the SID when it beats the worker's own commit). `listening`: whether anyone
    takes events for this message, when the caller already asked (a batch);
    None asks here.
    """
    at = at or utcnow()
    values: dict[str, Any] = {"status": new, "updated_at": utcnow()}
    if new == "sent":
        values["sent_at"] = func.coalesce(Message.sent_at, at)
    if new in ("delivered", "read"):
        values["delivered_at"] = func.coalesce(Message.delivered_at, at)
        values["sent_at"] = func.coalesce(Message.sent_at, at)
    if new == "read":
        values["read_at"] = at
    if new in TERMINAL - {"canceled"}:
        values["error_code"] = error_code or new
        values["error_message"] = error_message
        values["provider_error_code"] = provider_code
    if new in TERMINAL or RANK.get(new, 0) >= RANK["sent"]:
        values["lease_until"] = None
    extra: dict[str, Any] = {}
    if provider_message_id:
        extra["provider_message_id"] = func.coalesce(
            Message.provider_message_id, provider_message_id
        )
    if price is not None:
        extra["price"] = price
        extra["price_unit"] = price_unit
    if from_number:
        extra["from_number"] = func.coalesce(Message.from_number, from_number)
    # One round trip when the move applies (the usual case): the facts ride along.
    moved = Message.status.in_(allowed_from(new))
    applied = update_message(session, message_id, moved, **values, **extra) == 1
    if applied:
        if listening is None or listening:
            record_status_event(session, message_id)
    else:
        if extra:
            update_message(session, message_id, **extra)
        if new in LATE:
            report_late_status(session, [message_id], new, native_status)
    session.add(
        MessageEvent(
            message_id=message_id,
            status=new,
            native_status=native_status,
            source=source,
            applied=applied,
            error_code=provider_code or error_code,
            detail=detail,
            at=at,
        )
    )
    return applied


# ---------------------------------------------------------------- batches
#
# The same machine for many status changes at once (the webhook inbox's applier): the
# messages are locked in one SELECT ... FOR UPDATE, each change is decided in order
# against the locked row as `apply_status` would decide it, then one UPDATE per message
# (one executemany), one INSERT of all events and the events owed to listeners.

_COLUMNS = {attr.columns[0].name: attr.key for attr in inspect(Message).column_attrs}
_ALLOWED = {new: frozenset(allowed_from(new)) for new in OUTBOUND}
# What a status change may write; the batch UPDATE sets all of them.
_WRITTEN = (
    "status",
    "updated_at",
    "sent_at",
    "delivered_at",
    "read_at",
    "error_code",
    "error_message",
    "provider_error_code",
    "lease_until",
    "provider_message_id",
    "price",
    "price_unit",
    "from_number",
)
_table = Message.__table__
# What deciding a change reads: the columns written, and what matching a callback needs.
_READ = (
    "id",
    "tenant_id",
    "direction",
    "provider",
    "provider_account_id",
    "failover_id",
    *_WRITTEN,
)


@dataclass
class StatusChange:
    """One status change to apply in a batch: the arguments of `apply_status`."""

    message_id: str
    new: str
    source: str
    at: datetime
    native_status: str | None = None
    error_code: str | None = None
    provider_code: str | None = None
    error_message: str | None = None
    detail: dict[str, Any] | None = None
    provider_message_id: str | None = None
    price: Decimal | None = None
    price_unit: str | None = None
    from_number: str | None = None
    applied: bool = field(default=False, init=False)


# Fixed statements (models.fast): the applier runs these for every batch, and
# SQLAlchemy's per-call machinery cost more CPU than PostgreSQL spent on them.
# The lock is one condition on the primary key: the ids given plus those the
# provider-id index resolves (it leads with `provider`). An OR of the two let the
# planner walk the whole primary key in id order with a filter, to save the sort;
# the tenant's URL is a lookup by its key, never a join that may scan `tenants`
# (tests/unit/test_statement_plans.py reads the plan).
_LOCK = Statement(
    f"""
    SELECT {", ".join(f'm."{name}"' for name in _READ)},
        coalesce(
            m.callback_url,
            (SELECT t.callback_url FROM tenants AS t WHERE t.id = m.tenant_id)
        ) AS _listen_url
    FROM messages AS m
    WHERE m.id = ANY(
        :ids::text[] || ARRAY(
            SELECT p.id FROM messages AS p
            WHERE p.provider = :provider AND p.provider_message_id = ANY(:provider_ids::text[])
        )
    )
    ORDER BY m.id
    FOR UPDATE OF m
    """
)
_TIMES = tuple(n for n in _READ if isinstance(_table.c[n].type, UTCDateTime))
# One UPDATE for every message a batch changed, its rows as one JSON array; a message
# is written only if its status is still the one it was decided against.
_WRITTEN_TYPES = ", ".join(
    f'"{n}" {_table.c[n].type.compile(dialect=postgresql.dialect())}' for n in _WRITTEN
)
_UPDATE = Statement(
    f"""
    UPDATE messages AS m SET {", ".join(f'"{n}" = r."{n}"' for n in _WRITTEN)}
    FROM json_to_recordset(:rows::json) AS r("b_id" text, "b_was" text, {_WRITTEN_TYPES})
    WHERE m.id = r.b_id AND m.status = r.b_was
    """
)
_EVENT_COLUMNS = (
    "message_id",
    "status",
    "native_status",
    "source",
    "applied",
    "error_code",
    "detail",
    "at",
)
# The events in the order given (their ids say in which order they were applied); a
# `detail` of None is JSON null, as the ORM stores it.
_EVENTS = Statement(
    f"""
    INSERT INTO message_events ({", ".join(_EVENT_COLUMNS)})
    SELECT r.message_id, r.status, r.native_status, r.source, r.applied, r.error_code,
        coalesce(r.detail, 'null'::json), r.at
    FROM ROWS FROM (json_to_recordset(:rows::json) AS (
        message_id text, status text, native_status text, source text, applied boolean,
        error_code text, detail json, at timestamp
    )) WITH ORDINALITY AS r({", ".join(_EVENT_COLUMNS)}, ord)
    ORDER BY r.ord
    """
)


def lock_messages(
    session: Session, ids: set[str], provider: str, provider_ids: set[str]
) -> dict[str, dict[str, Any]]:
    """The messages with these ids or this provider's ids, locked until commit (in id order, so
    two appliers lock in the same order), as attribute dicts with `_listen_url`: where
    their events go, if anyone listens."""
    if not ids and not provider_ids:
        return {}
    rows = _LOCK.dicts(
        session, {"ids": sorted(ids), "provider": provider, "provider_ids": sorted(provider_ids)}
    )
    for row in rows:
        for name in _TIMES:
            row[name] = aware_utc(row[name])
    return {row["id"]: row for row in rows}


def _full_rows(session: Session, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every column of these messages (as attributes), for the events owed on them."""
    rows = session.connection().execute(select(_table).where(_table.c.id.in_(ids)))
    return {row["id"]: {_COLUMNS.get(k, k): v for k, v in row.items()} for row in rows.mappings()}


def apply_statuses(
    session: Session, changes: list[StatusChange], messages: dict[str, dict[str, Any]]
) -> int:
    """Apply `changes` in order to `messages` (locked by `lock_messages` in this
    transaction): forward only, as `apply_status` does one at a time. A provider id is
    copied only if no other message holds it (noted as `provider_id_conflict`). Sets each
    change's `applied`; returns how many applied."""
    holders = {
        (m["provider"], m["provider_message_id"]): m["id"]
        for m in messages.values()
        if m["provider_message_id"]
    }
    dirty: dict[str, str] = {}  # message id -> its status when locked
    events: list[dict[str, Any]] = []
    owed: list[tuple[str, dict[str, Any]]] = []
    late: list[tuple[str, str, str | None]] = []  # (id, status, native): after a fallback
    now = utcnow()
    for change in changes:
        m = messages[change.message_id]
        pid = change.provider_message_id
        if pid and m["provider_message_id"] != pid:
            holder = holders.get((m["provider"], pid))
            if holder is not None and holder != m["id"]:
                change.detail = {**(change.detail or {}), "provider_id_conflict": True}
                pid = None
        was, new, at = m["status"], change.new, change.at
        change.applied = was in _ALLOWED.get(new, ())
        touched = change.applied or bool(pid or change.price is not None or change.from_number)
        if change.applied:
            m["status"] = new
            if new == "sent":
                m["sent_at"] = m["sent_at"] or at
            if new in ("delivered", "read"):
                m["delivered_at"] = m["delivered_at"] or at
                m["sent_at"] = m["sent_at"] or at
            if new == "read":
                m["read_at"] = at
            if new in TERMINAL - {"canceled"}:
                m["error_code"] = change.error_code or new
                m["error_message"] = change.error_message
                m["provider_error_code"] = change.provider_code
            if new in TERMINAL or RANK.get(new, 0) >= RANK["sent"]:
                m["lease_until"] = None
        if pid and not m["provider_message_id"]:
            m["provider_message_id"] = pid
            holders[(m["provider"], pid)] = m["id"]
        if change.price is not None:
            m["price"], m["price_unit"] = change.price, change.price_unit
        if change.from_number and not m["from_number"]:
            m["from_number"] = change.from_number
        if touched:
            m["updated_at"] = now
            dirty.setdefault(m["id"], was)
        events.append(
            {
                "message_id": m["id"],
                "status": new,
                "native_status": change.native_status,
                "source": change.source,
                "applied": change.applied,
                "error_code": change.provider_code or change.error_code,
                "detail": change.detail,
                "at": at,
            }
        )
        if change.applied and m["_listen_url"]:
            owed.append((m["_listen_url"], {n: m[n] for n in ("id", *_WRITTEN)}))
        elif not change.applied and new in LATE and m["failover_id"] and m["_listen_url"]:
            late.append((m["id"], new, change.native_status))
    if dirty:
        rows = [
            {"b_id": mid, "b_was": was, **{n: messages[mid][n] for n in _WRITTEN}}
            for mid, was in dirty.items()
        ]
        _UPDATE.execute(session, {"rows": json_rows(rows)})
    if events:
        _EVENTS.execute(session, {"rows": json_rows(events)})
    full = _full_rows(session, list({s["id"] for _, s in owed})) if owed else {}
    for url, written in owed:
        snapshot = {**full[written["id"]], **written}  # the message as this change left it
        session.add(
            EventDelivery(
                message_id=snapshot["id"],
                tenant_id=snapshot["tenant_id"],
                url=url,
                payload={"type": "message.status", "message": _to_dict(snapshot)},
            )
        )
    if owed:
        enqueue_after_commit(
            session, list(dict.fromkeys(s["id"] for _, s in owed)), EVENTS_QUEUE, EVENTS_TASK
        )
    for message_id, new, native in late:
        report_late_status(session, [message_id], new, native)
    return sum(1 for c in changes if c.applied)


# A delivery reported after the message's SMS fallback left (services/messages/failover.py).
LATE = frozenset({"delivered", "read"})


def report_late_status(
    session: Session, message_ids: list[str], status: str, native_status: str | None
) -> None:
    """Tell the tenant (`message.late_status`) that a message whose fallback already left
    reports `delivered` or `read` after all: the status machine kept it as an event and
    moved nothing (the original stays `failed`), so this is the only word of it."""
    from services.messages.serialize import message_to_dict

    for message_id in message_ids:
        message = session.get(Message, message_id)
        if message is None or not message.failover_id:
            continue
        session.refresh(message)
        record_event(
            session,
            message,
            {
                "type": "message.late_status",
                "message": message_to_dict(message, events=False),
                "status": status,
                "native_status": native_status,
            },
        )


def _to_dict(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The event payload of the message as it was after one change (a transient copy)."""
    from services.messages.serialize import message_to_dict

    return message_to_dict(Message(**snapshot), events=False)
