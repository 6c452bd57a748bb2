"""A synced template and an uploaded `media_id`: the upload is the header's parameter.
The README's campaign (an image-header template, its header by media_id) goes out; a
template without a media header, or with another kind, refuses the media_id at once
instead of at Meta (132000) or in every row."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from models import Message, session_scope, utcnow
from services.campaigns.campaigns import release_due_campaigns
from services.messages.delivery import deliver
from tests.integration.test_media import PNG, upload
from tests.integration.test_templates import _meta_template, _sync, _tenant

IMAGE_OFFER = [
    {"type": "HEADER", "format": "IMAGE"},
    {"type": "BODY", "text": "Spring sale: {{1}} off."},
]
PLAIN = [{"type": "BODY", "text": "Spring sale: {{1}} off."}]
VIDEO_OFFER = [{"type": "HEADER", "format": "VIDEO"}, *PLAIN]


def _setup(live, client):  # type: ignore[no-untyped-def]
    tenant = _tenant(live)
    _meta_template(live, tenant["waba"], "spring_offer", components=IMAGE_OFFER)
    _meta_template(live, tenant["waba"], "plain_offer", components=PLAIN)
    _meta_template(live, tenant["waba"], "video_offer", components=VIDEO_OFFER)
    _sync(client, tenant, provider="meta")
    media = upload(client, tenant, PNG, "banner.png")
    assert media.status_code == 201, media.get_json()
    return tenant, media.get_json()


def _send(client, tenant, name: str, media_id: str):  # type: ignore[no-untyped-def]
    template = {"name": name, "language": "en_US", "variables": ["20%"]}
    return client.post(
        "/v1/messages",
        headers=tenant["auth"],
        json={"to": "+12025550143", "template": template, "media_id": media_id},
    )


def test_a_media_id_fills_a_synced_templates_image_header(live, client, dispatched) -> None:
    tenant, media = _setup(live, client)
    sent = _send(client, tenant, "spring_offer", media["id"])
    assert sent.status_code == 202, sent.get_json()
    deliver(sent.get_json()["id"])
    request = live.sends(herald_id=sent.get_json()["id"])[-1]["request"]
    assert request["template"]["components"][0] == {
        "type": "header",
        "parameters": [{"type": "image", "image": {"id": media["provider_media_id"]}}],
    }
    with session_scope() as session:
        assert session.get(Message, sent.get_json()["id"]).status == "sent"


def test_a_media_id_a_template_cannot_carry_is_refused_at_once(live, client, dispatched) -> None:
    tenant, media = _setup(live, client)
    for name, text in (
        ("plain_offer", "it has no image, video or document header: leave media_id out"),
        ("video_offer", "header expects 1 video parameter, got an image (media_id)"),
    ):
        refused = _send(client, tenant, name, media["id"])
        assert refused.status_code == 400, refused.get_json()
        error = refused.get_json()["error"]
        assert error["code"] == "invalid_fields"
        assert error["fields"]["template"] == [f"Template {name!r} (en_US): {text}."]
    # Without the media, the image header is missing its parameter: refused as before.
    bare = client.post(
        "/v1/messages",
        headers=tenant["auth"],
        json={"to": "+12025550143", "template": {"name": "spring_offer", "variables": ["1"]}},
    )
    assert "header expects 1 image parameter, got 0" in bare.get_json()["error"]["message"]


def test_the_readmes_campaign_with_a_header_media_id_sends(live, client, dispatched) -> None:
    tenant, media = _setup(live, client)
    campaign = {
        "name": "spring",
        "template": {"name": "spring_offer", "language": "en_US"},
        "media_id": media["id"],
        "recipients": [
            {"to": "+12025550143", "variables": ["20%"]},
            {"to": "+12025550144", "variables": ["25%"]},
        ],
    }
    created = client.post("/v1/campaigns", headers=tenant["auth"], json=campaign)
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert (body["total"], body["invalid"], body["invalid_rows"]) == (2, 0, [])
    release_due_campaigns(utcnow() + timedelta(seconds=5))
    with session_scope() as session:
        ids = session.scalars(select(Message.id).where(Message.campaign_id == body["id"])).all()
    for mid in ids:
        deliver(mid)
    with session_scope() as session:
        assert {session.get(Message, mid).status for mid in ids} == {"sent"}
    for name, field_text in (
        ("plain_offer", "has no image, video or document header"),
        ("video_offer", "has a video header; this media is an image"),
    ):
        refused = client.post(
            "/v1/campaigns",
            headers=tenant["auth"],
            json={**campaign, "template": {"name": name, "language": "en_US"}},
        )
        assert refused.status_code == 400, refused.get_json()
        assert field_text in refused.get_json()["error"]["fields"]["media_id"][0]
