"""How messages get in: one code path for `POST /v1/messages`, `POST /v1/messages/batch`,
the seeds' routes and the `herald.send_message` task.

A message goes in two steps. `prepare` does what needs no database (the tenant, the
idempotency key, the provider and its cached account) in the caller's thread. `store`
then takes any number of prepared items, of any tenants, and does the rest with a
fixed number of statements whatever their count: the contact lookups (opt-out, 24 h
window) in one SELECT per tenant, the messages and their `queued` events in one
statement (`INSERT … ON CONFLICT (tenant, origin, key) DO NOTHING RETURNING id`, the
events made from what it returned), the replays and conflicts in one SELECT, the quota
in one Redis call per tenant. Every item gets its own outcome (created, replay, or an
error), so one refused item never sinks another.

Concurrent requests share that work and its COMMIT through group_commit.py; a batch
request goes through batch.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict, Unpack

from sqlalchemy import String, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, selectinload

from core.config import get_settings
from core.errors import (
    Conflict,
    Forbidden,
    HeraldError,
    InvalidRequest,
    NotFound,
    PolicyRefused,
    RateLimited,
)
from core.logs import mask
from models import Message, MessageEvent, Tenant, new_id, utcnow
from models.fast import Statement, json_rows, naive_utc
from services.content.conversations import accept_options
from services.content.inputs import text_problem
from services.content.phones import is_bsuid
from services.content.schemas import provider_problems
from services.content.segments import fit
from services.content.templates import refuse_unusable_template
from services.messages.dispatch import enqueue_after_commit
from services.messages.expiry import expires_at_for
from services.messages.failover_policy import (
    check_failover_possible,
    failover_at_for,
    with_tenant_policy,
)
from services.messages.serialize import message_to_dict, new_message_to_dict
from services.policy import limits
from services.policy.consent import policy_contacts, policy_refusal
from services.policy.contacts import get_contact
from services.policy.destinations import (
    check_sms_destination,
    international_cap,
    international_refusal,
)
from services.tenancy.senders import pick_sender, sender_provider
from services.tenancy.tenants import cached_account

log = logging.getLogger(__name__)

SEND_QUEUE = "herald.send"
BULK_QUEUE = "herald.bulk"
MAX_KEY_LENGTH = 255


# The messages of a group as one statement of fixed text, whatever their number (a
# multi-row VALUES list is a new text for each count, which the driver re-parses each
# time: 20 % of a 500-message batch's CPU). The rows go as one JSON document, read by
# json_to_recordset: one parameter to adapt, not an array per column (adapting 21
# arrays was most of the driver's CPU for a single message). Two requests racing with
# one key: the second's row is skipped, not an error, and the SELECT that follows
# finds the first (committed, or ours in this transaction).
_VARYING = (  # (column, SQL type as read from the JSON document)
    ("id", "varchar"),
    ("tenant_id", "varchar"),
    ("channel", "varchar"),
    ("provider", "varchar"),
    ("provider_account_id", "varchar"),
    ("to_number", "varchar"),
    ("wa_user_id", "varchar"),
    ("contact_id", "varchar"),
    ("body", "text"),
    ("media_urls", "json"),
    ("template", "json"),
    ("options", "json"),
    ("status", "varchar"),
    ("campaign_id", "varchar"),
    ("metadata", "json"),
    ("callback_url", "text"),
    ("idempotency_key", "varchar"),
    ("origin", "varchar"),
    ("request_hash", "varchar"),
    ("send_at", "timestamp"),
    ("from_number", "varchar"),
    ("expires_at", "timestamp"),
    ("test", "boolean"),
    ("failover_pending", "boolean"),
    ("failover_at", "timestamp"),
    ("failover_of", "varchar"),
    ("error_code", "varchar"),
    ("error_message", "text"),
)
_NAMES = tuple(name for name, _ in _VARYING)
# The messages and their `queued`/`scheduled` events in one statement (one round
# trip): the events are made from the rows the INSERT returns, so a row skipped on a
# key gets none. PostgreSQL checks the events' foreign key at the end of the
# statement, when the messages are in.
_INSERT_MESSAGES = Statement(
    "WITH m AS (INSERT INTO messages ("
    + ", ".join(f'"{name}"' for name in _NAMES)
    + ", direction, attempts, created_at, updated_at) SELECT "
    + ", ".join(f't."{name}"' for name in _NAMES)
    + ", 'outbound', 0, CAST(:now AS timestamp), CAST(:now AS timestamp)"
    + " FROM json_to_recordset(CAST(:rows AS json)) AS t("
    + ", ".join(f'"{name}" {kind}' for name, kind in _VARYING)
    + ") ON CONFLICT ON CONSTRAINT uq_messages_idempotency DO NOTHING RETURNING id, status),"
    + " e AS (INSERT INTO message_events (message_id, status, source, applied, at)"
    + " SELECT id, status, 'api', true, CAST(:now AS timestamp) FROM m)"
    + " SELECT id FROM m"
)
_DELETE_REFUSED = (
    Statement("DELETE FROM message_events WHERE message_id = ANY(CAST(:ids AS varchar[]))"),
    Statement("DELETE FROM messages WHERE id = ANY(CAST(:ids AS varchar[]))"),
)


def _insert_messages(session: Session, rows: list[dict[str, Any]], now: datetime) -> set[str]:
    """Insert `rows` (messages' values), each with its first event, in one statement;
    the ids that went in. Run on the session's psycopg connection (models/fast.py):
    SQLAlchemy's per-statement work cost more CPU than PostgreSQL spent on the insert.
    Pending ORM changes go first, as SQLAlchemy's autoflush would send them."""
    session.flush()
    records = [{name: row[name] for name in _NAMES} for row in rows]
    params = {"now": naive_utc(now), "rows": json_rows(records)}
    return set(_INSERT_MESSAGES.scalars(session, params))


def request_hash(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key: str) -> None:
    """An idempotency key Herald can store, else a 400."""
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"Idempotency-Key is at most {MAX_KEY_LENGTH} characters.")
    problem = text_problem(key)
    if problem:
        raise InvalidRequest(f"Idempotency-Key {problem}.")


@dataclass(eq=False)
class Item:
    """One message on its way in, and then its outcome."""

    tenant: Tenant
    data: dict[str, Any]
    key: str | None
    digest: str | None
    origin: str = "api"
    campaign_id: str | None = None
    provider: str | None = None
    account_id: str | None = None
    refusal: HeraldError | None = None  # known before the database was asked
    sender: Any = None  # the sender chosen (services/tenancy/senders.py); None: the account's own
    options: dict[str, Any] = field(default_factory=dict)  # resolved in `prepare` (media)
    log_each: bool = True  # a line per message; a batch logs one line for all
    international: bool = False  # an SMS abroad: counts against its own cap (destinations)
    test: bool = False  # a test key's: sent to the simulator (services/messages/simulation.py)
    failover_of: str | None = None  # a fallback: the message it stands in for (failover.py)
    # The outcome, set by `store`:
    created: bool = False
    values: dict[str, Any] | None = None  # the inserted row (created)
    event: dict[str, Any] | None = None
    found: Message | None = None  # the first message (replay)
    error: HeraldError | None = None
    follows: Item | None = field(default=None, repr=False)
    _answer: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def status(self) -> int:
        if self.error is not None:
            return self.error.status
        return 202 if self.created else 200

    def answer(self) -> dict[str, Any]:
        """The message as the API shows it (created: from the inserted values)."""
        if self._answer is None:
            if self.created:
                assert self.values is not None and self.event is not None
                self._answer = new_message_to_dict(self.values, self.event)
            else:
                assert self.found is not None
                self._answer = message_to_dict(self.found)
        return self._answer

    def message(self) -> Message:
        """The outcome as a Message (the seeds' routes and the task want one)."""
        if self.error is not None:
            raise self.error
        if self.found is not None:
            return self.found
        assert self.values is not None and self.event is not None
        values = dict(self.values)
        values["meta"] = values.pop("metadata")
        message = Message(**values)
        message.events = [MessageEvent(**self.event)]
        return message


def choose_provider(tenant: Tenant, channel: str, requested: str | None) -> str:
    if requested:
        return requested
    default = (
        tenant.default_whatsapp_provider if channel == "whatsapp" else tenant.default_sms_provider
    )
    if not default:
        raise PolicyRefused(
            f"No provider is configured for {channel} on this tenant.",
            code="provider_not_configured",
        )
    return default


class AcceptOptions(TypedDict, total=False):
    """What a caller may say of one message besides its request: `prepare`'s keywords
    (their defaults are there)."""

    idempotency_key: str | None
    raw: Any
    campaign_id: str | None
    origin: str
    test: bool


def prepare(
    session: Session,
    tenant: Tenant,
    data: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    raw: Any = None,
    digest: str | None = None,
    campaign_id: str | None = None,
    origin: str = "api",
    test: bool = False,
) -> Item:
    """What can be decided before the database: a disabled tenant or a bad key raise
    (as before any replay); a provider refusal is kept on the item, since a replay of
    the key's first message still wins over it. Reads the session only on a cache miss.
    `test`: a test key's message, checked as a live one is, then sent to the simulator."""
    if tenant.disabled_at is not None:  # the task and the seeds' routes carry no key to refuse
        raise Forbidden("This tenant is disabled.", code="tenant_disabled")
    if idempotency_key:
        check_key(idempotency_key)
        if digest is None:
            digest = request_hash(raw if raw is not None else data)
        if test:  # one key space, two modes: a key used in the other mode is a 409
            digest = hashlib.sha256(f"test:{digest}".encode()).hexdigest()
    else:
        idempotency_key, digest = None, None
    item = Item(tenant, data, idempotency_key, digest, origin, campaign_id, test=test)
    try:
        channel = data.get("channel", "whatsapp")
        # `from` (or the tenant's default sender) picks the sender, and so the provider.
        sender = pick_sender(session, tenant, channel, data)
        item.provider = provider = sender_provider(
            session, tenant, channel, data, sender
        ) or choose_provider(tenant, channel, data.get("provider"))
        errors = provider_problems(data, provider)
        if errors:
            raise InvalidRequest(
                f"The request does not suit provider {provider}.",
                code="invalid_fields",
                fields=errors,
            )
        if channel == "sms" and data.get("body"):  # smart encoding, the segment cap
            data["body"], swapped = fit(
                data["body"], smart=tenant.smart_encoding is not False, cap=tenant.sms_max_segments
            )
            if swapped:
                item.options["smart_encoded"] = swapped
        account = cached_account(session, tenant.id, provider)
        if account is None:
            raise PolicyRefused(
                f"This tenant has no {provider} account.", code="provider_not_configured"
            )
        item.account_id = sender.account_id if sender is not None else account.id
        if data.get("media_id"):  # uploaded media: resolved now, refused now
            from services.content.media import resolve_media_id

            item.options.update(
                resolve_media_id(session, tenant.id, data, item.account_id, data.get("send_at"))
            )
        if data.get("template"):  # unknown, unapproved, other language, wrong variables
            refuse_unusable_template(  # a media_id is the header's parameter
                session, tenant.id, item.account_id, provider, data,
                header_media=item.options.get("media_type"),
            )  # fmt: skip
        with_tenant_policy(session, tenant, data)  # its default, where the request names none
        if data.get("failover") is not None:  # the SMS sender must exist now, not at failure
            check_failover_possible(session, tenant, data)
        if sender is not None:  # kept on the row, so every retry uses the same sender
            item.sender = sender
            item.options["sender"] = sender.snapshot()
    except HeraldError as exc:
        if not idempotency_key:
            raise
        item.refusal = exc
    return item


def store(session: Session, items: list[Item]) -> None:
    """Check, insert and enqueue `items` in `session`'s transaction (the caller commits;
    the enqueue happens after that commit). Each item gets its outcome; an exception
    here is a database fault that concerns the whole transaction."""
    for item in items:
        item.created, item.values, item.event, item.found = False, None, None, None
        item.error, item.follows, item._answer = item.refusal, None, None

    # One key twice in one transaction: the later items follow the first.
    first: dict[tuple[str, str, str], Item] = {}
    for item in items:
        if item.key:
            first_item = first.setdefault((item.tenant.id, item.origin, item.key), item)
            if first_item is not item:
                item.follows = first_item
    live = [i for i in items if i.error is None and i.follows is None]

    recipients: dict[Item, str] = {}
    for item in live:
        if "contact_id" in item.data:
            try:
                contact = get_contact(session, item.tenant.id, item.data["contact_id"])
            except NotFound:
                item.error = PolicyRefused(
                    f"No contact with id {item.data['contact_id']!r}.", code="contact_not_found"
                )
                continue
            # A person known only by BSUID (a username, no phone shared) is reached by it.
            recipients[item] = contact.phone or contact.wa_user_id or ""
            item.data = {**item.data, "_contact": contact.external_id or contact.id}
        else:
            recipients[item] = item.data["to"]
        channel = item.data.get("channel", "whatsapp")
        if channel != "whatsapp" and (is_bsuid(recipients[item]) or not recipients[item]):
            item.error = PolicyRefused(
                "This recipient is known by a WhatsApp business-scoped user id only, "
                f"which reaches WhatsApp, not {channel}: give a phone number.",
                code="whatsapp_only_recipient",
            )
        elif item.provider != "meta" and is_bsuid(recipients[item]):
            # Twilio addresses WhatsApp users by number only (sandbox: 21211, as Twilio).
            item.error = PolicyRefused(
                "A WhatsApp business-scoped user id is reached through Meta's Cloud API "
                f"only, not {item.provider}: send with provider meta or give a phone number.",
                code="whatsapp_only_recipient",
            )
    live = [i for i in live if i.error is None]

    now = utcnow()
    contacts = policy_contacts(session, [(i.tenant.id, recipients[i]) for i in live])
    rows = []
    for item in live:
        data = item.data
        # A keyword's answer (services/callbacks/inbound.py) is the one message an
        # opted-out person may still get: the confirmation of their STOP.
        refusal = (
            None
            if item.origin == "keyword"
            else policy_refusal(
                contacts[(item.tenant.id, recipients[item])],
                channel=data.get("channel", "whatsapp"),
                free_form=not data.get("template"),
                now=now,
            )
        )
        failed: HeraldError | None = None
        if refusal is not None and refusal.code == "window_closed" and data.get("failover"):
            failed, refusal = refusal, None  # stored `failed`: its SMS fallback follows
        if refusal is not None:
            item.error = refusal
            continue
        if data.get("channel") == "sms":  # the SMS pumping guard
            try:
                item.international = check_sms_destination(session, item.tenant, recipients[item])
            except HeraldError as exc:
                item.error = exc
                continue
        try:  # replies and reactions: their target resolved now (services/content/conversations.py)
            conversation = accept_options(
                session,
                item.tenant.id,
                data,
                to=recipients[item],
                account_id=item.account_id,
                test=item.test,
            )
        except HeraldError as exc:
            item.error = exc
            continue
        item.values = _row(item, recipients[item], now, conversation)
        if failed is not None:  # services/messages/failover.py sends the SMS
            item.values.update(
                status="failed", error_code=failed.code, error_message=failed.message
            )
        rows.append(item.values)

    inserted: set[str] = set()
    if rows:
        inserted = _insert_messages(session, rows, now)
    for item in live:
        if item.values is not None:
            item.created = item.values["id"] in inserted

    _take_quotas(  # a row stored `failed` sends nothing (its fallback takes its own)
        session,
        [
            i
            for i in live
            if i.created and i.campaign_id is None and i.values and i.values["status"] != "failed"
        ],
    )

    # Replays and conflicts: a key whose row was not inserted (here), or an item
    # refused before the insert whose key may name an earlier message.
    lookups = [i for i in items if i.key and i.follows is None and not i.created and _may_replay(i)]
    _replay(session, lookups)

    created = [i for i in items if i.created]
    if created:
        queues: dict[str, list[str]] = {}
        logged = []
        for item in created:
            values = item.values
            assert values is not None
            item.event = {  # inserted with its message
                "message_id": values["id"],
                "status": values["status"],
                "source": "api",
                "applied": True,
                "at": now,
            }
            if values["status"] == "queued":
                queue = BULK_QUEUE if item.campaign_id else SEND_QUEUE
                queues.setdefault(queue, []).append(values["id"])
            if item.log_each:
                logged.append(
                    f"id={values['id']} tenant={item.tenant.id} channel={values['channel']} "
                    f"provider={values['provider']} to={mask(values['to_number'])} "
                    f"status={values['status']}"
                )
        for queue, ids in queues.items():
            enqueue_after_commit(session, ids, queue)
        if logged:  # one line for the messages stored together (a line each cost CPU)
            log.info("message accepted %s", "; ".join(logged))

    for item in items:
        if item.follows is not None:
            _follow(item, item.follows)


def _may_replay(item: Item) -> bool:
    # Not for a quota refusal: its row was inserted and taken back.
    return not isinstance(item.error, RateLimited)


def _row(item: Item, to: str, now: datetime, conversation: dict[str, Any]) -> dict[str, Any]:
    data = item.data
    send_at = data.get("send_at")
    status = "scheduled" if send_at is not None and send_at > now else "queued"
    options = {
        k: data[k]
        for k in ("preview_url", "interactive", "media_type", "failover")
        if data.get(k) is not None
    }
    options.update(item.options)
    options.update(conversation)
    return {
        "id": new_id("msg"),
        "tenant_id": item.tenant.id,
        "direction": "outbound",
        "channel": data.get("channel", "whatsapp"),
        "provider": item.provider,
        "provider_account_id": item.account_id,
        "to_number": to,
        "wa_user_id": to if is_bsuid(to) else None,  # the BSUID it is addressed to
        "contact_id": data.get("_contact"),
        "body": data.get("body"),
        "media_urls": data.get("media_url"),
        "template": data.get("template"),
        "options": options or None,
        "status": status,
        "campaign_id": item.campaign_id,
        "metadata": data.get("metadata") or {},
        "callback_url": data.get("callback_url"),
        "idempotency_key": item.key,
        "origin": item.origin,
        "request_hash": item.digest,
        "send_at": send_at,
        "from_number": item.sender.number if item.sender is not None else None,
        "expires_at": expires_at_for(data, now),
        "test": item.test,
        "failover_pending": True if data.get("failover") is not None else None,
        "failover_at": failover_at_for(data, now),
        "failover_of": item.failover_of,
        "error_code": None,
        "error_message": None,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


def _replay(session: Session, items: list[Item]) -> None:
    """The first message of each item's key: a replay when the request is the same,
    a Conflict when it is not; no message (yet) keeps the item's own refusal."""
    groups: dict[tuple[str, str], list[Item]] = {}
    for item in items:
        groups.setdefault((item.tenant.id, item.origin), []).append(item)
    for (tenant_id, origin), group in groups.items():
        keys = {"keys": sorted({i.key for i in group})}  # type: ignore[type-var]
        found = {
            m.idempotency_key: m
            for m in session.scalars(
                select(Message)
                .options(selectinload(Message.events))
                .where(
                    Message.tenant_id == tenant_id,
                    Message.origin == origin,
                    Message.idempotency_key == any_(_KEYS),
                ),
                keys,
            )
        }
        for item in group:
            message = found.get(item.key)
            if message is None:
                if item.error is None:  # skipped by a row that is gone again: rare
                    item.error = Conflict(
                        "A request with this Idempotency-Key is in progress; retry.",
                        code="idempotency_conflict",
                    )
                continue
            item.values = None
            if message.request_hash != item.digest:
                item.error = _key_conflict()
            else:
                item.error, item.found = None, message


_KEYS = bindparam("keys", type_=ARRAY(String))


def _key_conflict() -> Conflict:
    return Conflict(
        "This Idempotency-Key was used with a different request.", code="idempotency_conflict"
    )


def _follow(item: Item, leader: Item) -> None:
    """A second item with the first one's key, in the same transaction."""
    if item.digest != leader.digest:
        item.error = _key_conflict()
    elif leader.error is not None:
        item.error = leader.error
    else:  # the same message, answered as a replay
        item.error, item.found, item.values, item.event = None, leader.found, None, None
        item._answer = leader.answer()


def _take_quotas(session: Session, items: list[Item]) -> None:
    """Quota for rows that are in (a skipped insert took none); the rows over it are
    deleted again in this transaction and answered 429."""
    settings = get_settings()
    per_tenant: dict[str, list[Item]] = {}
    for item in items:
        per_tenant.setdefault(item.tenant.id, []).append(item)
    refused: list[str] = []

    def refuse(item: Item, error: HeraldError) -> None:
        item.created = False
        refused.append(item.values["id"])  # type: ignore[index]
        item.values = None
        item.error = error

    for tenant_items in per_tenant.values():
        tenant = tenant_items[0].tenant
        abroad = [i for i in tenant_items if i.international]
        if abroad:  # first their own cap, then the tenant's quota for what is left
            allowed = limits.take_international(tenant.id, international_cap(tenant), len(abroad))
            for item in abroad[allowed:]:
                refuse(item, international_refusal(tenant, limits.seconds_to_day_end()))
        group = [i for i in tenant_items if i.error is None]
        hourly, daily = tenant.hourly_limit, tenant.daily_limit
        hourly = settings.default_hourly_limit if hourly is None else hourly
        daily = settings.default_daily_limit if daily is None else daily
        granted, wait = limits.take_quota(tenant.id, hourly, daily, len(group))
        for item in group[granted:]:
            refuse(
                item,
                RateLimited(
                    f"Rate limit reached ({hourly}/hour, {daily}/day); retry in {wait} s.",
                    headers={"Retry-After": str(wait)},
                ),
            )
    if refused:  # their events went in with them
        for statement in _DELETE_REFUSED:
            statement.execute(session, {"ids": refused})


def accept(
    session: Session, tenant: Tenant, data: dict[str, Any], **options: Unpack[AcceptOptions]
) -> Item:
    """One message in the caller's transaction (the caller commits): the seeds' routes
    and the task. Raises the item's error."""
    item = prepare(session, tenant, data, **options)
    store(session, [item])
    if item.error is not None:
        raise item.error
    return item
