"""Campaign quiet hours: no sends while it is night where the recipient is.

A campaign's `quiet_hours` (`{"start": "21:00", "end": "08:00"}`) is a span of the
recipient's local day in which nothing is sent; rows due then stay `scheduled`
(parked, not failed) and are released once their local window opens, the next morning.

The recipient's time zone comes from the number (phonenumbers'
`time_zones_for_number`, from the country and, where it tells, the area code):

* one zone: that zone;
* several (a mobile number of a country spanning zones, such as Russia, Brazil or
  the US): the most restrictive reading, a send is allowed only when it is allowed in
  every one of them, so nobody is woken. When those zones share no allowed moment at
  all (a narrow window across zones far apart), the number is treated as one of
  unknown zone, rather than parked for ever;
* none (an unknown or non-geographic number): the campaign's `default_timezone`
  (default UTC).

Each row's zone key (one zone, or several joined by spaces) is written at campaign
creation into `messages.recipient_zones`, and the campaign keeps the distinct keys,
so a release asks Python which keys are open now (a handful of zones, whatever the
number of rows) and filters the rows in SQL by `recipient_zones IN (...)`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from datetime import time as dtime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import phonenumbers
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema
from phonenumbers import timezone as phone_timezones
from sqlalchemy import false, func, select
from sqlalchemy.orm import Session

from core.shapes import Shape
from models import Campaign, Message, utcnow

_HHMM = validate.Regexp(r"^([01]\d|2[0-3]):[0-5]\d$", error="A time of day as HH:MM (00:00-23:59).")


def _zone_problem(name: str) -> str | None:
    if name not in _zone_names():
        return f"Unknown time zone {name[:64]!r}: give an IANA name such as 'Europe/Paris'."
    return None


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


class QuietHoursSchema(Schema):
    """When not to send, in the recipient's local time; `start` to `end` may wrap midnight."""

    class Meta:
        unknown = RAISE

    start = fields.String(required=True, validate=_HHMM)
    end = fields.String(required=True, validate=_HHMM)
    default_timezone = fields.String(
        load_default="UTC",
        validate=validate.Length(min=1, max=64),
        metadata={"description": "for numbers whose zone is unknown (IANA name)"},
    )

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("start") is not None and data.get("start") == data.get("end"):
            raise ValidationError("start and end must differ.", "end")
        problem = _zone_problem(data.get("default_timezone", "UTC"))
        if problem:
            raise ValidationError(problem, "default_timezone")


def _clock(text: str) -> dtime:
    hours, minutes = text.split(":")
    return dtime(int(hours), int(minutes))


def is_quiet(local: dtime, start: dtime, end: dtime) -> bool:
    """Whether a local time of day falls in [start, end), which may wrap midnight."""
    if start < end:
        return start <= local < end
    return local >= start or local < end


def _quiet_in(zone: str, quiet: dict[str, Any], now: datetime) -> bool:
    local = now.astimezone(ZoneInfo(zone)).time().replace(second=0, microsecond=0)
    return is_quiet(local, _clock(quiet["start"]), _clock(quiet["end"]))


def allowed(key: str, quiet: dict[str, Any], now: datetime) -> bool:
    """Whether a row with zone key `key` may be sent at `now`: outside the quiet span in
    every one of its zones."""
    return not any(_quiet_in(zone, quiet, now) for zone in key.split())


def number_zones(phone: str) -> tuple[str, ...]:
    """The IANA zones phonenumbers gives for an E.164 number; () when it knows none.

    Looked up once per block of a thousand numbers (all but the last three digits):
    numbering plans allot numbers in blocks at least that large, and parsing with
    phonenumbers takes about a tenth of a millisecond a number."""
    block = phone[:-3]
    zones = _blocks.get(block)
    if zones is None:
        if len(_blocks) >= MAX_BLOCKS:
            _blocks.clear()
        zones = _blocks[block] = _lookup(phone)
    return zones


MAX_BLOCKS = 100_000
_blocks: dict[str, tuple[str, ...]] = {}


def _lookup(phone: str) -> tuple[str, ...]:
    try:
        parsed = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return ()
    zones = phone_timezones.time_zones_for_number(parsed)
    return tuple(sorted(z for z in zones if z in _zone_names()))


def zone_key(phone: str, quiet: dict[str, Any], now: datetime | None = None) -> str:
    """The zone key quiet hours are judged in for this recipient (see the module doc)."""
    zones = number_zones(phone)
    if not zones:
        return quiet.get("default_timezone") or "UTC"
    if len(zones) == 1:
        return zones[0]
    key = " ".join(zones)
    if _ever_open(key, quiet["start"], quiet["end"], (now or utcnow()).date().isoformat()):
        return key
    # Zones too far apart to share an open moment (a narrow window; a US toll-free number
    # spans Guam to Halifax): treated as a number whose zone is unknown.
    return quiet.get("default_timezone") or "UTC"


@lru_cache(maxsize=1024)
def _ever_open(key: str, start: str, end: str, day: str) -> bool:
    """Whether the zones of `key` share an allowed quarter hour in the day from `day`."""
    quiet = {"start": start, "end": end}
    first = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo("UTC"))
    return any(allowed(key, quiet, first + timedelta(minutes=15 * i)) for i in range(96))


def option(data: dict[str, Any]) -> dict[str, Any] | None:
    """The campaign's stored quiet hours (the zones are added as rows are written)."""
    quiet = data.get("quiet_hours")
    if not quiet:
        return None
    return {**quiet, "zones": []}


def assign_zones(campaign: Campaign, rows: Iterable[dict[str, Any]]) -> None:
    """Write each new row's zone key and remember the distinct keys on the campaign."""
    quiet = campaign.quiet_hours
    if not quiet:
        return
    now = utcnow()
    keys = set(quiet.get("zones") or [])
    for row in rows:
        row["recipient_zones"] = zone_key(row["to_number"], quiet, now)
        keys.add(row["recipient_zones"])
    if keys != set(quiet.get("zones") or []):
        campaign.quiet_hours = {**quiet, "zones": sorted(keys)}  # a new dict: the ORM sees it


def open_zones(campaign: Campaign, now: datetime) -> list[str]:
    """The campaign's zone keys in which sending is allowed at `now`."""
    quiet = campaign.quiet_hours or {}
    return [key for key in quiet.get("zones") or [] if allowed(key, quiet, now)]


def release_filter(campaign: Campaign, now: datetime) -> list[Any]:
    """Conditions a campaign's release adds to its scheduled rows: only rows whose
    local window is open now (nothing when the campaign has no quiet hours)."""
    if not campaign.quiet_hours:
        return []
    keys = open_zones(campaign, now)
    return [Message.recipient_zones.in_(keys)] if keys else [false()]


class QuietHoursView(Shape):
    """A campaign's quiet hours as the API shows them (`view`)."""

    start = fields.String()
    end = fields.String()
    default_timezone = fields.String()
    parked = fields.Integer(metadata={"description": "rows waiting for their local window"})


def view(
    session: Session,
    campaign: Campaign,
    now: datetime | None = None,
    scheduled: int | None = None,
) -> dict[str, Any] | None:
    """The quiet hours as the API shows them, with `parked`: the rows not yet released
    that wait for their local window to open.

    `scheduled`: the campaign's waiting rows, from its counters. While every zone it
    reaches is quiet (a one-country campaign's whole night) that is the answer, with no
    count of the rows: the live view polls this every second, and counting a night's
    100,000 parked rows each time would cost with the campaign's size. While only some
    zones are quiet, their rows are counted at most once a minute (`_parked`)."""
    quiet = campaign.quiet_hours
    if not quiet:
        return None
    zones = quiet.get("zones") or []
    closed = [k for k in zones if not allowed(k, quiet, now or utcnow())]
    parked = 0
    if closed and len(closed) == len(zones) and scheduled is not None:
        parked = scheduled  # every row is in one of its zones
    elif closed:
        parked = _parked(session, campaign, closed)
    return {**{k: quiet.get(k) for k in ("start", "end", "default_timezone")}, "parked": parked}


# The rows parked in a campaign's quiet zones while others are open, counted once per
# PARKED_TTL seconds for the same campaign status and the same quiet zones: the live view
# polls every second, and a count of 100,000 rows took 27 ms. Releases take only the open
# zones' rows, so the count changes when a zone opens or closes (a new key), the campaign
# is canceled (a new status) or a single row is canceled (within PARKED_TTL).
PARKED_TTL = 60.0
_parked_counts: dict[tuple[str, str, tuple[str, ...]], tuple[float, int]] = {}


def _parked(session: Session, campaign: Campaign, closed: list[str]) -> int:
    key = (campaign.id, campaign.status, tuple(sorted(closed)))
    now = time.monotonic()
    hit = _parked_counts.get(key)
    if hit is not None and now - hit[0] < PARKED_TTL:
        return hit[1]
    parked = session.scalar(
        select(func.count()).where(
            Message.campaign_id == campaign.id,
            Message.status == "scheduled",
            Message.recipient_zones.in_(closed),
        )
    )
    if len(_parked_counts) > 1_000:  # bounded: drop the old entries, or all
        for old in [k for k, (at, _) in _parked_counts.items() if now - at >= PARKED_TTL]:
            _parked_counts.pop(old, None)
        if len(_parked_counts) > 1_000:
            _parked_counts.clear()
    _parked_counts[key] = (now, int(parked or 0))
    return int(parked or 0)
