"""Resend what failed: a new message linked to the original, through every check a new
message passes; a campaign's failed rows in one call; never a message twice."""

from __future__ import annotations

from sqlalchemy import func, select, update

from models import Contact, Message, session_scope
from tests.conftest import make_tenant

TO = "+12025550143"


def _send(client, auth, **fields) -> str:  # type: ignore[no-untyped-def]
    body = {"to": TO, "channel": "sms", "body": "Your car is ready", **fields}
    resp = client.post("/v1/messages", json=body, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def _set_status(ids: list[str], status: str) -> None:
    with session_scope() as session:
        session.execute(update(Message).where(Message.id.in_(ids)).values(status=status))


def _count(tenant_id: str) -> int:
    with session_scope() as session:
        return session.scalar(
            select(func.count()).select_from(Message).where(Message.tenant_id == tenant_id)
        )


def test_a_failed_message_is_resent_once_and_linked_both_ways(client, auth, dispatched) -> None:
    original = _send(client, auth, metadata={"order": "A-17"})
    _set_status([original], "failed")
    resp = client.post(f"/v1/messages/{original}/resend", headers=auth)
    assert resp.status_code == 202, resp.get_json()
    again = resp.get_json()
    assert again["id"] != original and again["resend_of"] == original
    assert (again["to"], again["body"], again["metadata"]) == (
        TO,
        "Your car is ready",
        {"order": "A-17"},
    )
    assert again["status"] == "queued" and any(i == again["id"] for i, _ in dispatched)
    assert (
        client.get(f"/v1/messages/{original}", headers=auth).get_json()["resent_as"] == again["id"]
    )
    # A retried call answers the first resend: never a second message.
    replay = client.post(f"/v1/messages/{original}/resend", headers=auth)
    assert replay.status_code == 200 and replay.get_json()["id"] == again["id"]
    # The resend failed too: resend the resend.
    _set_status([again["id"]], "undelivered")
    third = client.post(f"/v1/messages/{again['id']}/resend", headers=auth)
    assert third.status_code == 202 and third.get_json()["resend_of"] == again["id"]


def test_only_a_failed_outbound_message_of_ones_own_is_resent(client, auth, tenant) -> None:
    delivered = _send(client, auth)
    _set_status([delivered], "delivered")
    resp = client.post(f"/v1/messages/{delivered}/resend", headers=auth)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "not_resendable"
    assert client.post("/v1/messages/msg_nope/resend", headers=auth).status_code == 404
    erased = _send(client, auth)
    with session_scope() as session:  # what an erasure leaves (services/privacy/erasure.py)
        session.execute(
            update(Message)
            .where(Message.id == erased)
            .values(status="failed", to_number=f"erased:{erased[-24:]}", body=None)
        )
    resp = client.post(f"/v1/messages/{erased}/resend", headers=auth)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "not_resendable"
    other = make_tenant("other")
    theirs = _send(client, {"Authorization": f"Bearer {other['api_key']}"})
    _set_status([theirs], "failed")
    before = _count(tenant["tenant_id"])
    assert client.post(f"/v1/messages/{theirs}/resend", headers=auth).status_code == 404
    assert _count(tenant["tenant_id"]) == before


def test_a_resend_passes_the_checks_of_a_new_message(client, auth, tenant) -> None:
    original = _send(client, auth)
    _set_status([original], "failed")
    with session_scope() as session:  # the person opts out meanwhile
        session.execute(
            update(Contact)
            .where(Contact.tenant_id == tenant["tenant_id"], Contact.phone == TO)
            .values(opted_out=True)
        )
    before = _count(tenant["tenant_id"])
    resp = client.post(f"/v1/messages/{original}/resend", headers=auth)
    assert resp.status_code == 422, resp.get_json()
    assert _count(tenant["tenant_id"]) == before
    assert "resent_as" not in client.get(f"/v1/messages/{original}", headers=auth).get_json()


def test_a_campaigns_failed_rows_are_resent_in_one_call(client, auth, tenant, dispatched) -> None:
    recipients = [{"to": f"+1202555014{n}"} for n in range(4, 8)]
    campaign = client.post(
        "/v1/campaigns",
        headers=auth,
        json={"name": "offer", "channel": "sms", "body": "Offer!", "recipients": recipients},
    ).get_json()
    with session_scope() as session:
        rows = dict(
            session.execute(
                select(Message.to_number, Message.id).where(Message.campaign_id == campaign["id"])
            ).all()
        )
        session.add(Contact(tenant_id=tenant["tenant_id"], phone="+12025550146", opted_out=True))
    _set_status([rows["+12025550144"], rows["+12025550145"], rows["+12025550146"]], "failed")
    _set_status([rows["+12025550147"]], "delivered")
    resp = client.post(f"/v1/campaigns/{campaign['id']}/resend", headers=auth)
    assert resp.status_code == 200, resp.get_json()
    answer = resp.get_json()
    assert answer["resent"] == 2 and sum(answer["refused"].values()) == 1, answer
    with session_scope() as session:
        resends = session.scalars(
            select(Message).where(
                Message.tenant_id == tenant["tenant_id"], Message.origin == "resend"
            )
        ).all()
        assert sorted(m.to_number for m in resends) == ["+12025550144", "+12025550145"]
        assert {m.body for m in resends} == {"Offer!"} and {m.campaign_id for m in resends} == {
            None
        }
        linked = session.get(Message, rows["+12025550144"])
        assert linked.options["resent_as"] in {m.id for m in resends}
        assert "body" not in (linked.options or {})  # the row kept only its own options
    again = client.post(f"/v1/campaigns/{campaign['id']}/resend", headers=auth).get_json()
    assert again["resent"] == 0  # resends nothing twice
    assert client.post("/v1/campaigns/cmp_nope/resend", headers=auth).status_code == 404


def test_the_console_resends_a_failed_message_and_a_campaigns_failed_rows(
    app, client, auth, tenant, dispatched
) -> None:
    from tests.unit.test_console import _csrf, sign_in

    console = app.test_client()
    assert sign_in(console, tenant["api_key"]).status_code == 302
    original = _send(client, auth)
    page = console.get(f"/console/messages/{original}").get_data(as_text=True)
    assert "Resend</button>" not in page  # queued: nothing to resend
    _set_status([original], "failed")
    page = console.get(f"/console/messages/{original}").get_data(as_text=True)
    assert "Resend</button>" in page
    token = _csrf(console, f"/console/messages/{original}")
    resp = console.post(f"/console/messages/{original}/resend", data={"csrf_token": token})
    assert resp.status_code == 302
    new_id = resp.headers["Location"].rsplit("/", 1)[-1]
    shown = console.get(f"/console/messages/{new_id}").get_data(as_text=True)
    assert original in shown  # "Resends <original>"
    page = console.get(f"/console/messages/{original}").get_data(as_text=True)
    assert "Resend</button>" not in page and new_id in page
    # A campaign's failed rows.
    campaign = client.post(
        "/v1/campaigns",
        headers=auth,
        json={"name": "c", "channel": "sms", "body": "Offer!", "recipients": [{"to": TO}]},
    ).get_json()
    with session_scope() as session:
        row = session.scalars(select(Message.id).where(Message.campaign_id == campaign["id"])).one()
    _set_status([row], "failed")
    token = _csrf(console, f"/console/campaigns/{campaign['id']}")
    resp = console.post(f"/console/campaigns/{campaign['id']}/resend", data={"csrf_token": token})
    assert resp.status_code == 302
    with session_scope() as session:
        assert session.get(Message, row).options["resent_as"]


def test_one_failure_reason_per_code_and_an_honest_empty_chart(client, auth, tenant) -> None:
    from datetime import UTC, datetime, timedelta

    from api.console.charts import send_rate_chart
    from services.reporting.console import failure_reasons

    herald, twilio = _send(client, auth), _send(client, auth)
    with session_scope() as session:
        session.execute(
            update(Message)
            .where(Message.id == herald)
            .values(status="failed", error_code="expired")
        )
        session.execute(
            update(Message)
            .where(Message.id == twilio)
            .values(status="failed", error_code="expired", provider_error_code="30036")
        )
        reasons = failure_reasons(
            session, tenant["tenant_id"], since=datetime.now(UTC) - timedelta(days=1)
        )
    assert [(r["code"], r["count"], r["providers"]) for r in reasons] == [
        ("expired", 2, ["twilio 30036"])
    ]
    now = datetime.now(UTC)
    assert send_rate_chart(now, [0] * 60, 5.0).empty_text == "No messages yet"
    quiet = send_rate_chart(now, [0] * 60, 5.0, sent_before=True)
    assert quiet.empty_text == "No sends in this minute"
    assert quiet.line is not None and abs(quiet.empty_y - quiet.line) > 8  # clear of the line
