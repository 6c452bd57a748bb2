"""Reconciliation after an ambiguous send never adopts another message's SID (issue 10).

Twilio's Message resource does not return the StatusCallback URL (nor anything else
only one attempt carries), so a listed message can be told apart from another Herald
message with the same body, recipient and sender only by elimination."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from core.config import get_settings
from models import MessageEvent, session_scope
from services.messages.delivery import deliver
from tests.conftest import TWILIO_SID, TWILIO_TOKEN, make_tenant
from tests.integration.test_delivery import create, expire_lease, load


def sender_tenant(kind: str) -> dict[str, str]:
    """A tenant sending SMS from a number, or through a Messaging Service (no From)."""
    twilio = {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN}
    if kind == "number":
        twilio["sms_from"] = "+12025550100"
    else:
        twilio["messaging_service_sid"] = "MG" + uuid.uuid4().hex
    return make_tenant(f"reconcile-{kind}", twilio=twilio)


def outside_pair_order(message_id: str) -> None:
    """Pair order (docs/guarantees.md) keeps a later message to the same recipient behind
    one still to send, so these races need a row without a place in it: one accepted
    before pair order existed (no `seq`). Reconciliation must stay safe for those."""
    from sqlalchemy import update

    from models import Message

    with session_scope() as session:
        session.execute(update(Message).where(Message.id == message_id).values(seq=None))


def accepted_sids(live, message_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [s["provider_message_id"] for s in live.sends(herald_id=message_id, accepted="true")]


def status_callback(client, message_id: str, sid: str, status: str = "sent") -> None:  # type: ignore[no-untyped-def]
    """Twilio's status callback for `message_id`, as it would arrive late."""
    path = f"/webhooks/twilio/status?message_id={message_id}"
    params = {"MessageSid": sid, "MessageStatus": status, "AccountSid": TWILIO_SID}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        get_settings().public_url + path, params
    )
    resp = client.post(path, data=params, headers={"X-Twilio-Signature": signature})
    assert resp.status_code == 204, resp.text


@pytest.mark.parametrize("kind", ["number", "service"])
def test_a_retry_never_adopts_the_sid_of_another_message_with_the_same_body(
    live, client, dispatched, kind: str
) -> None:
    tenant = sender_tenant(kind)
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    live.config(callbacks={"enabled": False})
    body = f"Your driver has arrived {uuid.uuid4().hex[:8]}"
    # X: Twilio answers 503 and takes nothing (Herald cannot tell: ambiguous).
    live.fault(provider="twilio", status=503, code=20503, count=1)
    x = create(client, auth, channel="sms", body=body)
    assert deliver(x).action == "retry"
    outside_pair_order(x)
    # Y: Twilio takes it but answers 500.
    live.fault(provider="twilio", status=500, code=20500, count=1, mode="accept_then_error")
    y = create(client, auth, channel="sms", body=body)
    assert deliver(y).action == "retry"
    (y_sid,) = accepted_sids(live, y)

    # X's retry finds Y's copy at Twilio; it cannot tell it is not its own: no adoption,
    # no resend, settle again.
    expire_lease(x)
    assert deliver(x).action == "retry"
    assert load(x).provider_message_id is None and load(x).status == "sending"
    assert accepted_sids(live, x) == []
    # Y's retry cannot tell either (X is just as likely): it waits too, sending nothing.
    expire_lease(y)
    assert deliver(y).action == "retry"
    assert accepted_sids(live, y) == [y_sid]

    # Y's callback (Herald's id in its URL) settles Y; X is then alone and sent.
    status_callback(client, y, y_sid)
    assert (load(y).status, load(y).provider_message_id) == ("sent", y_sid)
    expire_lease(x)
    assert deliver(x).action == "sent"
    (x_sid,) = accepted_sids(live, x)
    assert load(x).provider_message_id == x_sid != y_sid
    # Y's late callbacks still land on Y: no clash on the unique provider id.
    status_callback(client, y, y_sid, "delivered")
    assert load(y).status == "delivered"


def test_an_attempt_known_not_to_have_reached_twilio_is_not_reconciled(
    live, client, dispatched
) -> None:
    # The order: X fails before Twilio (rate-limited, nothing taken), Y is
    # taken but answered 500. X's retry must send its own message, not adopt Y's.
    tenant = sender_tenant("number")
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    live.config(callbacks={"enabled": False})
    body = f"Your driver has arrived {uuid.uuid4().hex[:8]}"
    live.fault(provider="twilio", status=429, code=20429, count=1)
    x = create(client, auth, channel="sms", body=body)
    assert deliver(x).action == "retry"
    outside_pair_order(x)
    live.fault(provider="twilio", status=500, code=20500, count=1, mode="accept_then_error")
    y = create(client, auth, channel="sms", body=body)
    assert deliver(y).action == "retry"
    (y_sid,) = accepted_sids(live, y)
    expire_lease(x)
    assert deliver(x).action == "sent"
    (x_sid,) = accepted_sids(live, x)
    assert load(x).provider_message_id == x_sid != y_sid
    # Now Y is alone with its copy: its retry adopts it rather than sending again.
    expire_lease(y)
    assert deliver(y).action == "sent"
    assert load(y).provider_message_id == y_sid
    assert accepted_sids(live, y) == [y_sid]
    with session_scope() as session:
        details = session.scalars(
            select(MessageEvent.detail).where(
                MessageEvent.message_id == y, MessageEvent.status == "sent"
            )
        ).all()
    assert {"reconciled": True} in details


def test_the_sandbox_lists_exactly_the_fields_twilio_returns(live) -> None:
    """The real resource (twilio-python's MessageInstance) has no StatusCallback: the
    sandbox must not offer one that reconciliation could lean on."""
    import httpx
    from twilio.rest.api.v2010.account.message import MessageInstance

    send = httpx.post(
        f"{live.sandbox.url}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
        auth=(TWILIO_SID, TWILIO_TOKEN),
        data={
            "To": "+12025550143",
            "From": "+12025550100",
            "Body": "fields",
            "StatusCallback": "https://herald.test/webhooks/twilio/status?message_id=msg_x",
        },
    )
    assert send.status_code == 201, send.text
    listed = httpx.get(
        f"{live.sandbox.url}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
        auth=(TWILIO_SID, TWILIO_TOKEN),
        params={"To": "+12025550143"},
    ).json()["messages"][0]
    instance = MessageInstance(None, {}, TWILIO_SID)  # type: ignore[arg-type]
    sdk_fields = {"from" if name == "from_" else name for name in vars(instance)}
    sdk_fields = {name for name in sdk_fields if not name.startswith("_")}
    assert set(listed) == sdk_fields
    assert not any("callback" in key for key in listed)
