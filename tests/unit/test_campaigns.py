"""Campaigns: creation (JSON and CSV), validation per row, skips, release within
the rate, pause/resume/cancel, progress counts, and scheduled single messages."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from models import Campaign, Contact, Message, Tenant, new_session, session_scope, utcnow
from services.campaigns.campaigns import release_due_campaigns
from services.messages.sweep import release_scheduled

TEMPLATE = {"name": "offer", "language": "es_MX"}


def create(client, auth, **fields):  # type: ignore[no-untyped-def]
    body = {"name": "Black Friday", "channel": "sms", "body": "Offer!", "rate": 5, **fields}
    return client.post("/v1/campaigns", json=body, headers=auth)


def test_create_reports_invalid_duplicates_and_opted_out(client, auth, tenant, dispatched) -> None:
    with session_scope() as session:
        session.add(Contact(tenant_id=tenant["tenant_id"], phone="+12025550102", opted_out=True))
        session.add(Contact(tenant_id=tenant["tenant_id"], phone="+12025550103", external_id="c3"))
    recipients = [
        {"to": "+12025550101"},
        {"to": "+1 202 555 0101"},
        {"to": "+12025550102"},
        {"contact_id": "c3"},
        {"to": "nope"},
        {"contact_id": "ghost"},
        {"to": "+12025550104"},
    ]
    resp = create(client, auth, recipients=recipients)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["total"] == 3  # 0101, c3 (0103), 0104
    assert body["duplicates"] == 1 and body["counts"]["skipped"] == 1 and body["invalid"] == 2
    assert [r["row"] for r in body["invalid_rows"]] == [5, 6]
    assert body["counts"]["scheduled"] == 3 and body["progress"] == 0.0


def test_whatsapp_free_text_campaign_is_refused(client, auth) -> None:
    resp = create(client, auth, channel="whatsapp", recipients=[{"to": "+12025550101"}])
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "window_closed"
    ok = client.post(
        "/v1/campaigns",
        headers=auth,
        json={
            "name": "T",
            "channel": "whatsapp",
            "template": TEMPLATE,
            "recipients": [{"to": "+12025550101", "variables": ["Ana", "20%"]}],
        },
    )
    assert ok.status_code == 201
    with session_scope() as session:
        message = session.scalars(
            select(Message).where(Message.campaign_id == ok.get_json()["id"])
        ).one()
        assert message.template == {"variables": ["Ana", "20%"]}  # the rest: the campaign's
    shown = client.get(f"/v1/messages/{message.id}", headers=auth).get_json()
    assert shown["template"] == {**TEMPLATE, "variables": ["Ana", "20%"]}


def test_csv_upload_with_bad_rows(client, auth, dispatched) -> None:
    lines = ["to,name,discount"] + [f"+120255501{n:02d},Name{n},{n}%" for n in range(30)]
    lines += ["12345,Bad,1%", ",,", "+120255501 05,Dup,5%", "not-a-number,X,1%"]
    data = {
        "campaign": '{"name": "CSV", "channel": "sms", "body": "Hi", "rate": 50}',
        "file": (io.BytesIO("\n".join(lines).encode()), "recipients.csv"),
    }
    resp = client.post("/v1/campaigns", data=data, headers=auth, content_type="multipart/form-data")
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert (body["total"], body["invalid"], body["duplicates"]) == (30, 2, 1)
    bad = client.post(
        "/v1/campaigns",
        headers=auth,
        content_type="multipart/form-data",
        data={
            "campaign": '{"name": "x", "channel": "sms", "body": "Hi"}',
            "file": (io.BytesIO(b"phone\n+12025550101\n"), "r.csv"),
        },
    )
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_csv"


def test_release_respects_rate_and_pause_resume_cancel(client, auth, dispatched) -> None:
    recipients = [{"to": f"+120255501{n:02d}"} for n in range(20)]
    cid = create(client, auth, recipients=recipients, rate=5).get_json()["id"]
    now = utcnow()
    release_due_campaigns(now)  # one second's worth to start
    assert queued(cid) == 5
    release_due_campaigns(now + timedelta(seconds=0.4))  # 2 more earned
    assert queued(cid) == 7
    release_due_campaigns(now + timedelta(seconds=60))  # at most 2 s banked: 10 more
    assert queued(cid) == 17
    ours = set(ids_of(cid))
    assert sum(1 for batch in dispatched.batches for i in batch if i in ours) == 17
    assert client.post(f"/v1/campaigns/{cid}/pause", headers=auth).get_json()["status"] == "paused"
    release_due_campaigns(now + timedelta(seconds=120))
    assert queued(cid) == 17
    assert client.post(f"/v1/campaigns/{cid}/pause", headers=auth).status_code == 409
    assert (
        client.post(f"/v1/campaigns/{cid}/resume", headers=auth).get_json()["status"] == "running"
    )
    release_due_campaigns(now + timedelta(seconds=121))
    assert queued(cid) == 20
    canceled = client.post(f"/v1/campaigns/{cid}/cancel", headers=auth).get_json()
    assert canceled["status"] == "canceled" and canceled["counts"]["canceled"] == 20
    release_due_campaigns(now + timedelta(seconds=200))
    assert queued(cid) == 0


def test_scheduled_campaign_waits_for_send_at(client, auth, dispatched) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    cid = create(client, auth, recipients=[{"to": "+12025550101"}], send_at=later).get_json()["id"]
    release_due_campaigns()
    assert queued(cid) == 0
    release_due_campaigns(utcnow() + timedelta(hours=1, seconds=1))
    assert queued(cid) == 1


def test_campaign_completes_when_all_final(client, auth, dispatched) -> None:
    cid = create(client, auth, recipients=[{"to": "+12025550101"}]).get_json()["id"]
    release_due_campaigns()
    with session_scope() as session:
        session.execute(
            update(Message).where(Message.campaign_id == cid).values(status="delivered")
        )
    release_due_campaigns(utcnow() + timedelta(seconds=2))
    body = client.get(f"/v1/campaigns/{cid}", headers=auth).get_json()
    assert body["status"] == "completed" and body["progress"] == 1.0
    assert body["counts"]["delivered"] == 1


def test_campaign_isolation_and_bad_input(client, auth) -> None:
    from tests.conftest import make_tenant

    cid = create(client, auth, recipients=[{"to": "+12025550101"}]).get_json()["id"]
    other = {"Authorization": f"Bearer {make_tenant('x')['api_key']}"}
    assert client.get(f"/v1/campaigns/{cid}", headers=other).status_code == 404
    assert client.post(f"/v1/campaigns/{cid}/cancel", headers=other).status_code == 404
    assert create(client, auth, rate=0).status_code == 400
    assert client.post(f"/v1/campaigns/{cid}/explode", headers=auth).status_code == 400


def ids_of(campaign_id: str) -> list[str]:
    with session_scope() as session:
        return list(session.scalars(select(Message.id).where(Message.campaign_id == campaign_id)))


def queued(campaign_id: str) -> int:
    with session_scope() as session:
        return session.scalar(
            select(func.count()).where(
                Message.campaign_id == campaign_id, Message.status == "queued"
            )
        )


def test_scheduled_single_message_released_on_time(client, auth, dispatched) -> None:
    send_at = (datetime.now(UTC) + timedelta(minutes=10)).replace(microsecond=0)
    resp = client.post(
        "/v1/messages",
        headers=auth,
        json={
            "to": "+12025550143",
            "body": "Reminder: test drive at 10:00",
            "channel": "sms",
            "send_at": send_at.isoformat(),
        },
    )
    assert resp.status_code == 202 and resp.get_json()["status"] == "scheduled"
    mid = resp.get_json()["id"]
    assert dispatched == []
    # The release is given the time: due at send_at, not a microsecond before.
    assert mid not in release_scheduled()
    assert mid not in release_scheduled(now=send_at - timedelta(microseconds=1))
    assert mid in release_scheduled(now=send_at)
    assert mid not in release_scheduled(now=send_at + timedelta(hours=1))  # released once
    assert client.get(f"/v1/messages/{mid}", headers=auth).get_json()["status"] == "queued"


def test_scheduled_message_can_be_canceled_before_due(client, auth, dispatched) -> None:
    send_at = datetime.now(UTC) + timedelta(days=30)
    mid = client.post(
        "/v1/messages",
        headers=auth,
        json={"to": "+12025550143", "body": "x", "channel": "sms", "send_at": send_at.isoformat()},
    ).get_json()["id"]
    assert (
        client.post(f"/v1/messages/{mid}/cancel", headers=auth).get_json()["status"] == "canceled"
    )
    with session_scope() as session:
        session.execute(
            update(Message).where(Message.id == mid).values(send_at=utcnow() - timedelta(seconds=1))
        )
    assert mid not in release_scheduled()


def test_campaign_model_defaults(client, auth) -> None:
    cid = create(client, auth, recipients=[{"to": "+12025550101"}]).get_json()["id"]
    with session_scope() as session:
        campaign = session.get(Campaign, cid)
        assert campaign.total == 1 and campaign.status == "running"


def test_the_beat_task_releases_due_scheduled_messages(client, auth, dispatched) -> None:
    from workers.tasks import release_due

    send_at = datetime.now(UTC) + timedelta(minutes=10)
    mid = client.post(
        "/v1/messages",
        headers=auth,
        json={"to": "+12025550143", "body": "x", "channel": "sms", "send_at": send_at.isoformat()},
    ).get_json()["id"]
    release_due.run()
    assert (mid, "herald.send") not in dispatched
    with session_scope() as session:  # its time has come (the row moves, not the clock)
        session.execute(
            update(Message).where(Message.id == mid).values(send_at=utcnow() - timedelta(seconds=1))
        )
    release_due.run()
    assert dispatched.count((mid, "herald.send")) == 1


def test_cancel_records_events_and_owes_the_tenant_its_status_events(
    client, auth, tenant, dispatched
) -> None:
    from models import EventDelivery, MessageEvent, Tenant

    with session_scope() as session:
        session.execute(
            update(Tenant)
            .where(Tenant.id == tenant["tenant_id"])
            .values(callback_url="https://tenant.example/herald-events")
        )
    cid = create(
        client, auth, recipients=[{"to": f"+120255501{n:02d}"} for n in range(3)]
    ).get_json()["id"]
    client.post(f"/v1/campaigns/{cid}/cancel", headers=auth)
    ids = ids_of(cid)
    with session_scope() as session:
        history = session.scalars(
            select(MessageEvent.message_id).where(
                MessageEvent.message_id.in_(ids), MessageEvent.status == "canceled"
            )
        ).all()
        owed = session.scalars(
            select(EventDelivery.payload).where(EventDelivery.message_id.in_(ids))
        ).all()
    assert sorted(history) == sorted(ids)
    assert len(owed) == 3 and all(p["message"]["status"] == "canceled" for p in owed)
    assert set(dispatched.events) >= set(ids)


def test_rows_written_while_the_next_chunk_is_read_keep_every_rule(client, auth, tenant) -> None:
    """Chunks of 1,000 are written in pipeline mode while the next is validated: the
    contact lookup, the opt-out lookup and the repeat check of a later chunk still see
    what the earlier ones wrote, and the counts add up."""
    with session_scope() as session:
        session.get(Tenant, tenant["tenant_id"]).daily_limit = 0  # unlimited
        session.add(Contact(tenant_id=tenant["tenant_id"], phone="+12025552400", opted_out=True))
        session.add(Contact(tenant_id=tenant["tenant_id"], phone="+12025551500", external_id="k15"))
    recipients = [{"to": f"+1202555{n:04d}"} for n in range(2500)]
    recipients[1500] = {"contact_id": "k15"}  # chunk 2: a lookup while chunk 1 is written
    recipients[2100] = {"to": "+12025550100"}  # chunk 3 repeats a number of chunk 1
    resp = create(client, auth, recipients=recipients)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["counts"]["skipped"] == 1  # 2400, opted out, in chunk 3
    assert body["duplicates"] == 1 and body["invalid"] == 0
    assert body["total"] == 2498
    with session_scope() as session:
        rows = session.scalar(select(func.count()).where(Message.campaign_id == body["id"]))
        contact = session.scalar(
            select(Message.contact_id).where(
                Message.campaign_id == body["id"], Message.to_number == "+12025551500"
            )
        )
    assert rows == 2498 and contact == "k15"


def test_a_failed_chunk_insert_is_raised_at_the_next_statement(tenant) -> None:
    """An INSERT sent without waiting fails at the next statement on the connection, as
    SQLAlchemy raises any error (a DBAPIError the error handlers know), not later or
    never."""
    import pytest
    from sqlalchemy.exc import DBAPIError

    from services.campaigns.campaigns import _ChunkWriter

    now = utcnow()
    row = {
        "id": "msg_chunk_writer_test",
        "tenant_id": tenant["tenant_id"],
        "direction": "outbound",
        "channel": "sms",
        "provider": "twilio",
        "to_number": "+12025550101",
        "status": "scheduled",  # and no `attempts`, which may not be null
        "created_at": now,
        "updated_at": now,
    }
    with (
        pytest.raises(DBAPIError, match="attempts"),
        session_scope() as session,
        _ChunkWriter(session) as writer,
    ):
        writer.insert_ignoring_repeats([row])
        session.scalar(select(func.count()).select_from(Campaign))


def test_a_chunk_insert_on_a_lost_connection_is_raised_as_sqlalchemy_raises_it(tenant) -> None:
    """The connection gone when a chunk is sent: the error is SQLAlchemy's, flagged as a
    lost connection (what the API answers 503 and the session discards), not the
    driver's own, which the API would answer 500."""
    import pytest
    from sqlalchemy.exc import DBAPIError

    from services.campaigns.campaigns import _ChunkWriter

    now = utcnow()
    row = {"id": "msg_chunk_writer_lost", "to_number": "+12025550101", "created_at": now}
    session = new_session()
    try:
        writer = _ChunkWriter(session)
        writer._driver.close()
        with pytest.raises(DBAPIError) as raised, writer:
            writer.insert_ignoring_repeats([row])
        assert raised.value.connection_invalidated
    finally:
        session.close()
