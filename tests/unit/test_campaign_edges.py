"""Campaign edges: progress counts only what no callback changes, a campaign that would
send nothing is refused, the list pages by keyset, pool errors name `senders`."""

from __future__ import annotations

import io
import json
from datetime import timedelta

from sqlalchemy import select, text

from core.ids import new_id
from models import Contact, Message, session_scope, utcnow
from services.campaigns.campaigns import release_due_campaigns
from services.messages.status import apply_status
from tests.conftest import make_tenant, statements_run
from tests.unit.test_console import sign_in

PHONES = [f"+1202555{n:04d}" for n in range(150, 160)]


def create(client, auth, **fields):  # type: ignore[no-untyped-def]
    body = {"name": "Sale", "channel": "sms", "body": "Offer!", "rate": 100, **fields}
    return client.post("/v1/campaigns", json=body, headers=auth)


def _move(campaign_id: str, statuses: list[str]) -> None:
    """Move the campaign's messages, in id order, through to each status given."""
    release_due_campaigns(utcnow() + timedelta(seconds=5))
    with session_scope() as session:
        ids = session.scalars(
            select(Message.id).where(Message.campaign_id == campaign_id).order_by(Message.id)
        ).all()
        for message_id, final in zip(ids, statuses, strict=False):
            for status in ("sending", "sent", "delivered", "read"):
                if final in ("failed", "undelivered") and status == "delivered":
                    apply_status(session, message_id, final, source="test")
                    break
                apply_status(session, message_id, status, source="test")
                if status == final:
                    break


def test_progress_does_not_count_sent_as_final(client, auth, dispatched) -> None:
    made = create(client, auth, recipients=[{"to": p} for p in PHONES[:4]]).get_json()
    _move(made["id"], ["sent", "sent", "delivered", "failed"])
    shown = client.get(f"/v1/campaigns/{made['id']}", headers=auth).get_json()
    assert shown["counts"]["sent"] == 2
    assert shown["progress"] == 0.5  # delivered and failed; the two `sent` may still change


def test_a_canceled_campaign_shows_how_much_went_out(client, auth, dispatched) -> None:
    made = create(client, auth, recipients=[{"to": p} for p in PHONES[:4]], rate=1).get_json()
    _move(made["id"], ["delivered"])  # rate 1: one released, the rest still scheduled
    canceled = client.post(f"/v1/campaigns/{made['id']}/cancel", headers=auth).get_json()
    assert canceled["status"] == "canceled" and canceled["counts"]["canceled"] == 3
    assert canceled["progress"] == 0.25  # not 1.0: three of four never went out


def test_a_campaign_that_would_send_nothing_is_refused(client, auth, tenant, dispatched) -> None:
    for recipients in ([], None):
        body = {} if recipients is None else {"recipients": recipients}
        resp = create(client, auth, **body)
        assert resp.status_code == 400, resp.get_json()
        error = resp.get_json()["error"]
        assert error["code"] == "no_recipients" and "recipients" in error["fields"]
    csv = {"campaign": json.dumps({"name": "x", "channel": "sms", "body": "hi"})}
    upload = {**csv, "file": (io.BytesIO(b"to\n"), "empty.csv")}
    resp = client.post(
        "/v1/campaigns", data=upload, headers=auth, content_type="multipart/form-data"
    )
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "no_recipients"
    resp = create(client, auth, recipients=[{"to": "nope"}, {"to": "12"}])
    error = resp.get_json()["error"]
    assert resp.status_code == 400 and error["code"] == "no_valid_recipients"
    assert error["fields"]["recipients"][0].startswith("row 1: invalid phone number")
    with session_scope() as session:
        assert not session.scalars(
            select(Message.id).where(Message.tenant_id == tenant["tenant_id"])
        ).first()
        # Everyone opted out is no mistake: created, each skipped.
        session.add(Contact(tenant_id=tenant["tenant_id"], phone=PHONES[0], opted_out=True))
    resp = create(client, auth, recipients=[{"to": PHONES[0]}])
    assert resp.status_code == 201 and resp.get_json()["counts"]["skipped"] == 1


def test_campaigns_are_listed_newest_first_by_keyset(client, auth, dispatched) -> None:
    made = [
        create(client, auth, name=f"c{n}", recipients=[{"to": PHONES[n]}]).get_json()["id"]
        for n in range(3)
    ]
    client.post(f"/v1/campaigns/{made[1]}/cancel", headers=auth)
    make_tenant("other")  # whose campaigns never show here
    first = client.get("/v1/campaigns?limit=2", headers=auth).get_json()
    assert [c["id"] for c in first["data"]] == [made[2], made[1]]
    assert first["data"][0]["progress"] == 0 and first["next_cursor"] == made[1]
    second = client.get(f"/v1/campaigns?limit=2&cursor={first['next_cursor']}", headers=auth)
    assert [c["id"] for c in second.get_json()["data"]] == [made[0]]
    assert second.get_json()["next_cursor"] is None
    canceled = client.get("/v1/campaigns?status=canceled", headers=auth).get_json()
    assert [c["id"] for c in canceled["data"]] == [made[1]]
    for query in ("cursor=garbage", f"cursor={new_id('msg')}", "limit=0", "status=done", "x=1"):
        resp = client.get(f"/v1/campaigns?{query}", headers=auth)
        assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_fields"


def test_a_page_of_campaigns_reads_their_counts_in_one_statement(
    app, client, auth, tenant, dispatched
) -> None:
    """The list (API and console) reads every campaign's counts at once, not one
    statement per campaign, and each shows the counts its own page shows."""
    made = [
        create(
            client, auth, name=f"p{n}", recipients=[{"to": p} for p in PHONES[: n + 1]]
        ).get_json()["id"]
        for n in range(4)
    ]
    _move(made[2], ["delivered", "failed"])
    client.post(f"/v1/campaigns/{made[1]}/cancel", headers=auth)
    console = app.test_client()
    assert sign_in(console, tenant["api_key"]).status_code == 302
    with statements_run() as statements:
        listed = client.get("/v1/campaigns", headers=auth).get_json()["data"]
        api_reads = sum("FROM message_counts" in s for s, _ in statements)
        page = console.get("/console/campaigns")
    assert page.status_code == 200 and "p3" in page.get_data(as_text=True)
    assert api_reads == 1
    assert sum("FROM message_counts" in s for s, _ in statements) == 2  # and one for the console
    assert [c["id"] for c in listed] == made[::-1]
    for shown in listed:
        alone = client.get(f"/v1/campaigns/{shown['id']}", headers=auth).get_json()
        assert shown["counts"] == alone["counts"] and shown["progress"] == alone["progress"]
    assert listed[1]["counts"]["delivered"] == 1 and listed[1]["counts"]["failed"] == 1
    assert listed[2]["counts"]["canceled"] == 2


def test_the_campaign_list_reads_its_page_through_the_tenant_id_index(tenant) -> None:
    with session_scope() as session:
        session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = session.execute(
            text(
                "EXPLAIN (FORMAT JSON) SELECT id FROM campaigns WHERE tenant_id = :t "
                "AND id < :c ORDER BY id DESC LIMIT 51"
            ),
            {"t": tenant["tenant_id"], "c": new_id("cmp")},
        ).scalar_one()
        plan = plan if isinstance(plan, list) else json.loads(plan)
    outline = json.dumps(plan)
    assert "ix_campaigns_tenant_id_id" in outline and '"Sort"' not in outline, outline


def test_pool_errors_name_senders(client, auth, dispatched) -> None:
    resp = create(client, auth, senders=["+12025559999"], recipients=[{"to": PHONES[0]}])
    error = resp.get_json()["error"]
    assert resp.status_code == 422 and list(error["fields"]) == ["senders"], error
    resp = create(client, auth, senders=["not a sender!"], recipients=[{"to": PHONES[0]}])
    error = resp.get_json()["error"]
    assert (
        resp.status_code == 400 and "senders" in error["fields"] and "from" not in error["fields"]
    )


def test_a_contact_known_by_a_long_id_of_the_tenants_is_sent_to(
    client, auth, tenant, dispatched
) -> None:
    """A contact's id may be the tenant's own, up to 128 characters (POST /v1/contacts):
    a message or a campaign to it records that id, never a 500."""
    own = "crm-" + "7" * 100
    made = client.post("/v1/contacts", json={"id": own, "phone": PHONES[9]}, headers=auth)
    assert made.status_code in (200, 201), made.get_json()
    sent = client.post(
        "/v1/messages", json={"contact_id": own, "body": "hi", "channel": "sms"}, headers=auth
    )
    assert sent.status_code == 202, sent.get_json()
    campaign = create(client, auth, recipients=[{"contact_id": own}])
    assert campaign.status_code == 201, campaign.get_json()
    with session_scope() as session:
        stored = session.scalars(
            select(Message.contact_id).where(
                Message.tenant_id == tenant["tenant_id"], Message.contact_id == own
            )
        ).all()
    assert len(stored) == 2
