"""Campaigns: many messages, released by beat in throttled batches.

Creation writes every recipient as a `scheduled` message row, in chunks of one
INSERT each (the chunk's columns as arrays) that skips a repeated recipient through
the unique (campaign, to) constraint, so memory stays flat however long the list or
CSV is. The content (body, media, template) is stored once, on the campaign; a row
carries only what differs per recipient (services/messages/campaign_content.py), so a
large template costs the database its size once, not once per recipient. At most
`HERALD_CAMPAIGN_MAX_RECIPIENTS` rows are read.

Campaign messages count against the tenant's daily quota (the one its API messages
count against): a campaign with more recipients than the day has left is refused at
creation, and each release takes its batch from the quota; a release the quota cannot
cover whole sends what it covers and pauses the campaign (`pause_reason`
'daily_quota') until the UTC day is over, when it resumes by itself.

Every second beat runs `release_due_campaigns`: each running campaign earns `rate`
messages per second of allowance (at most two seconds' worth banked), moves
that many rows to `queued`, and enqueues them in batches on the bulk queue,
where one task sends its batch concurrently. Pause stops the releases, resume
restarts them, cancel cancels every message not yet being sent.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema
from sqlalchemy import (
    JSON,
    String,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from core.config import get_settings
from core.errors import Conflict, InvalidRequest, NotFound, PolicyRefused, RateLimited
from core.ids import iso
from core.shapes import Shape, shape
from models import (
    Campaign,
    Contact,
    Message,
    MessageEvent,
    Suppression,
    Tenant,
    new_id,
    utcnow,
)
from services.content.inputs import StrictFloat, cursor_field, send_at_problem, text_problem
from services.content.phones import (
    is_bsuid,
    looks_like_bsuid,
    normalize_e164,
    parse_bsuid,
    whatsapp_forms,
)
from services.content.prices import estimate_cost
from services.content.schemas import (
    CHANNELS,
    PROVIDERS,
    TEMPLATE_VARIABLES,
    MediaUrls,
    TemplateSchema,
    check_for_provider,
    load_object,
    variables_problem,
)
from services.content.segments import fit, measure
from services.content.templates import (
    campaign_row_problem,
    refuse_unusable_header,
    refuse_unusable_template,
)
from services.messages.campaign_content import recipient_template
from services.messages.claim import opted_out_rows
from services.messages.dispatch import BATCH_TASK, enqueue_after_commit
from services.messages.service import BULK_QUEUE, choose_provider
from services.policy import limits, quiet_hours
from services.policy.destinations import (
    allowed_countries,
    country_of,
    home_countries,
    international_cap,
    international_refusal,
)
from services.privacy.suppression import hashes_of
from services.reporting.events import record_status_event
from services.reporting.rollups import campaign_status_counts, campaigns_status_counts
from services.tenancy.owned import get_owned
from services.tenancy.senders import (
    MAX_POOL,
    ChosenSender,
    apply_pool,
    campaign_pool,
    sender_provider,
)
from services.tenancy.tenants import find_account

log = logging.getLogger(__name__)

BATCH_SIZE = 50
CHUNK = 1000
MAX_INVALID_ROWS_KEPT = 1000
FINAL = ("sent", "delivered", "read", "failed", "undelivered", "canceled")  # sending is over
# What no later callback changes: a campaign's `progress` is the share of its messages
# here. `sent` is not (a delivery receipt or a failure may follow); a message the
# campaign's own cancel stopped is not an outcome either, so a canceled campaign shows
# how much of it went out, not 100 %.
OUTCOMES = ("delivered", "read", "failed", "undelivered")
SETTLED = (*OUTCOMES, "canceled")
PAGE_LIMIT = 200  # GET /v1/campaigns: at most this many a page
COUNTED = ("scheduled", "queued", "sending", *FINAL)  # a campaign's `counts`, with skipped
CAMPAIGN_STATUSES = ("running", "paused", "canceled", "completed")
QUOTA_PAUSE = "daily_quota"  # a campaign's pause_reason when the day's quota ran out


class CampaignSchema(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    channel = fields.String(load_default="whatsapp", validate=validate.OneOf(CHANNELS))
    provider = fields.String(validate=validate.OneOf(PROVIDERS))
    body = fields.String(validate=validate.Length(min=1, max=4096))
    media_url = MediaUrls()
    media_id = fields.String(validate=validate.Length(min=1, max=64))  # a template's header
    template = fields.Nested(TemplateSchema)
    recipients = fields.List(fields.Dict())
    send_at = fields.AwareDateTime()
    rate = StrictFloat(load_default=10.0, validate=validate.Range(min=0.1, max=1000))
    # senders: one sender, or "pool"; `senders`: the pool to spread over
    # (services/tenancy/senders.py)
    from_ = fields.String(data_key="from", validate=validate.Length(min=1, max=64))
    senders = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)),
        validate=validate.Length(min=1, max=MAX_POOL),
    )
    quiet_hours = fields.Nested(quiet_hours.QuietHoursSchema)  # services/policy/quiet_hours.py

    @validates_schema
    def _content(self, data: dict[str, Any], **_: Any) -> None:
        if "from_" in data and "senders" in data:  # senders
            raise ValidationError("Give 'from' or 'senders', not both.", "from")
        if not any(k in data for k in ("body", "media_url", "template")):
            raise ValidationError("Give one of 'body', 'media_url' or 'template'.", "body")
        if data.get("channel") == "sms" and len(data.get("body") or "") > 1600:
            raise ValidationError("At most 1600 characters on sms.", "body")
        if "send_at" in data and (problem := send_at_problem(data["send_at"])):
            raise ValidationError(problem, "send_at")


def load_campaign_request(payload: Any) -> dict[str, Any]:
    return load_object(CampaignSchema(), payload, what="campaign")


def csv_recipients(stream: io.RawIOBase | io.BufferedIOBase) -> Iterator[dict[str, Any]]:
    """Rows of an uploaded CSV, streamed: a `to` or `contact_id` column, and every
    other column, in order, a template variable. A file that is not UTF-8, has a
    field over the csv module's limit or a NUL is refused whole (400 invalid_csv)."""
    reader = csv.reader(io.TextIOWrapper(stream, encoding="utf-8-sig", newline=""))
    try:
        yield from _csv_rows(reader)
    except UnicodeDecodeError:
        raise InvalidRequest(
            f"The CSV is not UTF-8 (near line {reader.line_num + 1}).", code="invalid_csv"
        ) from None
    except csv.Error as exc:
        raise InvalidRequest(
            f"The CSV cannot be read at line {reader.line_num}: {exc}.", code="invalid_csv"
        ) from None


def _csv_rows(reader: Any) -> Iterator[dict[str, Any]]:
    header = [h.strip().lower() for h in next(reader, [])]
    if "to" not in header and "contact_id" not in header:
        raise InvalidRequest("The CSV needs a 'to' or 'contact_id' column.", code="invalid_csv")
    variable_columns = [i for i, h in enumerate(header) if h not in ("to", "contact_id")]
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if any(text_problem(cell) for cell in row):
            raise InvalidRequest(
                f"The CSV has a NUL character at line {reader.line_num}.", code="invalid_csv"
            )
        cells = dict(zip(header, row, strict=False))
        item: dict[str, Any] = {k: cells[k].strip() for k in ("to", "contact_id") if cells.get(k)}
        item["variables"] = [row[i].strip() for i in variable_columns if i < len(row)]
        yield item


def too_many_recipients(count: int | None = None) -> InvalidRequest:
    """The 400 for a campaign over `HERALD_CAMPAIGN_MAX_RECIPIENTS` (its count, when known)."""
    cap = get_settings().campaign_max_recipients
    given = f"; this one has {count:,}" if count is not None else ""
    text = f"A campaign lists at most {cap:,} recipients{given}."
    return InvalidRequest(
        text + " Split it into several campaigns.",
        code="too_many_recipients",
        fields={"recipients": [text]},
    )


def no_recipients(text: str, code: str, why: list[str] | None = None) -> InvalidRequest:
    """The 400 for a campaign that would send nothing: no recipients at all, or none
    valid (a campaign created `completed` at once hides the mistake). Recipients who
    opted out are not a mistake: a campaign of only those is created, each `skipped`."""
    return InvalidRequest(text, code=code, fields={"recipients": why or [text]})


def check_recipient_count(count: int) -> None:
    """Refuse a recipient list over the cap before any of it is written."""
    if count > get_settings().campaign_max_recipients:
        raise too_many_recipients(count)


def daily_limit(tenant: Tenant) -> int:
    """The tenant's daily quota (0: unlimited), the setting's default when it sets none."""
    if tenant.daily_limit is not None:
        return tenant.daily_limit
    return get_settings().default_daily_limit


def _check_quota(tenant: Tenant, campaign: Campaign) -> None:
    """Refuse a campaign with more messages than its day's quota has left: 422 when
    it exceeds the daily quota itself, 429 (Retry-After: the day's end) when only
    what is used today is in the way. A campaign sending on a later UTC day has the
    whole of that day's quota. Nothing is taken here: releases take it."""
    daily = daily_limit(tenant)
    if daily <= 0 or not campaign.total:
        return
    later = campaign.send_at is not None and campaign.send_at.date() > utcnow().date()
    left = daily if later else limits.daily_quota_left(tenant.id, daily)
    if left is None or campaign.total <= left:
        return
    text = (
        f"This campaign has {campaign.total:,} messages to send; the tenant's daily quota "
        f"({daily:,} a day) has {left:,} left {'that day' if later else 'today'}."
    )
    if campaign.total > daily:
        raise PolicyRefused(
            text + " Split it over several days.",
            code="quota_exceeded",
            fields={"recipients": [text]},
        )
    wait = limits.seconds_to_day_end()
    raise RateLimited(
        text + f" Retry in {wait} s, when the day's quota starts again.",
        code="quota_exceeded",
        fields={"recipients": [text]},
        headers={"Retry-After": str(wait)},
    )


def create_campaign(
    session: Session,
    tenant: Tenant,
    data: dict[str, Any],
    recipients: Iterable[Any],
    test: bool = False,
) -> Campaign:
    """Write the campaign and a `scheduled` row per recipient in the caller's
    transaction; raises (the caller rolls back) over the recipient cap or the quota.
    `test`: a test key's campaign, whose rows are test messages (the simulator's)."""
    channel = data["channel"]
    pool = campaign_pool(session, tenant, channel, data)  # senders: who sends it
    provider = (
        pool[0].provider if pool else sender_provider(session, tenant, channel, data, None)
    ) or choose_provider(tenant, channel, data.get("provider"))
    check_for_provider(data, provider)  # the same rules as POST /v1/messages
    template = data.get("template")
    if channel == "whatsapp" and not template:
        raise PolicyRefused(
            "A WhatsApp campaign must use a template: free text reaches only users who wrote "
            "in the last 24 hours.",
            code="window_closed",
        )
    account = find_account(session, tenant.id, provider)
    if account is None:
        raise PolicyRefused(
            f"This tenant has no {provider} account.", code="provider_not_configured"
        )
    options = None
    if data.get("media_id"):  # uploaded media as the template's header (services/content/media.py)
        from services.content.media import resolve_media_id

        options = resolve_media_id(session, tenant.id, data, account.id, data.get("send_at"))
    if channel == "sms" and data.get("body"):  # smart encoding, the segment cap: once for all
        data["body"], swapped = fit(
            data["body"], smart=tenant.smart_encoding is not False, cap=tenant.sms_max_segments
        )
        if swapped:  # carried to each message with the content
            options = {**(options or {}), "smart_encoded": swapped}
    # Name, approval, language and the header now (a media_id fills an image, video or
    # document header; a template without one refuses it); each recipient's variables
    # per row (_add_chunk), where the header counts too.
    refuse_unusable_template(session, tenant.id, account.id, provider, data, count_variables=False)
    if options and data.get("template"):
        refuse_unusable_header(session, tenant.id, account.id, provider, data, options)
    campaign = Campaign(
        tenant_id=tenant.id,
        options=options,
        name=data["name"],
        channel=channel,
        provider=provider,
        body=data.get("body"),
        media_urls=data.get("media_url"),
        template=template,
        status="running",
        rate=Decimal(str(data["rate"])),
        send_at=data.get("send_at"),
        allowance=Decimal(0),
        invalid_rows=[],
        quiet_hours=quiet_hours.option(data),
        shared_content=True,  # its rows carry only what differs per recipient
        test=test,
    )
    session.add(campaign)
    session.flush()
    invalid_rows: list[dict[str, Any]] = []
    chunk: list[tuple[int, Any]] = []
    cap = get_settings().campaign_max_recipients
    guard = SmsGuard.of(session, tenant) if channel == "sms" else None
    # Erased people who had opted out are known by keyed hashes only: hashing every
    # recipient is paid only by a tenant that has any.
    suppressed = (
        session.scalar(
            select(Suppression.tenant_id).where(Suppression.tenant_id == tenant.id).limit(1)
        )
        is not None
    )
    number = 0
    with _ChunkWriter(session) as writer:

        def add(chunk: list[tuple[int, Any]]) -> None:
            _add_chunk(
                session, campaign, account.id, chunk, invalid_rows, writer, pool, guard, suppressed
            )

        for number, item in enumerate(recipients, 1):
            if number > cap:  # a CSV is streamed: its length is known only by reading it
                raise too_many_recipients()
            chunk.append((number, item))
            if len(chunk) >= CHUNK:
                add(chunk)
                chunk = []
        if chunk:
            add(chunk)
    if number == 0:
        raise no_recipients("A campaign needs at least one recipient.", "no_recipients")
    if guard is not None and guard.abroad:  # the international cap, taken now for all
        granted = limits.take_international(tenant.id, international_cap(tenant), guard.abroad)
        if granted < guard.abroad:
            raise international_refusal(tenant, limits.seconds_to_day_end())
    campaign.invalid_rows = invalid_rows
    inserted = session.scalar(select(func.count()).where(Message.campaign_id == campaign.id)) or 0
    if not inserted and campaign.invalid and not campaign.skipped:
        raise no_recipients(
            f"None of the campaign's {campaign.invalid:,} recipients can be sent to.",
            "no_valid_recipients",
            [f"row {r['row']}: {r['error']}" for r in invalid_rows[:10]],
        )
    campaign.duplicates += campaign.total - inserted  # repeats the unique constraint dropped
    campaign.total = inserted
    if guard is not None and campaign.body:  # SMS: segments times each country's price
        segments = measure(campaign.body).segments
        campaign.estimated_cost = estimate_cost(tenant.sms_prices, segments, guard.countries)
    _check_quota(tenant, campaign)
    log.info(
        "campaign created id=%s tenant=%s total=%d skipped=%d invalid=%d duplicates=%d",
        campaign.id,
        tenant.id,
        campaign.total,
        campaign.skipped,
        campaign.invalid,
        campaign.duplicates,
    )
    return campaign


@dataclass
class SmsGuard:
    """The SMS pumping guard for one campaign (services/policy/destinations.py): the
    countries it may text, its home ones, and how many of its rows go abroad."""

    allowed: frozenset[str] | None
    home: frozenset[str]
    abroad: int = 0
    # Recipients per country, each number once (the cost estimate: content/prices.py).
    countries: Counter[str | None] = field(default_factory=Counter)
    _seen: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, session: Session, tenant: Tenant) -> SmsGuard:
        home = home_countries(session, tenant)
        return cls(allowed_countries(session, tenant, home), home)

    def problem(self, phone: str) -> str | None:
        country = country_of(phone)
        if self.allowed is not None and country not in self.allowed:
            return f"country_not_allowed: {country or 'unknown'}"
        return None

    def count(self, phone: str) -> None:
        country = country_of(phone)  # kept from the row's validation: no second parse
        if country not in self.home:
            self.abroad += 1
        if phone not in self._seen:  # a repeat across chunks is dropped at insert
            self._seen.add(phone)
            self.countries[country] += 1


def _add_chunk(
    session: Session,
    campaign: Campaign,
    account_id: str,
    chunk: list[tuple[int, Any]],
    invalid_rows: list[dict[str, Any]],
    writer: _ChunkWriter,
    pool: list[ChosenSender] | None = None,
    guard: SmsGuard | None = None,
    suppressed: bool = False,
) -> None:
    contact_ids = [
        i.get("contact_id") for _, i in chunk if isinstance(i, dict) and i.get("contact_id")
    ]
    by_contact: dict[str, Contact] = {}
    if contact_ids:
        for contact in session.scalars(
            select(Contact).where(
                Contact.tenant_id == campaign.tenant_id,
                Contact.external_id.in_(contact_ids) | Contact.id.in_(contact_ids),
            )
        ):
            by_contact[contact.external_id or contact.id] = contact
            by_contact[contact.id] = contact
    valid: dict[str, tuple[str | None, list[str]]] = {}
    for number, item in chunk:
        error, phone, contact_id, variables = _recipient(item, by_contact)
        if not error and campaign.channel != "whatsapp" and is_bsuid(phone):
            error = "whatsapp_only_recipient: a business-scoped user id reaches WhatsApp only"
        elif not error and campaign.provider != "meta" and is_bsuid(phone):
            error = "whatsapp_only_recipient: a business-scoped user id is reached via Meta only"
        if not error and variables and campaign.template:
            # Known per recipient only: the row fails here, the campaign goes on.
            filled = {**campaign.template, "variables": variables}
            error = variables_problem(campaign.channel, filled)
            if not error and any(len(v) > 1024 for v in variables):  # as TemplateSchema's
                error = "a variable is at most 1024 characters"
        if not error:
            error = campaign_row_problem(session, campaign, account_id, variables)
        if not error and guard is not None:
            error = guard.problem(phone)
        if error:
            campaign.invalid += 1
            if len(invalid_rows) < MAX_INVALID_ROWS_KEPT:
                invalid_rows.append({"row": number, "error": error})
            continue
        if phone in valid:
            campaign.duplicates += 1
            continue
        valid[phone] = (contact_id, variables)
    if not valid:
        return
    forms = {phone: whatsapp_forms(phone) for phone in valid}
    every = [form for group in forms.values() for form in group]
    stopped: set[str | None] = set()
    hashed = hashes_of(campaign.tenant_id, valid) if suppressed else {}
    # Read through psycopg directly (models/fast.py), past the writer's event: the
    # previous chunk's INSERT is waited for here, where its error belongs.
    writer.settle()
    # The claim's lookup: opted-out contacts, and suppressions (a hash comes back in `phone`).
    for row in opted_out_rows(session, [campaign.tenant_id], every, list(hashed)):
        stopped.update((row.phone, row.wa_id, row.wa_user_id, hashed.get(row.phone)))
    # Whichever WhatsApp form of the number the opted-out contact holds.
    opted_out = {phone for phone, group in forms.items() if stopped.intersection(group)}
    campaign.skipped += len(opted_out)
    now = utcnow()
    rows = []
    for phone, (contact_id, variables) in valid.items():
        if phone in opted_out:
            continue
        if guard is not None:
            guard.count(phone)
        rows.append(
            {
                "id": new_id("msg"),
                "tenant_id": campaign.tenant_id,
                "direction": "outbound",
                "channel": campaign.channel,
                "provider": campaign.provider,
                "provider_account_id": account_id,
                "to_number": phone,
                "wa_user_id": phone if is_bsuid(phone) else None,
                "contact_id": contact_id,
                # The content is the campaign's (services/messages/campaign_content.py).
                "body": None,
                "media_urls": None,
                "template": recipient_template(variables) if campaign.template else None,
                "options": None,
                "status": "scheduled",
                "attempts": 0,
                "campaign_id": campaign.id,
                "metadata": {},
                "test": bool(campaign.test),
                "created_at": now,
                "updated_at": now,
            }
        )
    quiet_hours.assign_zones(campaign, rows)  # each row's local time zone
    if rows:
        apply_pool(rows, pool)  # senders: each recipient's sender, sticky
        writer.insert_ignoring_repeats(rows)
        campaign.total += len(rows)  # corrected for repeats across chunks at the end


class _ChunkWriter:
    """Writes a campaign's chunks of rows, each sent without waiting for it.

    Why: the server's side of a chunk's INSERT (13 index entries a row, the foreign-key
    checks) was over a third of creating a 100k-recipient campaign, and Python sat idle
    through it. Each INSERT goes in psycopg's pipeline mode, so the server writes chunk N
    on one core while Python validates chunk N+1 on the other. Any other statement on the
    connection first waits for the INSERT in flight (SQLAlchemy's, by an event: a contact
    lookup, an autoflush, the count after the last chunk; the opt-out lookup, which reads
    through psycopg directly, by calling `settle`), so every read sees every row written
    before it, and an INSERT's error is raised there or when the writer closes."""

    def __init__(self, session: Session) -> None:
        self._connection = session.connection()
        self._driver = self._connection.connection.driver_connection
        self._dialect = self._connection.dialect
        self._pending = ExitStack()
        self._in_flight = False
        self._sql = ""

    def __enter__(self) -> _ChunkWriter:
        event.listen(self._connection, "before_cursor_execute", self._before_statement)
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        event.remove(self._connection, "before_cursor_execute", self._before_statement)
        if kind is None:
            self.settle()
            return
        # Already failing (a 4xx, a lost connection): that error is the one to raise,
        # and the transaction is rolled back either way.
        with suppress(psycopg.Error):
            self.settle()

    def _before_statement(self, *_: Any) -> None:
        self.settle()

    def settle(self) -> None:
        """Wait for the INSERT in flight; raises its error, if any."""
        if not self._in_flight:
            return
        self._in_flight = False
        try:
            self._pending.close()  # leaving pipeline mode syncs with the server
        except psycopg.Error as exc:  # raised as SQLAlchemy would (see models/fast.py)
            self._connection._handle_dbapi_exception(exc, self._sql, None, None, None)

    def insert_ignoring_repeats(self, rows: list[dict[str, Any]]) -> None:
        """One INSERT per chunk; a recipient already in the campaign (an earlier chunk) is
        skipped by the unique (campaign, to) constraint.

        Why arrays: the chunk goes as one array parameter per column that differs
        between rows (`INSERT … SELECT FROM unnest(…)`) and one scalar per column that
        does not. A multi-row VALUES statement has a placeholder per cell, and binding,
        splitting and sending those was over a third of creating a 100k-recipient
        campaign."""
        sql, params = self._statement(rows)
        self.settle()
        try:
            self._pending.enter_context(self._driver.pipeline())
            self._in_flight, self._sql = True, sql
            self._driver.execute(sql, params)
        except psycopg.Error as exc:  # the connection lost, say: a 503 like any statement's
            self._in_flight = False
            with suppress(psycopg.Error):
                self._pending.close()
            self._connection._handle_dbapi_exception(exc, sql, params, None, None)

    def _statement(self, rows: list[dict[str, Any]]) -> tuple[str, list[Any]]:
        table = Message.__table__
        names = list(rows[0])
        arrays: list[str] = []
        labels: list[str] = []
        values_sql: list[str] = []
        scalars: list[Any] = []  # the select list's placeholders come first in the text
        array_params: list[Any] = []
        for n, name in enumerate(names):
            column = table.c[name]
            kind = column.type
            values = [row[name] for row in rows]
            first = values[0]
            same = all(v == first for v in values)
            if same:
                values = [first]
            if isinstance(kind, JSON):  # as the JSON type binds it: None is JSON null
                values = [json.dumps(v) for v in values]
            elif (process := kind.bind_processor(self._dialect)) is not None:
                values = [process(v) for v in values]  # a UTC time as the column stores it
            # No length in the cast (an explicit cast to varchar(n) truncates): the
            # column's own length is checked on assignment, as for any insert.
            sql_type = "TEXT" if isinstance(kind, String) else kind.compile(dialect=self._dialect)
            if same:
                scalars.append(values[0])
                values_sql.append(f"CAST(%s AS {sql_type})")
            else:
                array_params.append(values)
                arrays.append(f"CAST(%s AS {sql_type}[])")
                labels.append(f"c{n}")
                values_sql.append(f"u.c{n}")
        source = f" FROM unnest({', '.join(arrays)}) AS u({', '.join(labels)})" if arrays else ""
        sql = (
            f"INSERT INTO messages ({', '.join(names)}) SELECT {', '.join(values_sql)}{source}"
            " ON CONFLICT (campaign_id, to_number) DO NOTHING"
        )
        return sql, scalars + array_params


def _recipient(
    item: Any, by_contact: dict[str, Contact]
) -> tuple[str | None, str, str | None, list[str]]:
    """(error, phone, contact id, variables) for one recipient row."""
    if not isinstance(item, dict):
        return "not an object", "", None, []
    unknown = set(item) - {"to", "contact_id", "variables"}
    if unknown:
        return f"unknown fields {sorted(unknown)}", "", None, []
    variables = item.get("variables") or []
    if not isinstance(variables, list) or not all(
        isinstance(v, str | int | float) for v in variables
    ):
        return "variables must be a list of strings", "", None, []
    variables = [str(v) for v in variables]
    if len(variables) > TEMPLATE_VARIABLES:
        return f"at most {TEMPLATE_VARIABLES} variables", "", None, []
    if ("to" in item) == ("contact_id" in item):
        return "give exactly one of 'to' or 'contact_id'", "", None, []
    if "contact_id" in item:
        contact = by_contact.get(str(item["contact_id"]))
        if contact is None:
            return "contact_not_found", "", None, []
        # A WhatsApp user known by BSUID alone (a username, no phone shared) by it.
        address = contact.phone or contact.wa_user_id or ""
        return None, address, contact.external_id or contact.id, variables
    if looks_like_bsuid(str(item["to"]).strip()):  # WhatsApp: a business-scoped user id
        try:
            return None, parse_bsuid(str(item["to"])), None, variables
        except ValueError:
            return f"invalid business-scoped user id {str(item['to'])[:3]}…", "", None, []
    phone = normalize_e164(str(item["to"]))
    if phone is None:
        return f"invalid phone number {str(item['to'])[:3]}…", "", None, []
    return None, phone, None, variables


# ---------------------------------------------------------------- release


def release_due_campaigns(now: datetime | None = None) -> int:
    """Release each running campaign's next batch within its rate; returns how many."""
    from models import session_scope

    now = now or utcnow()
    released = 0
    with session_scope() as session:
        # Paused for the quota and its day is over: running again from this tick.
        session.execute(
            update(Campaign)
            .where(
                Campaign.status == "paused",
                Campaign.pause_reason == QUOTA_PAUSE,
                Campaign.resume_at <= now,
            )
            .values(
                status="running",
                pause_reason=None,
                resume_at=None,
                last_release_at=None,
                allowance=Decimal(0),
            )
            .execution_options(synchronize_session=False)
        )
        campaigns = list(
            session.scalars(
                select(Campaign)
                .where(
                    Campaign.status == "running",
                    (Campaign.send_at.is_(None)) | (Campaign.send_at <= now),
                )
                .with_for_update(skip_locked=True)
            )
        )
        for campaign in campaigns:
            released += _release(session, campaign, now)
    return released


def _release(session: Session, campaign: Campaign, now: datetime) -> int:
    rate = Decimal(campaign.rate)
    if campaign.last_release_at is None:
        allowance = rate  # one second's worth to start
    else:
        elapsed = Decimal(str(max(0.0, (now - campaign.last_release_at).total_seconds())))
        allowance = min(rate * 2, Decimal(campaign.allowance) + rate * elapsed)
    count = int(allowance)
    campaign.last_release_at = now
    if count <= 0:
        campaign.allowance = allowance
        return 0
    ids = list(
        session.scalars(
            select(Message.id)
            .where(Message.campaign_id == campaign.id, Message.status == "scheduled")
            .where(*quiet_hours.release_filter(campaign, now))  # parked until their morning
            .order_by(Message.id)
            .limit(count)
        )
    )
    if not ids:
        campaign.allowance = Decimal(0)
        counts = campaign_status_counts(session, campaign.tenant_id, campaign.id)
        unfinished = sum(counts.get(s, 0) for s in ("scheduled", "queued", "sending"))
        if not unfinished:
            campaign.status = "completed"
        return 0
    tenant = session.get(Tenant, campaign.tenant_id)  # one read per tenant per tick
    granted = limits.take_daily_quota(campaign.tenant_id, daily_limit(tenant), len(ids))  # type: ignore[arg-type]
    if granted < len(ids):  # the day's quota is used up: send what it covers, then wait
        ids = ids[:granted]
        _pause_for_quota(campaign, now)
        if not ids:
            return 0
    session.execute(
        update(Message)
        .where(Message.id.in_(ids), Message.status == "scheduled")
        .values(status="queued", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    campaign.allowance = allowance - len(ids)
    for start in range(0, len(ids), BATCH_SIZE):
        enqueue_after_commit(
            session, [*ids[start : start + BATCH_SIZE]], BULK_QUEUE, task=BATCH_TASK
        )
    return len(ids)


def _pause_for_quota(campaign: Campaign, now: datetime) -> None:
    """Pause a campaign the day's quota cannot cover, visibly (`pause_reason`), until
    the UTC day ends; its remaining rows stay `scheduled`, nothing is sent over quota."""
    campaign.status, campaign.pause_reason = "paused", QUOTA_PAUSE
    campaign.resume_at = now + timedelta(seconds=limits.seconds_to_day_end())
    campaign.allowance = Decimal(0)
    log.warning(
        "campaign paused: daily quota reached id=%s tenant=%s resume_at=%s",
        campaign.id,
        campaign.tenant_id,
        iso(campaign.resume_at),
    )


# ---------------------------------------------------------------- control and progress


def get_campaign(
    session: Session, tenant_id: str, campaign_id: str, test: bool | None = None
) -> Campaign:
    """A tenant's campaign; with `test` (the caller's key's mode), one of that mode only."""
    missing = f"No campaign {campaign_id!r}."
    campaign = get_owned(session, Campaign, tenant_id, campaign_id, missing)
    if test is not None and bool(campaign.test) != test:
        raise NotFound(missing)
    return campaign


def list_campaigns(
    session: Session,
    tenant_id: str,
    *,
    status: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    test: bool | None = None,
) -> tuple[list[Campaign], str | None]:
    """A page of the tenant's campaigns, newest first, and the next page's cursor (the
    page's last id: ids are time-ordered, as messages' are). Keyset on (tenant_id, id),
    the index ix_campaigns_tenant_id_id serves, so a page costs its own rows however
    many campaigns the tenant has."""
    query = select(Campaign).where(Campaign.tenant_id == tenant_id)
    if test is not None:  # the caller's key's mode
        query = query.where(Campaign.test == test)
    if status:
        query = query.where(Campaign.status == status)
    if cursor:
        query = query.where(Campaign.id < cursor)
    rows = list(session.scalars(query.order_by(Campaign.id.desc()).limit(limit + 1)))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


class CampaignQuerySchema(Schema):
    """`GET /v1/campaigns` filters and paging."""

    class Meta:
        unknown = RAISE

    status = fields.String(validate=validate.OneOf(CAMPAIGN_STATUSES))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=PAGE_LIMIT))
    cursor = cursor_field("cmp")


def load_campaign_query(args: Any) -> dict[str, Any]:
    return load_object(CampaignQuerySchema(), dict(args))


def control_campaign(
    session: Session, tenant_id: str, campaign_id: str, action: str, test: bool | None = None
) -> Campaign:
    """pause | resume | cancel; effective at the next beat tick (one second)."""
    campaign = get_campaign(session, tenant_id, campaign_id, test)
    allowed = {"pause": ("running",), "resume": ("paused",), "cancel": ("running", "paused")}
    if campaign.status not in allowed[action]:
        raise Conflict(f"A {campaign.status} campaign cannot {action}.", code="invalid_state")
    if action == "pause":
        campaign.status = "paused"
    elif action == "resume":
        campaign.status, campaign.last_release_at, campaign.allowance = "running", None, Decimal(0)
        campaign.pause_reason = campaign.resume_at = None  # over quota still: paused again
    else:
        campaign.status = "canceled"
        campaign.pause_reason = campaign.resume_at = None
        _cancel_unsent(session, campaign)
    session.flush()
    return campaign


def _cancel_unsent(session: Session, campaign: Campaign) -> None:
    """Cancel every message not yet being sent (a claimed one is already out), with
    the history event and the tenant's status event each would get one by one."""
    now = utcnow()
    canceled = list(
        session.scalars(
            update(Message)
            .where(Message.campaign_id == campaign.id, Message.status.in_(("scheduled", "queued")))
            .values(status="canceled", updated_at=now)
            .returning(Message.id)
            .execution_options(synchronize_session=False)
        )
    )
    for start in range(0, len(canceled), CHUNK):
        chunk = canceled[start : start + CHUNK]
        session.execute(
            insert(MessageEvent),
            [
                {"message_id": i, "status": "canceled", "source": "api", "applied": True, "at": now}
                for i in chunk
            ],
        )
        for message_id in chunk:
            record_status_event(session, message_id)


class InvalidRowView(Shape):
    row = fields.Integer(metadata={"description": "its line in the list or the CSV, from 1"})
    error = fields.String()


class EstimatedCostView(Shape):
    """A campaign's cost worked out at creation (services/content/prices.py)."""

    amount = fields.String(metadata={"description": "a decimal, as text, to the cent"})
    currency = fields.String(metadata={"description": "ISO 4217"})


class CampaignView(Shape):
    """A campaign and its progress (`campaign_to_dict`)."""

    class Meta:
        optional = ("encoding", "segments", "segments_total", "smart_encoded")

    id = fields.String()
    name = fields.String()
    status = fields.String()
    test = fields.Boolean(metadata={"description": "created with a test key: simulated"})
    pause_reason = fields.String(
        allow_none=True,
        metadata={"description": "daily_quota: paused by the quota until resume_at"},
    )
    resume_at = fields.DateTime(allow_none=True)
    channel = fields.String()
    provider = fields.String()
    rate = fields.Float(metadata={"description": "messages per second"})
    send_at = fields.DateTime(allow_none=True)
    total = fields.Integer()
    counts = fields.Nested(
        shape("CampaignCounts", {name: fields.Integer() for name in (*COUNTED, "skipped")}),
        metadata={"description": "messages per status; skipped: never made a message"},
    )
    progress = fields.Float(
        metadata={
            "description": "0 to 1: the share of messages delivered, read, failed or "
            "undelivered (or canceled one by one); `sent` is not final. A canceled "
            "campaign counts only what went out."
        }
    )
    invalid = fields.Integer()
    invalid_rows = fields.List(fields.Nested(InvalidRowView), metadata={"description": "100 first"})
    duplicates = fields.Integer()
    quiet_hours = fields.Nested(quiet_hours.QuietHoursView, allow_none=True)
    created_at = fields.DateTime()
    encoding = fields.String(metadata={"description": "SMS: GSM-7 or UCS-2"})
    segments = fields.Integer(metadata={"description": "SMS: the segments of one message"})
    estimated_cost = fields.Nested(
        EstimatedCostView,
        allow_none=True,
        metadata={
            "description": "SMS: segments times the tenant's sms_prices per destination country, "
            "at creation; null: no prices set, or a country they do not price"
        },
    )
    segments_total = fields.Integer(
        metadata={"description": "SMS: segments of every message, before skips and failures"}
    )
    smart_encoded = fields.Integer(
        metadata={"description": "SMS: look-alike characters smart encoding replaced"}
    )


class CampaignPage(Shape):
    data = fields.List(fields.Nested(CampaignView))
    next_cursor = fields.String(allow_none=True)


def campaigns_to_dicts(session: Session, campaigns: list[Campaign]) -> list[dict[str, Any]]:
    """A page of campaigns, their counts read in one statement for the page."""
    if not campaigns:
        return []
    counts = campaigns_status_counts(session, campaigns[0].tenant_id, [c.id for c in campaigns])
    return [campaign_to_dict(session, c, counts[c.id]) for c in campaigns]


def campaign_to_dict(
    session: Session, campaign: Campaign, by_status: dict[str, int] | None = None
) -> dict[str, Any]:
    """A campaign as the API shows it; `by_status`: its counts, when read already."""
    # From the rollup kept as statuses change: a few rows, however big the campaign.
    if by_status is None:
        by_status = campaign_status_counts(session, campaign.tenant_id, campaign.id)
    counts = {s: by_status.get(s, 0) for s in COUNTED}
    counts["skipped"] = campaign.skipped
    settled = OUTCOMES if campaign.status == "canceled" else SETTLED
    done = sum(by_status.get(s, 0) for s in settled)
    return {
        "id": campaign.id,
        "name": campaign.name,
        "status": campaign.status,
        "test": bool(campaign.test),
        # 'daily_quota': paused by the quota until `resume_at` (then running again by
        # itself); null: not paused, or paused by the tenant.
        "pause_reason": campaign.pause_reason,
        "resume_at": iso(campaign.resume_at),
        "channel": campaign.channel,
        "provider": campaign.provider,
        "rate": float(campaign.rate),
        "send_at": iso(campaign.send_at),
        "total": campaign.total,
        "counts": counts,
        "progress": round(done / campaign.total, 4) if campaign.total else 1.0,
        "invalid": campaign.invalid,
        "invalid_rows": (campaign.invalid_rows or [])[:100],
        "duplicates": campaign.duplicates,
        "quiet_hours": quiet_hours.view(session, campaign, scheduled=by_status.get("scheduled", 0)),
        "created_at": iso(campaign.created_at),
        "estimated_cost": campaign.estimated_cost,
        **_sms_estimate(campaign),
    }


def _sms_estimate(campaign: Campaign) -> dict[str, Any]:
    """What an SMS campaign will be billed as: its body's encoding and segments, and
    the segments of all its messages (before a recipient is skipped or fails)."""
    if campaign.channel != "sms" or not campaign.body:
        return {}
    size = measure(campaign.body)
    return {
        "encoding": size.encoding,
        "segments": size.segments,
        "segments_total": size.segments * campaign.total,
        "smart_encoded": (campaign.options or {}).get("smart_encoded", 0),
    }
