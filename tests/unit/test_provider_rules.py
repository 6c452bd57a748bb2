"""What each provider takes, refused at the API (400) rather than accepted (202) and
failed or silently cut at the provider: one rule set for messages and campaigns."""

from __future__ import annotations

import pytest

from providers.base import OutboundMessage
from providers.meta import build_payload

TO = "+12025550143"
CONTENT_SID = "HX" + "a" * 32
EMOJI = "\N{GRINNING FACE}"  # two UTF-16 units: Twilio counts it twice


def post(client, auth, **fields):  # type: ignore[no-untyped-def]
    return client.post("/v1/messages", json={"to": TO, **fields}, headers=auth)


def refused(resp, field: str) -> str:  # type: ignore[no-untyped-def]
    assert resp.status_code == 400, resp.get_json()
    error = resp.get_json()["error"]
    assert error["code"] == "invalid_fields" and field in error["fields"], error
    return " ".join(error["fields"][field])


# ------------------------------------------------------------------ Twilio


def test_interactive_on_twilio_is_refused(client, auth, dispatched) -> None:
    interactive = {"type": "button", "body": {"text": "Yes?"}, "action": {"buttons": []}}
    message = refused(post(client, auth, provider="twilio", interactive=interactive), "interactive")
    assert "Content template" in message
    assert dispatched == []


def test_media_beside_a_content_sid_is_refused_on_twilio(client, auth, dispatched) -> None:
    resp = post(
        client,
        auth,
        provider="twilio",
        template={"content_sid": CONTENT_SID},
        media_url="https://example.com/car.jpg",
    )
    assert "ContentSid" in refused(resp, "media_url")


@pytest.mark.parametrize("channel", ["whatsapp", "sms"])
def test_twilio_body_limit_is_1600_on_every_channel(client, auth, dispatched, channel) -> None:
    fields = {"provider": "twilio", "channel": channel}
    assert post(client, auth, **fields, body="x" * 1600).status_code == 202
    assert "1600" in refused(post(client, auth, **fields, body="x" * 1601), "body")


def test_twilio_counts_an_emoji_twice(client, auth, dispatched) -> None:
    # 801 emoji: 801 characters, but 1,602 as Twilio counts (error 21617).
    assert "1602" in refused(post(client, auth, channel="sms", body=EMOJI * 801), "body")
    assert post(client, auth, channel="sms", body=EMOJI * 800).status_code == 202


# ------------------------------------------------------------------ Meta


def test_meta_caption_limit_is_1024(client, auth, dispatched) -> None:
    url = "https://example.com/car.jpg"
    assert post(client, auth, media_url=url, body="x" * 1024).status_code == 202
    assert "1024" in refused(post(client, auth, media_url=url, body="x" * 1025), "body")
    # A text message still takes 4,096.
    assert post(client, auth, body="x" * 4096).status_code == 202


def test_meta_gif_is_refused(client, auth, dispatched) -> None:
    resp = post(client, auth, media_url="https://example.com/Dance.GIF?v=2")
    assert ".gif" in refused(resp, "media_url")


def test_meta_webp_goes_as_a_sticker(client, auth, dispatched) -> None:
    url = "https://example.com/smile.webp"
    assert post(client, auth, media_url=url).status_code == 202
    payload = build_payload(
        OutboundMessage(herald_id="msg_1", channel="whatsapp", to=TO, media_urls=[url])
    )
    assert payload["type"] == "sticker" and payload["sticker"] == {"link": url}
    # A sticker has no caption, and a .webp is no Meta image.
    assert "sticker" in refused(post(client, auth, media_url=url, body="Hi"), "body")
    resp = post(client, auth, media_url=url, media_type="image")
    assert "JPEG or PNG" in refused(resp, "media_type")


def test_png_and_jpeg_stay_images() -> None:
    for url in ("https://example.com/a.png", "https://example.com/b.JPEG?x=1"):
        payload = build_payload(
            OutboundMessage(herald_id="m", channel="whatsapp", to=TO, media_urls=[url], body="c")
        )
        assert payload["type"] == "image" and payload["image"]["caption"] == "c"


def test_whatsapp_template_variables_that_cannot_fit_are_refused(client, auth, dispatched) -> None:
    template = {"name": "offer", "language": "en_US", "variables": ["x" * 1000, "y" * 25]}
    assert "1024" in refused(post(client, auth, template=template), "template")
    template["variables"] = ["x" * 1000, "y" * 24]
    assert post(client, auth, template=template).status_code == 202


# ------------------------------------------------------------------ campaigns


def campaign(client, auth, **fields):  # type: ignore[no-untyped-def]
    body = {"name": "C", "recipients": [{"to": TO}], **fields}
    return client.post("/v1/campaigns", json=body, headers=auth)


def test_campaign_media_beside_a_content_sid_is_refused(client, auth, dispatched) -> None:
    resp = campaign(
        client,
        auth,
        provider="twilio",
        template={"content_sid": CONTENT_SID},
        media_url="https://example.com/car.jpg",
    )
    assert "ContentSid" in refused(resp, "media_url")


def test_campaign_sms_body_counts_as_twilio_does(client, auth, dispatched) -> None:
    assert "1602" in refused(campaign(client, auth, channel="sms", body=EMOJI * 801), "body")


def test_campaign_recipient_whose_variables_cannot_fit_is_invalid(client, auth, dispatched) -> None:
    recipients = [
        {"to": "+12025550101", "variables": ["Ana"]},
        {"to": "+12025550102", "variables": ["x" * 1025]},
    ]
    resp = campaign(
        client, auth, template={"name": "offer", "language": "en_US"}, recipients=recipients
    )
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["total"] == 1 and body["invalid"] == 1
    assert body["invalid_rows"][0]["row"] == 2 and "1024" in body["invalid_rows"][0]["error"]
