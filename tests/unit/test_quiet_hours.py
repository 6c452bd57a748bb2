"""Campaign quiet hours: rows whose recipient's local time is inside the quiet span
stay parked (scheduled) and are released once it opens; the clock is given, not read."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update

from models import Campaign, Message, Tenant, session_scope
from services.campaigns.campaigns import release_due_campaigns
from services.policy.quiet_hours import allowed, is_quiet, number_zones, zone_key
from tests.conftest import statements_run

NEW_YORK = "+12125550123"
TOKYO = "+81312345678"
QUIET = {"start": "21:00", "end": "08:00"}


@pytest.fixture(autouse=True)
def _texts_japan(tenant: dict[str, str]) -> None:
    """The tenant's own numbers are American: the operator lets it text Japan too (the
    SMS pumping guard, services/policy/destinations.py)."""
    with session_scope() as session:
        session.execute(
            update(Tenant)
            .where(Tenant.id == tenant["tenant_id"])
            .values(sms_countries=["US", "JP"])
        )


def create(client, auth, **fields):  # type: ignore[no-untyped-def]
    body = {
        "name": "Morning offer",
        "channel": "sms",
        "body": "Offer!",
        "rate": 5,
        "recipients": [{"to": NEW_YORK}, {"to": TOKYO}],
        **fields,
    }
    return client.post("/v1/campaigns", json=body, headers=auth)


def statuses(campaign_id: str) -> dict[str, str]:
    with session_scope() as session:
        rows = session.execute(
            select(Message.to_number, Message.status).where(Message.campaign_id == campaign_id)
        ).all()
    return dict(rows)


def test_rows_in_their_night_are_parked_and_released_in_their_morning(
    client, auth, dispatched
) -> None:
    resp = create(client, auth, quiet_hours=QUIET)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["quiet_hours"]["start"] == "21:00" and body["quiet_hours"]["end"] == "08:00"
    assert body["quiet_hours"]["default_timezone"] == "UTC"
    cid = body["id"]
    # 03:00 UTC: 23:00 in New York (quiet), 12:00 in Tokyo (open).
    release_due_campaigns(now=datetime(2026, 6, 1, 3, 0, tzinfo=UTC))
    assert statuses(cid) == {NEW_YORK: "scheduled", TOKYO: "queued"}
    with session_scope() as session:
        campaign = session.get(Campaign, cid)
        assert campaign.status == "running"  # parked rows keep it running
        from services.policy import quiet_hours

        night = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)
        assert quiet_hours.view(session, campaign, night)["parked"] == 1
    # 07:59 in New York: still quiet.
    release_due_campaigns(now=datetime(2026, 6, 1, 11, 59, tzinfo=UTC))
    assert statuses(cid)[NEW_YORK] == "scheduled"
    # 08:00 in New York: its window opens.
    release_due_campaigns(now=datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    assert statuses(cid) == {NEW_YORK: "queued", TOKYO: "queued"}


def test_parked_rows_while_every_zone_is_quiet_come_from_the_counters(
    client, auth, dispatched
) -> None:
    """A one-country campaign at night: every waiting row is parked, and the live view
    (polled every second) says how many from the campaign's counters, without counting
    its rows by zone."""
    from services.campaigns.campaigns import campaign_to_dict
    from services.policy import quiet_hours

    others = [{"to": f"+1212555{n:04d}"} for n in range(200, 203)]
    resp = create(client, auth, quiet_hours=QUIET, recipients=[{"to": NEW_YORK}, *others])
    assert resp.status_code == 201, resp.get_json()
    night = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)  # 23:00 in New York
    with session_scope() as session:
        campaign = session.get(Campaign, resp.get_json()["id"])
        with statements_run(session.get_bind()) as seen:
            shown = campaign_to_dict(session, campaign)
            counted = quiet_hours.view(session, campaign, night, scheduled=4)
        assert counted["parked"] == 4
        assert not [sql for sql, _ in seen if "recipient_zones" in sql], seen
        # Every zone quiet or not now (the real clock), the two answers agree.
        assert shown["quiet_hours"]["parked"] == quiet_hours.view(session, campaign)["parked"]


def test_parked_rows_while_some_zones_are_open_are_counted_once_a_minute(
    client, auth, dispatched, monkeypatch
) -> None:
    """New York quiet, Tokyo open: the live view's polls count New York's rows once, until
    the quiet zones change, the campaign's status changes or a minute has passed."""
    from services.policy import quiet_hours

    resp = create(client, auth, quiet_hours=QUIET)
    assert resp.status_code == 201, resp.get_json()
    night = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)  # 23:00 in New York, 12:00 in Tokyo
    tokyo_night = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)  # 10:00 in New York, 23:00 in Tokyo
    clock = [1_000.0]
    monkeypatch.setattr(quiet_hours.time, "monotonic", lambda: clock[0])
    quiet_hours._parked_counts.clear()  # what the creation's answer counted (the real clock)
    with session_scope() as session:
        campaign = session.get(Campaign, resp.get_json()["id"])
        with statements_run(session.get_bind()) as seen:
            polls = [quiet_hours.view(session, campaign, night, scheduled=2) for _ in range(5)]
            once = len(seen)
            other = quiet_hours.view(session, campaign, tokyo_night, scheduled=2)
            clock[0] += quiet_hours.PARKED_TTL
            later = quiet_hours.view(session, campaign, night, scheduled=2)
    assert [p["parked"] for p in polls] == [1] * 5
    assert once == 1, seen
    assert other["parked"] == 1 and later["parked"] == 1
    assert len([sql for sql, _ in seen if "recipient_zones" in sql]) == 3


def test_without_quiet_hours_everything_is_released(client, auth, dispatched) -> None:
    cid = create(client, auth).get_json()["id"]
    release_due_campaigns(now=datetime(2026, 6, 1, 3, 0, tzinfo=UTC))
    assert statuses(cid) == {NEW_YORK: "queued", TOKYO: "queued"}


def test_quiet_hours_are_validated(client, auth) -> None:
    tokyo = {**QUIET, "default_timezone": "Asia/Tokyo"}
    assert create(client, auth, quiet_hours=tokyo).status_code == 201
    for bad in (
        {"start": "25:00", "end": "08:00"},
        {"start": "21:00", "end": "21:00"},
        {"start": "21:00"},
        {"start": "21:00", "end": "08:00", "default_timezone": "Mars/Olympus"},
        {"start": "21:00", "end": "08:00", "extra": 1},
    ):
        resp = create(client, auth, quiet_hours=bad)
        assert resp.status_code == 400, bad
        assert "quiet_hours" in resp.get_json()["error"]["fields"]


def test_zones_come_from_the_number() -> None:
    assert number_zones(NEW_YORK) == ("America/New_York",)
    assert number_zones(TOKYO) == ("Asia/Tokyo",)
    assert zone_key(NEW_YORK, QUIET) == "America/New_York"
    # Unknown to phonenumbers: the campaign's default zone.
    assert zone_key("+99912345", {**QUIET, "default_timezone": "Europe/Paris"}) == "Europe/Paris"


def test_several_zones_take_the_most_restrictive_reading() -> None:
    key = "America/Los_Angeles America/New_York"
    # 12:30 UTC: 08:30 in New York, 05:30 in Los Angeles: someone would be woken.
    assert not allowed(key, QUIET, datetime(2026, 6, 1, 12, 30, tzinfo=UTC))
    # 16:00 UTC: 12:00 and 09:00.
    assert allowed(key, QUIET, datetime(2026, 6, 1, 16, 0, tzinfo=UTC))


def test_zones_with_no_shared_window_fall_back_to_the_default_zone() -> None:
    wide = ("Asia/Kamchatka", "Europe/Kaliningrad")  # ten hours apart
    narrow = {"start": "12:00", "end": "10:00"}  # open only 10:00-12:00
    from services.policy import quiet_hours

    key = " ".join(wide)
    assert not any(allowed(key, narrow, datetime(2026, 6, 1, h, tzinfo=UTC)) for h in range(24))
    assert not quiet_hours._ever_open(key, "12:00", "10:00", "2026-06-01")
    toll_free = "+18005550199"  # the whole NANP: Guam to Halifax
    assert len(number_zones(toll_free)) > 10
    # 21:00-08:00 still leaves them all 22:00-23:30 UTC (Guam's morning, Halifax's evening)...
    assert zone_key(toll_free, QUIET).count(" ") > 10
    # ...but a two-hour window shared by nobody falls to the default zone.
    assert zone_key(toll_free, {**narrow, "default_timezone": "America/Chicago"}) == (
        "America/Chicago"
    )


def test_is_quiet_wraps_midnight() -> None:
    from datetime import time

    start, end = time(21), time(8)
    assert is_quiet(time(23), start, end) and is_quiet(time(7, 59), start, end)
    assert not is_quiet(time(8), start, end) and not is_quiet(time(20, 59), start, end)
    assert is_quiet(time(13), time(12), time(14)) and not is_quiet(time(14), time(12), time(14))


def test_the_console_shows_quiet_hours(client, auth, tenant, dispatched) -> None:
    from tests.unit.test_console import sign_in

    cid = create(client, auth, quiet_hours=QUIET).get_json()["id"]
    console = client.application.test_client()
    assert sign_in(console, tenant["api_key"]).status_code == 302
    html = console.get(f"/console/campaigns/{cid}").get_data(as_text=True)
    assert "Quiet hours 21:00 to 08:00" in html and 'id="campaign-parked"' in html
