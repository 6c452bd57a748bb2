"""The retention purge: each tenant's content past its retention goes, the counts stay.

Why deletes in id-range batches and not partitions. `messages` carries three unique
constraints Herald's guarantees rest on (idempotency keys, one row per campaign
recipient, one row per provider id: `INSERT … ON CONFLICT` and receipt matching), and
PostgreSQL requires a partitioned table's unique constraints to include the partition
key: partitioning by time would make each of them unique per day only. Its side tables
are read by message id or provider id, never by day, so every read would probe every
day's partition. Instead the purge deletes what the traffic created, in the order it
created it: message ids are time-ordered (core/ids.py), so a tenant's day of messages is
one contiguous range of `ix_messages_tenant_id_id` and of the heap pages written that
day. One DELETE per row is less than the traffic wrote for it (an INSERT and three or
four status UPDATEs, each leaving a dead row version that autovacuum already reclaims),
and the pages it frees are reused by the next days' inserts, so the table stays the
size of its retention window (bench/retention.py measures time, WAL and sizes).

What a row costs is finding it, not deleting it: a batch's messages are deleted by the
row addresses its lock read, its receipts likewise, and its events and deliveries (one
index descent per message, half a purge) by one range scan of the batch's span of
message ids when the tenant wrote at least a quarter of the messages in that span. A
small tenant's span is mostly other tenants' rows, so its batches keep the descents.

Rules:
- A message is purged when its id is older than the tenant's cutoff, with its
  `message_events`, `event_deliveries` (one statement, one transaction per batch).
- Never a message still in flight (`scheduled`, `queued`, `sending`) nor one of a
  campaign still running or paused.
- The rollups keep counting purged messages: the count trigger ignores a DELETE made
  with `herald.retention_purge` set (migration 0019_retention).
- Raw receipts (`webhook_events`: dedup keys and payloads) go by `received_at`, kept at
  least `DEDUP_FLOOR_DAYS`; receipts no tenant claimed (unrouted) at the default.
- A finished campaign's content (body, media, template, options, invalid rows with
  their numbers) is cleared once the campaign is past retention and none of its rows
  still waits to be sent (they read it); its name and counts stay.
- Media uploads past retention whose provider copy has expired are forgotten.
- The webhook inbox's dead letters (failed `MAX_ATTEMPTS` times) go after the floor.
- Contacts are not purged: they hold opt-outs, which must outlive any message.

Every batch is its own short transaction taking row locks only, skipping rows another
transaction holds (`SKIP LOCKED`): sends and callbacks never wait on the purge. One
purge runs at a time (an advisory lock); a run stops after `max_seconds` and the next
run continues where the ranges still hold rows (tenants in a new random order, so a
backlog, such as the first purge after the upgrade, does not starve the last ones).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, text

from core.ids import id_at, utcnow
from services.callbacks.inbox import MAX_ATTEMPTS as INBOX_MAX_ATTEMPTS
from services.lifecycle.retention import DEDUP_FLOOR_DAYS, DEFAULT_DAYS, cutoff, effective_days

log = logging.getLogger(__name__)

BATCH = 5_000
PURGE_LOCK = 0x6865_7261_6C65  # pg advisory lock key: one purge at a time
# Never purged (spelled out in _MESSAGES): a message still to send, a live campaign's.
IN_FLIGHT = ("scheduled", "queued", "sending")
LIVE_CAMPAIGNS = ("running", "paused")

CROWD = 4 * BATCH  # a span holding fewer messages of all tenants is read as a range
# One batch: lock the tenant's next purgeable messages, delete them by their row address
# (`ctid`, fetched by the lock: no index descent per row), then their events and event
# deliveries (of `gone`, not `doomed`: a row updated before the lock was taken is not
# visible to the statement's snapshot and stays, with its events, for the next run).
# {near} finds the events either by a probe of `ix_…_message_id` per message or, when
# the tenant wrote most of the span, by one range scan of it hashed against `gone`
# (a probe per message was half of a purge). `crowd` counts the span's messages of all
# tenants, up to CROWD, for the choice of the next batch.
_MESSAGES = """
    WITH doomed AS (
        SELECT m.id, m.ctid AS tid FROM messages m
        WHERE m.tenant_id = :tenant AND m.id > :after AND m.id < :bound
          AND m.status NOT IN ('scheduled', 'queued', 'sending')
          AND (m.campaign_id IS NULL OR NOT EXISTS (
                SELECT 1 FROM campaigns c
                WHERE c.id = m.campaign_id AND c.status IN ('running', 'paused')))
        ORDER BY m.tenant_id, m.id LIMIT :batch
        FOR UPDATE OF m SKIP LOCKED
    ), gone AS (
        DELETE FROM messages WHERE ctid = ANY(ARRAY(SELECT tid FROM doomed)) RETURNING id
    ), span AS (
        SELECT min(id) AS lo, max(id) AS hi FROM doomed
    ), events AS (
        DELETE FROM message_events WHERE {near} message_id IN (SELECT id FROM gone)
        RETURNING 1
    ), deliveries AS (
        DELETE FROM event_deliveries WHERE {near} message_id IN (SELECT id FROM gone)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM (
            SELECT 1 FROM messages
            WHERE id >= (SELECT lo FROM span) AND id <= (SELECT hi FROM span)
            LIMIT :crowd) AS s) AS crowd,
        (SELECT count(*) FROM gone), (SELECT hi FROM span),
        (SELECT count(*) FROM events), (SELECT count(*) FROM deliveries)
    """
# Each batch's transaction: the count trigger leaves the rollups alone, its commit does
# not wait for the WAL flush (a batch lost to a crash is purged again by the next run:
# nothing else depends on it), and a ranged batch's events are hashed, never probed.
_SETTINGS = text(
    "SELECT set_config('herald.retention_purge', 'on', true),"
    " set_config('synchronous_commit', 'off', true),"
    " set_config('enable_nestloop', :nestloop, true)"
)
_PROBED = text(_MESSAGES.format(near=""))
_RANGED = text(
    _MESSAGES.format(
        near="message_id >= (SELECT lo FROM span) AND message_id <= (SELECT hi FROM span) AND"
    )
)
# Each read by ix_webhook_events_tenant_received (a tenant's, then the unrouted); the
# rows then by their address (`ctid = ANY(ARRAY(…))`, a TID scan: an `IN (subquery)` is
# planned as a hash join over the whole table, once per batch, and a primary-key probe
# per row was a third of the receipts' time). A receipt updated meanwhile (an erasure's
# redaction) is deleted in its new version or, where PostgreSQL rechecks the address,
# left for the next run.
_RECEIPTS = text(
    """
    DELETE FROM webhook_events WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM webhook_events WHERE tenant_id = :tenant AND received_at < :before
        ORDER BY received_at LIMIT :batch))
    """
)
_UNROUTED = text(
    """
    DELETE FROM webhook_events WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM webhook_events WHERE tenant_id IS NULL AND received_at < :before
        ORDER BY received_at LIMIT :batch))
    """
)
_CAMPAIGNS = text(
    """
    UPDATE campaigns SET body = NULL, media_urls = NULL, template = NULL, options = NULL,
        invalid_rows = NULL
    WHERE tenant_id = :tenant AND status IN ('completed', 'canceled')
      AND updated_at < :before
      AND NOT EXISTS (
            SELECT 1 FROM messages m WHERE m.campaign_id = campaigns.id
              AND m.status IN ('scheduled', 'queued', 'sending'))
      AND (body IS NOT NULL OR media_urls IS NOT NULL OR template IS NOT NULL
           OR options IS NOT NULL OR invalid_rows IS NOT NULL)
    """
)
_MEDIA = text(
    """
    DELETE FROM media WHERE tenant_id = :tenant AND id < :bound AND expires_at < :now
    """
)
_INBOX = text(
    """
    DELETE FROM webhook_inbox WHERE id = ANY(ARRAY(
        SELECT id FROM webhook_inbox
        WHERE attempts >= :max AND received_at < :before ORDER BY id LIMIT :batch))
    """
)


@dataclass
class Purged:
    """What one purge removed (rows), and whether it stopped before finishing."""

    messages: int = 0
    events: int = 0
    deliveries: int = 0
    receipts: int = 0
    campaigns: int = 0
    media: int = 0
    inbox: int = 0
    unfinished: bool = False
    tenants: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "messages": self.messages,
            "events": self.events,
            "deliveries": self.deliveries,
            "receipts": self.receipts,
            "campaigns": self.campaigns,
            "media": self.media,
            "inbox": self.inbox,
            "unfinished": self.unfinished,
        }


def _batches(conn: Connection, statement: object, params: dict[str, object], stop: float) -> int:
    """Run a bounded DELETE until it removes less than a batch (or time is up)."""
    total = 0
    while True:
        with conn.begin():
            conn.execute(_SETTINGS, {"nestloop": "on"})
            n = conn.execute(statement, {**params, "batch": BATCH}).rowcount  # type: ignore[arg-type]
        total += n
        if n < BATCH or time.monotonic() > stop:
            return total


def purge_tenant(
    conn: Connection, tenant_id: str, days: int, now: datetime, stop: float, out: Purged
) -> None:
    """One tenant's content older than `days`: messages (batch by batch, in id order),
    raw receipts, finished campaigns' content, expired media."""
    before = cutoff(days, now)
    bound = id_at("msg", before)
    after = ""
    ranged = False  # the first batch probes; each next one follows its span's crowd
    while time.monotonic() <= stop:
        with conn.begin():
            # `ranged`: the range scan hashed against `gone`, never a probe per row.
            conn.execute(_SETTINGS, {"nestloop": "off" if ranged else "on"})
            crowd, gone, last, events, deliveries = conn.execute(
                _RANGED if ranged else _PROBED,
                {
                    "tenant": tenant_id,
                    "after": after,
                    "bound": bound,
                    "batch": BATCH,
                    "crowd": CROWD,
                },
            ).one()
        out.messages += gone
        out.events += events
        out.deliveries += deliveries
        out.tenants[tenant_id] = out.tenants.get(tenant_id, 0) + gone
        if last is None:
            break
        after = last
        ranged = crowd < CROWD
    else:
        out.unfinished = True
        return
    receipts_before = min(before, now - timedelta(days=DEDUP_FLOOR_DAYS))
    out.receipts += _batches(
        conn, _RECEIPTS, {"tenant": tenant_id, "before": receipts_before}, stop
    )
    with conn.begin():
        out.campaigns += conn.execute(_CAMPAIGNS, {"tenant": tenant_id, "before": before}).rowcount
        out.media += conn.execute(
            _MEDIA, {"tenant": tenant_id, "bound": id_at("med", before), "now": now}
        ).rowcount


def purge(conn: Connection, now: datetime | None = None, max_seconds: float = 300.0) -> Purged:
    """Purge every tenant past its retention (disabled tenants too), then what belongs to
    no tenant. `conn` is used for many short transactions (none may be open)."""
    now = now or utcnow()
    stop = time.monotonic() + max_seconds
    out = Purged()
    with conn.begin():
        if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": PURGE_LOCK}).scalar():
            out.unfinished = True
            return out  # another purge is running
    try:
        with conn.begin():
            tenants = list(conn.execute(text("SELECT id, retention_days FROM tenants")).all())
        random.shuffle(tenants)  # a run cut short by time leaves different tenants each hour
        for tenant_id, setting in tenants:
            purge_tenant(conn, tenant_id, effective_days(setting), now, stop, out)
            if out.unfinished:
                break
        if not out.unfinished:
            floor = now - timedelta(days=max(DEDUP_FLOOR_DAYS, DEFAULT_DAYS))
            out.receipts += _batches(conn, _UNROUTED, {"before": floor}, stop)
            dead = now - timedelta(days=DEDUP_FLOOR_DAYS)
            out.inbox += _batches(conn, _INBOX, {"max": INBOX_MAX_ATTEMPTS, "before": dead}, stop)
    finally:
        with conn.begin():
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PURGE_LOCK})
    if out.messages or out.receipts:
        log.info("retention purge %s", out.as_dict())
    return out


def purge_all(max_seconds: float = 300.0) -> dict[str, object]:
    """The beat task: one bounded purge on its own connection."""
    from models import get_engine

    with get_engine().connect() as conn:
        return purge(conn, max_seconds=max_seconds).as_dict()
