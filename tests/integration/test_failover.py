"""Channel failover against the sandbox: a WhatsApp message WhatsApp cannot deliver is
sent again as an SMS through Twilio, once (services/messages/failover.py)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update

from models import EventDelivery, Message, MessageEvent, session_scope, utcnow
from services.messages.delivery import deliver
from services.messages.failover import sweep_failovers
from tests.conftest import make_tenant, open_window
from tests.integration.conftest import wait_for
from tests.integration.test_delivery import load

HOOK = "https://tenant.example.com/herald-events"
OFFLINE = "+12015550160"  # sandbox: Meta `sent`, `delivered` only once it comes online


def create(client, auth, to: str, **fields) -> str:  # type: ignore[no-untyped-def]
    body = {"to": to, "body": "Your code is 4711", "callback_url": HOOK, **fields}
    resp = client.post("/v1/messages", json=body, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def sweep(message_id: str, **kwargs) -> list[str]:  # type: ignore[no-untyped-def]
    """The fallbacks of `message_id` a sweep made (another test's pending rows may be
    settled by the same sweep)."""
    return [f for f in sweep_failovers(**kwargs) if load(f).failover_of == message_id]


def events_out(message_id: str) -> list[dict]:
    with session_scope() as session:
        return [
            e.payload
            for e in session.scalars(
                select(EventDelivery)
                .where(EventDelivery.message_id == message_id)
                .order_by(EventDelivery.id)
            )
        ]


def test_not_on_whatsapp_falls_back_to_sms_once(live, client, auth, dispatched) -> None:
    mid = create(client, auth, "+15005550011", failover={"body": "Code 4711 (SMS)"})
    assert client.get(f"/v1/messages/{mid}", headers=auth).get_json()["failover"] == {
        "body": "Code 4711 (SMS)",
        "channel": "sms",
    }
    assert deliver(mid).action == "sent"
    wait_for(lambda: load(mid).status == "failed", what="Meta's failed 131026")
    (fallback,) = sweep(mid)
    assert sweep(mid) == []  # once

    original = client.get(f"/v1/messages/{mid}", headers=auth).get_json()
    assert original["status"] == "failed" and original["error"]["provider_code"] == "131026"
    assert original["failover_id"] == fallback
    sms = client.get(f"/v1/messages/{fallback}", headers=auth).get_json()
    assert (sms["channel"], sms["provider"], sms["failover_of"]) == ("sms", "twilio", mid)
    assert sms["body"] == "Code 4711 (SMS)" and sms["to"] == "+15005550011"

    assert deliver(fallback).action == "sent"
    (send,) = live.sends(herald_id=fallback)
    assert send["channel"] == "sms" and send["body"] == "Code 4711 (SMS)"
    (event,) = [e for e in events_out(mid) if e["type"] == "message.failover"]
    assert event["fallback"]["id"] == fallback and event["message"]["failover_id"] == fallback


def test_window_closed_at_meta_falls_back_with_the_same_text(
    live, client, auth, dispatched
) -> None:
    mid = create(client, auth, "+15005550012", failover={})  # Meta: 400 131047
    assert deliver(mid).action == "failed"
    (fallback,) = sweep(mid)
    assert load(fallback).body == "Your code is 4711"
    assert load(mid).failover_id == fallback


def test_a_failure_sms_cannot_cure_does_not_fall_back(
    live, client, auth, tenant, dispatched
) -> None:
    open_window(tenant["tenant_id"], "+12015550150")
    mid = create(client, auth, "+12015550150", failover={})  # 131050: stopped marketing
    deliver(mid)
    wait_for(lambda: load(mid).status == "failed", what="Meta's failed 131050")
    assert sweep(mid) == []
    assert load(mid).failover_pending is False and load(mid).failover_id is None


def test_deadline_falls_back_and_a_late_delivery_is_reported(
    live, client, auth, tenant, dispatched
) -> None:
    open_window(tenant["tenant_id"], OFFLINE)
    mid = create(client, auth, OFFLINE, failover={"after_seconds": 600})
    assert deliver(mid).action == "sent"
    wait_for(lambda: load(mid).provider_message_id, what="the wamid")
    assert sweep(mid) == []  # not due yet
    (fallback,) = sweep(mid, now=utcnow() + timedelta(seconds=601))
    original = load(mid)
    assert (original.status, original.error_code) == ("failed", "failover_deadline")
    assert original.failover_id == fallback

    live.control.post("/_sandbox/online", json={"to": OFFLINE}).raise_for_status()

    def late() -> bool:
        with session_scope() as session:
            return bool(
                session.scalar(
                    select(func.count()).where(
                        MessageEvent.message_id == mid,
                        MessageEvent.status == "delivered",
                        MessageEvent.applied.is_(False),
                    )
                )
            )

    wait_for(late, what="the late delivered, recorded")
    assert load(mid).status == "failed"  # nothing undone, nothing moved back
    reported = [e for e in events_out(mid) if e["type"] == "message.late_status"]
    assert reported and reported[0]["status"] == "delivered"
    assert reported[0]["message"]["failover_id"] == fallback


def test_delivered_before_the_deadline_never_falls_back(live, client, auth, dispatched) -> None:
    mid = create(client, auth, "+12025550143", failover={"after_seconds": 60})
    deliver(mid)
    wait_for(lambda: load(mid).status == "read", what="read")
    assert sweep(mid, now=utcnow() + timedelta(seconds=61)) == []
    assert load(mid).failover_pending is False and load(mid).status == "read"


def test_a_queued_message_past_its_deadline_is_never_sent(live, client, auth, dispatched) -> None:
    mid = create(client, auth, "+12025550143", failover={"after_seconds": 60})
    (fallback,) = sweep(mid, now=utcnow() + timedelta(seconds=61))
    assert load(mid).status == "failed"
    assert deliver(mid).action == "skipped"
    assert live.sends(herald_id=mid) == []
    assert load(fallback).failover_of == mid


def test_a_repeated_sweep_after_a_crash_makes_no_second_fallback(
    live, client, auth, dispatched
) -> None:
    mid = create(client, auth, "+15005550012", failover={})
    deliver(mid)
    (fallback,) = sweep(mid)
    with session_scope() as session:  # as if the original's settling were lost
        session.execute(
            update(Message).where(Message.id == mid).values(failover_pending=True, failover_id=None)
        )
    assert sweep(mid) == [fallback]  # the same one, found by its key
    with session_scope() as session:
        count = session.scalar(select(func.count()).where(Message.failover_of == mid))
    assert count == 1 and load(mid).failover_id == fallback


def test_a_refused_fallback_is_kept_and_reported(live, client, auth, tenant, dispatched) -> None:
    mid = create(client, auth, "+15005550012", failover={})
    assert deliver(mid).action == "failed"  # Meta: 131047
    with session_scope() as session:  # the person texted STOP meanwhile
        from models import Contact

        session.execute(
            update(Contact)
            .where(Contact.tenant_id == tenant["tenant_id"], Contact.phone == "+15005550012")
            .values(opted_out=True)
        )
    assert sweep(mid) == []
    assert load(mid).failover_pending is False and load(mid).failover_id is None
    (event,) = [e for e in events_out(mid) if e["type"] == "message.failover"]
    assert event["fallback"] is None and event["refusal"]["code"] == "opted_out"


def test_failover_is_checked_when_the_message_is_accepted(client, auth) -> None:
    def post(**fields):  # type: ignore[no-untyped-def]
        body = {"to": "+12025550143", "body": "hi", **fields}
        return client.post("/v1/messages", json=body, headers=auth)

    sms = post(channel="sms", failover={})
    assert sms.status_code == 400 and "failover" in sms.get_json()["error"]["fields"]
    template = {"name": "order_update", "language": "en_US"}
    resp = client.post(
        "/v1/messages",
        json={"to": "+12025550143", "template": template, "failover": {}},
        headers=auth,
    )
    assert resp.status_code == 400 and "failover" in resp.get_json()["error"]["fields"]
    assert post(failover={"after_seconds": 0}).status_code == 400
    assert post(failover={"channel": "voice"}).status_code == 400

    meta_only = make_tenant("metaonly", twilio={})
    resp = client.post(
        "/v1/messages",
        json={"to": "+12025550143", "body": "hi", "failover": {}},
        headers={"Authorization": f"Bearer {meta_only['api_key']}"},
    )
    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "failover_unavailable"


def test_a_tenant_policy_gives_every_whatsapp_message_its_fallback(
    live, client, auth, tenant, admin, dispatched
) -> None:
    path = f"/admin/v1/tenants/{tenant['tenant_id']}"
    bad = client.patch(path, json={"failover": {"after_seconds": -1}}, headers=admin)
    assert bad.status_code == 400
    resp = client.patch(path, json={"failover": {"after_seconds": 300}}, headers=admin)
    assert resp.status_code == 200 and resp.get_json()["failover"]["after_seconds"] == 300

    mid = create(client, auth, "+15005550012")  # no `failover`: the tenant's applies
    shown = client.get(f"/v1/messages/{mid}", headers=auth).get_json()
    assert shown["failover"] == {"channel": "sms", "after_seconds": 300} and shown["failover_at"]
    kept_out = create(client, auth, "+15005550012", failover=None, body="no fallback")
    assert "failover" not in client.get(f"/v1/messages/{kept_out}", headers=auth).get_json()
    sms = create(client, auth, "+15005550012", channel="sms")  # SMS: nothing to fall back
    assert "failover" not in client.get(f"/v1/messages/{sms}", headers=auth).get_json()

    assert deliver(mid).action == "failed" and deliver(kept_out).action == "failed"
    (fallback,) = sweep(mid)
    assert load(fallback).failover_of == mid and load(kept_out).failover_id is None


def test_a_closed_window_at_acceptance_goes_straight_to_sms(live, client, auth, dispatched) -> None:
    silent = "+12025550177"  # never wrote: Herald knows its window is closed
    refused = client.post("/v1/messages", json={"to": silent, "body": "hi"}, headers=auth)
    assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "window_closed"
    resp = client.post(
        "/v1/messages", json={"to": silent, "body": "hi", "failover": {}}, headers=auth
    )
    assert resp.status_code == 202
    answer = resp.get_json()
    assert answer["status"] == "failed" and answer["error"]["code"] == "window_closed"
    assert answer["id"] not in [i for i, _ in dispatched]  # WhatsApp is never tried
    (fallback,) = sweep(answer["id"])
    assert deliver(fallback).action == "sent"
    assert [s["channel"] for s in live.sends(to=silent)] == ["sms"]


def test_twilio_whatsapp_not_on_whatsapp_falls_back(live, client, auth, tenant, dispatched) -> None:
    number = "+12015550163"  # sandbox: Twilio WhatsApp fails 63003, SMS is delivered
    open_window(tenant["tenant_id"], number)
    mid = create(client, auth, number, provider="twilio", failover={})
    assert deliver(mid).action == "sent"
    wait_for(lambda: load(mid).status == "failed", what="Twilio's failed 63003")
    (fallback,) = sweep(mid)
    assert deliver(fallback).action == "sent"
    wait_for(lambda: load(fallback).status == "delivered", what="the SMS delivered")
    assert [s["channel"] for s in live.sends(to=number)] == ["whatsapp", "sms"]
