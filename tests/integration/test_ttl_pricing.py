"""ttl and pricing through the real provider clients and the sandbox: Twilio gets the
remaining ttl as ValidityPeriod (and fails a message it could not send in time with
30036, which Herald names `expired`); Meta's pricing reaches the message by webhook."""

from __future__ import annotations

import httpx
import pytest

from models import Message, session_scope
from services.messages.delivery import deliver
from tests.conftest import TWILIO_SID, TWILIO_TOKEN
from tests.integration.conftest import wait_for

SLOW = "+12015550136"  # the sandbox's slow Twilio queue (600 s)


def create(client, auth, **fields) -> str:  # type: ignore[no-untyped-def]
    body = {"to": "+12025550143", "channel": "sms", "body": "Your code is 123456", **fields}
    body = {k: v for k, v in body.items() if v is not None}
    resp = client.post("/v1/messages", json=body, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def load(message_id: str) -> Message:
    with session_scope() as session:
        message = session.get(Message, message_id)
        assert message is not None
        session.expunge(message)
        return message


def test_twilio_gets_the_remaining_ttl_as_validity_period(live, client, auth, dispatched) -> None:
    short = create(client, auth, ttl=600)
    long = create(client, auth, ttl=3 * 24 * 3600)
    plain = create(client, auth)
    for mid in (short, long, plain):
        assert deliver(mid).action == "sent"
    (sent,) = live.sends(herald_id=short)
    assert 1 <= int(sent["request"]["ValidityPeriod"]) <= 600
    (sent,) = live.sends(herald_id=long)
    assert sent["request"]["ValidityPeriod"] == "36000"  # Twilio's maximum
    (sent,) = live.sends(herald_id=plain)
    assert "ValidityPeriod" not in sent["request"]


def test_a_validity_period_passing_at_twilio_ends_expired(live, client, auth, dispatched) -> None:
    mid = create(client, auth, to=SLOW, ttl=60)
    assert deliver(mid).action == "sent"
    wait_for(lambda: load(mid).status == "failed", what="failed callback")
    message = load(mid)
    assert (message.error_code, message.provider_error_code) == ("expired", "30036")
    # Without a ttl, Twilio's own 36,000 s outlasts the slow queue.
    patient = create(client, auth, to=SLOW)
    assert deliver(patient).action == "sent"
    wait_for(lambda: load(patient).status == "delivered", what="delivered callback")


def test_the_sandbox_refuses_a_validity_period_twilio_refuses(live) -> None:
    url = f"{live.sandbox.url}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    form = {"To": "+12025550143", "From": "+12025550100", "Body": "x"}
    with httpx.Client(auth=(TWILIO_SID, TWILIO_TOKEN), timeout=10) as http:
        for bad in ("0", "36001", "1.5", "soon"):
            resp = http.post(url, data={**form, "ValidityPeriod": bad})
            assert resp.status_code == 400 and resp.json()["code"] == 21624, bad
        assert http.post(url, data={**form, "ValidityPeriod": "36000"}).status_code == 201


def test_meta_pricing_is_recorded_from_the_status_webhook(live, client, auth, dispatched) -> None:
    free_form = create(client, auth, channel="whatsapp", provider="meta", body="Hello")
    template = create(
        client,
        auth,
        channel="whatsapp",
        provider="meta",
        body=None,
        template={"name": "order_update", "language": "en_US"},
    )
    for mid in (free_form, template):
        assert deliver(mid).action == "sent"
    wait_for(lambda: load(template).pricing_category is not None, what="priced status")
    wait_for(lambda: load(free_form).pricing_category is not None, what="priced status")
    assert (load(template).pricing_category, load(template).billable) == ("utility", True)
    assert (load(free_form).pricing_category, load(free_form).billable) == ("service", False)


def test_the_sandbox_bills_an_sms_per_segment_as_a_carrier_counts_them(live) -> None:
    url = f"{live.sandbox.url}/2010-04-01/Accounts/{TWILIO_SID}/Messages"
    form = {"To": "+12025550143", "From": "+12025550100"}
    with httpx.Client(auth=(TWILIO_SID, TWILIO_TOKEN), timeout=10) as http:
        sids = {}
        # 160 GSM-7 characters (é is one), one curly quote (UCS-2: 161 units, 3 parts),
        # 80 extension characters (two septets each: 1 segment), 81 (2 segments).
        for body, segments in (
            ("é" * 160, 1),
            ("\u2019" + "a" * 160, 3),
            ("[" * 80, 1),
            ("[" * 81, 2),
        ):
            created = http.post(f"{url}.json", data={**form, "Body": body})
            assert created.status_code == 201, created.text
            assert created.json()["num_segments"] == str(segments), body[:3]
            sids[created.json()["sid"]] = segments

        def priced() -> bool:
            return all(http.get(f"{url}/{sid}.json").json()["price"] for sid in sids)

        wait_for(priced, what="prices")
        for sid, segments in sids.items():
            price = float(http.get(f"{url}/{sid}.json").json()["price"])
            assert price == pytest.approx(-0.0079 * segments), (sid, segments)
