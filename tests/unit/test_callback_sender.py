"""A Twilio status callback's `From`: the sender a Messaging Service chose, recorded on the
message; anything that is no sender changes nothing and breaks nothing."""

from __future__ import annotations

import pytest

from models import Message, session_scope
from tests.conftest import TWILIO_SID, TWILIO_TOKEN, make_tenant
from tests.unit.test_webhooks import twilio_status

TO = "+12025550143"


def post(client, auth, **fields):  # type: ignore[no-untyped-def]
    return client.post("/v1/messages", json={"to": TO, **fields}, headers=auth)


def test_twilio_callback_records_the_sender_a_messaging_service_chose(client, dispatched) -> None:
    mg = "MG" + "d" * 32
    tenant = make_tenant(
        "svc",
        meta={},
        twilio={"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "messaging_service_sid": mg},
    )
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    resp = post(client, auth, channel="sms", body="via service")
    assert resp.status_code == 202 and resp.get_json()["from"] is None
    mid = resp.get_json()["id"]
    sid = "SM" + "7" * 32
    resp = twilio_status(client, mid, "sent", sid, From="+15017122661", MessagingServiceSid=mg)
    assert resp.status_code == 204
    assert client.get(f"/v1/messages/{mid}", headers=auth).get_json()["from"] == "+15017122661"
    # A later callback naming another sender changes nothing: the first one sent it.
    twilio_status(client, mid, "delivered", sid, From="+15017122662")
    with session_scope() as session:
        assert session.get(Message, mid).from_number == "+15017122661"


@pytest.mark.parametrize("sender", ["", "x" * 65, "not a sender!", "whatsapp:Herald", "+12ab"])
def test_a_callback_sender_that_is_no_sender_is_ignored(client, auth, dispatched, sender) -> None:
    mid = post(client, auth, channel="sms", body="hi").get_json()["id"]
    assert twilio_status(client, mid, "sent", "SM" + "8" * 32, From=sender).status_code == 204
    message = client.get(f"/v1/messages/{mid}", headers=auth).get_json()
    assert message["status"] == "sent" and message["from"] is None
