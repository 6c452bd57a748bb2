"""The sandbox refuses what Twilio and Meta refuse, so content that slips past the API's
rules fails in a test as it would in production; and a stored row the provider would
refuse fails before it is sent, with the reason."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models import Message, MessageEvent, session_scope
from providers import ProviderError, get_provider
from providers.base import AccountCredentials, OutboundMessage
from services.messages.delivery import deliver
from tests.conftest import META_PHONE_ID, META_TOKEN, TWILIO_SID, TWILIO_TOKEN, make_tenant
from tests.integration.conftest import wait_for

TO = "+12025550143"
EMOJI = "\N{GRINNING FACE}"

TWILIO = AccountCredentials(
    id="acc_t",
    tenant_id="ten_x",
    provider="twilio",
    external_id=TWILIO_SID,
    settings={"sms_from": "+12025550100", "whatsapp_from": "+14155238886"},
    secrets={"auth_token": TWILIO_TOKEN},
)
META = AccountCredentials(
    id="acc_m",
    tenant_id="ten_x",
    provider="meta",
    external_id=META_PHONE_ID,
    settings={},
    secrets={"access_token": META_TOKEN},
)


def refusal(account: AccountCredentials, **fields) -> ProviderError:  # type: ignore[no-untyped-def]
    """Send straight through the provider client, past the API's rules."""
    message = OutboundMessage(herald_id="msg_bypass", to=TO, **fields)
    with pytest.raises(ProviderError) as info:
        get_provider(account.provider).send(account, message)
    return info.value


@pytest.mark.parametrize("channel", ["whatsapp", "sms"])
def test_sandbox_twilio_refuses_a_body_over_1600(live, channel) -> None:
    error = refusal(TWILIO, channel=channel, body=EMOJI * 801)  # 1,602 as Twilio counts
    assert (error.http_status, error.code) == (400, "21617")


def test_sandbox_twilio_refuses_media_beside_a_content_sid(live) -> None:
    error = refusal(
        TWILIO,
        channel="whatsapp",
        template={"content_sid": "HX" + "c" * 32},
        media_urls=["https://example.com/car.jpg"],
    )
    assert (error.http_status, error.code) == (400, "63021")


def test_sandbox_meta_refuses_a_caption_over_1024(live) -> None:
    error = refusal(
        META, channel="whatsapp", media_urls=["https://example.com/a.jpg"], body="x" * 1025
    )
    assert (error.http_status, error.code) == (400, "100")
    assert "caption" in error.message


@pytest.mark.parametrize("url", ["https://example.com/a.gif", "https://example.com/a.webp"])
def test_sandbox_meta_refuses_an_image_that_is_no_jpeg_or_png(live, url) -> None:
    error = refusal(META, channel="whatsapp", media_urls=[url], media_type="image")
    assert (error.http_status, error.code) == (400, "131053")


def test_webp_reaches_meta_as_a_sticker(live, client, auth, dispatched) -> None:
    url = "https://example.com/smile.webp"
    resp = client.post("/v1/messages", json={"to": TO, "media_url": url}, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    mid = resp.get_json()["id"]
    deliver(mid)
    with session_scope() as session:
        assert session.get(Message, mid).status == "sent"
    request = live.sends(herald_id=mid)[-1]["request"]
    assert request["type"] == "sticker" and request["sticker"] == {"link": url}


def test_a_stored_row_the_provider_would_refuse_fails_before_sending(
    live, client, auth, dispatched
) -> None:
    resp = client.post(
        "/v1/messages", json={"to": TO, "channel": "sms", "body": "short"}, headers=auth
    )
    mid = resp.get_json()["id"]
    with session_scope() as session:  # accepted under older rules, say
        session.get(Message, mid).body = EMOJI * 801
    deliver(mid)
    with session_scope() as session:
        message = session.get(Message, mid)
        assert message.status == "failed" and message.error_code == "content_not_sendable"
        assert "1600" in message.error_message
        events = session.scalars(
            select(MessageEvent.status)
            .where(MessageEvent.message_id == mid)
            .order_by(MessageEvent.id)
        ).all()
        assert events[-1] == "failed" and "sending" not in events
    assert live.sends(herald_id=mid) == []  # never reached the provider


def test_messaging_service_sender_comes_from_the_callback(live, client, dispatched) -> None:
    mg = "MG" + "e" * 32
    tenant = make_tenant(
        "svc",
        meta={},
        twilio={"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "messaging_service_sid": mg},
    )
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    resp = client.post(
        "/v1/messages", json={"to": TO, "channel": "sms", "body": "hi"}, headers=auth
    )
    mid = resp.get_json()["id"]
    deliver(mid)

    def sender() -> str | None:
        with session_scope() as session:
            return session.get(Message, mid).from_number

    assert wait_for(sender) == "+15017122661"  # the number the sandbox's service picks
