"""Media end to end through the sandbox: inbound media served from Meta and Twilio with
the account's credentials, and media uploaded once then sent by `media_id`."""

from __future__ import annotations

import base64
import io
import random
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from models import Media, Message, session_scope, utcnow
from services.campaigns.campaigns import release_due_campaigns
from services.messages.delivery import deliver
from tests.conftest import (
    META_PHONE_ID,
    META_SECRET,
    META_TOKEN,
    TWILIO_SID,
    TWILIO_TOKEN,
    make_tenant,
)

TO = "+12025550143"
PNG = b"\x89PNG\r\n\x1a\n" + random.Random(7).randbytes(3000)
JPEG = b"\xff\xd8\xff\xe0" + random.Random(8).randbytes(5000)


def bearer(tenant: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant['api_key']}"}


def meta_tenant(live) -> tuple[dict[str, str], str]:  # type: ignore[no-untyped-def]
    """A tenant on a Meta number of its own (inbound is routed by phone number id)."""
    phone_id = str(random.randint(10**14, 10**15 - 1))
    meta = {"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": META_SECRET}
    live.control.post("/_sandbox/accounts", json={"provider": "meta", **meta}).raise_for_status()
    return make_tenant("media-meta", twilio={}, meta=meta), phone_id


def twilio_tenant() -> tuple[dict[str, str], str]:
    sender = f"+1415555{random.randint(1000, 9999)}"
    twilio = {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "whatsapp_from": sender}
    return make_tenant("media-twilio", twilio=twilio, meta={}), sender


def inbound(live, **fields) -> dict:  # type: ignore[no-untyped-def]
    answer = live.control.post("/_sandbox/inbound", json=fields).json()
    assert answer["status_code"] == 200 and answer["ok"], answer
    return answer


def inbound_message(tenant_id: str) -> Message:
    with session_scope() as session:
        return session.scalars(
            select(Message).where(Message.tenant_id == tenant_id, Message.direction == "inbound")
        ).one()


def sandbox_media(live, media_id: str) -> dict:  # type: ignore[no-untyped-def]
    items = live.control.get("/_sandbox/media").json()["media"]
    return next(i for i in items if i["id"] == media_id)


def test_meta_inbound_image_is_served_byte_identical_and_fetched_fresh(live, client) -> None:
    tenant, phone_id = meta_tenant(live)
    answer = inbound(
        live,
        provider="meta",
        to=phone_id,
        **{"from": "+12025550170"},
        body="my car",
        media_type="image/png",
        media_base64=base64.b64encode(PNG).decode(),
    )
    media_id = answer["payload"]["entry"][0]["changes"][0]["value"]["messages"][0]["image"]["id"]
    message = inbound_message(tenant["tenant_id"])
    assert message.media_urls == [f"meta-media:{media_id}"]  # kept as before

    shown = client.get(f"/v1/messages/{message.id}", headers=bearer(tenant)).get_json()
    assert shown["media"] == [
        {"url": f"/v1/messages/{message.id}/media/0", "content_type": "image/png"}
    ]
    assert shown["media_url"] == [f"meta-media:{media_id}"]
    for _ in range(2):
        resp = client.get(shown["media"][0]["url"], headers=bearer(tenant))
        assert resp.status_code == 200
        assert resp.data == PNG
        assert resp.mimetype == "image/png"
        assert resp.headers["Content-Length"] == str(len(PNG))
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # Meta's URL lives 5 minutes: Herald asks for a new one each time, never reuses one.
    assert sandbox_media(live, media_id)["retrievals"] == 2


def test_twilio_inbound_media_follows_the_redirect_without_credentials(live, client) -> None:
    tenant, sender = twilio_tenant()
    answer = inbound(
        live,
        provider="twilio",
        to=f"whatsapp:{sender}",
        **{"from": "+12025550171"},
        media_type="image/jpeg",
        media_base64=base64.b64encode(JPEG).decode(),
    )
    url = answer["payload"]["MediaUrl0"]
    assert f"/2010-04-01/Accounts/{TWILIO_SID}/Messages/MM" in url and "/Media/ME" in url
    assert httpx.get(url).status_code == 401  # Twilio's media needs the account's credentials
    message = inbound_message(tenant["tenant_id"])
    assert message.media_urls == [url]
    resp = client.get(f"/v1/messages/{message.id}/media/0", headers=bearer(tenant))
    # The storage URL refuses a request carrying credentials (as S3 does): a 200 means
    # Herald sent them to Twilio only.
    assert resp.status_code == 200, resp.get_json()
    assert resp.data == JPEG and resp.mimetype == "image/jpeg"
    shown = client.get(f"/v1/messages/{message.id}", headers=bearer(tenant)).get_json()
    assert shown["media"][0]["content_type"] == "image/jpeg"


def test_media_is_tenant_scoped_and_indexed(live, client) -> None:
    tenant, phone_id = meta_tenant(live)
    inbound(live, provider="meta", to=phone_id, **{"from": "+12025550172"}, media_type="image/png")
    message = inbound_message(tenant["tenant_id"])
    other = make_tenant("media-other")
    resp = client.get(f"/v1/messages/{message.id}/media/0", headers=bearer(other))
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    resp = client.get(f"/v1/messages/{message.id}/media/1", headers=bearer(tenant))
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/v1/messages/{message.id}/media/0").status_code == 401
    # An outbound message's media are the sender's own URLs: nothing to serve.
    sent = client.post(
        "/v1/messages",
        headers=bearer(other),
        json={"to": TO, "media_url": "https://example.com/a.jpg"},
    ).get_json()
    assert client.get(f"/v1/messages/{sent['id']}/media/0", headers=bearer(other)).status_code == (
        404
    )


def test_media_over_the_cap_is_a_502_before_any_byte(live, client, monkeypatch) -> None:
    from core.config import get_settings

    tenant, phone_id = meta_tenant(live)
    inbound(
        live,
        provider="meta",
        to=phone_id,
        **{"from": "+12025550173"},
        media_type="application/pdf",
        media_size=5000,
    )
    message = inbound_message(tenant["tenant_id"])
    monkeypatch.setenv("HERALD_MEDIA_MAX_BYTES", "4096")
    get_settings.cache_clear()
    try:
        resp = client.get(f"/v1/messages/{message.id}/media/0", headers=bearer(tenant))
    finally:
        monkeypatch.delenv("HERALD_MEDIA_MAX_BYTES")
        get_settings.cache_clear()
    assert resp.status_code == 502
    error = resp.get_json()["error"]
    assert error["code"] == "media_too_large" and "4096" in error["message"]


def test_provider_refusal_is_a_502_with_the_error_shape(live, client) -> None:
    tenant, phone_id = meta_tenant(live)
    answer = inbound(
        live, provider="meta", to=phone_id, **{"from": "+12025550174"}, media_type="video/mp4"
    )
    media_id = answer["payload"]["entry"][0]["changes"][0]["value"]["messages"][0]["video"]["id"]
    graph = f"{live.sandbox.url}/v22.0/{media_id}"
    wrong = httpx.get(graph, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == 190
    deleted = httpx.delete(graph, headers={"Authorization": f"Bearer {META_TOKEN}"})
    assert deleted.json() == {"success": True}
    message = inbound_message(tenant["tenant_id"])
    resp = client.get(f"/v1/messages/{message.id}/media/0", headers=bearer(tenant))
    assert resp.status_code == 502
    error = resp.get_json()["error"]
    assert error["code"] == "provider_error" and "code 100" in error["message"]


def upload(client, tenant, data: bytes, name: str, mime: str | None = None, **form):  # type: ignore[no-untyped-def]
    fields = {"file": (io.BytesIO(data), name, mime) if mime else (io.BytesIO(data), name)}
    return client.post(
        "/v1/media",
        headers=bearer(tenant),
        content_type="multipart/form-data",
        data={**fields, **form},
    )


def test_upload_then_send_by_media_id(live, client, dispatched) -> None:
    tenant = make_tenant("media-upload")
    resp = upload(client, tenant, PNG, "car.png", "image/png")
    assert resp.status_code == 201, resp.get_json()
    media = resp.get_json()
    assert media["id"].startswith("med_") and media["type"] == "image"
    assert (media["mime_type"], media["size"], media["filename"]) == (
        "image/png",
        len(PNG),
        "car.png",
    )
    stored = sandbox_media(live, media["provider_media_id"])
    assert stored["uploaded"] and stored["sha256"] == media["sha256"]
    assert stored["size"] == len(PNG) and stored["mime_type"] == "image/png"
    assert client.get(f"/v1/media/{media['id']}", headers=bearer(tenant)).get_json() == media

    sent = client.post(
        "/v1/messages",
        headers=bearer(tenant),
        json={"to": TO, "media_id": media["id"], "body": "Your car"},
    )
    assert sent.status_code == 202, sent.get_json()
    mid = sent.get_json()["id"]
    deliver(mid)
    request = live.sends(herald_id=mid)[-1]["request"]
    assert request["type"] == "image"
    assert request["image"] == {"id": media["provider_media_id"], "caption": "Your car"}
    with session_scope() as session:
        assert session.get(Message, mid).status == "sent"

    # The Celery task takes the same field.
    from workers.tasks import send_message

    result = send_message.apply(
        kwargs={"tenant_id": tenant["tenant_id"], "to": TO, "media_id": media["id"]}
    ).get()
    deliver(result["id"])
    assert live.sends(herald_id=result["id"])[-1]["request"]["image"] == {
        "id": media["provider_media_id"]
    }


def test_media_id_in_a_template_and_a_campaign_is_the_header(live, client, dispatched) -> None:
    tenant = make_tenant("media-campaign")
    media = upload(client, tenant, PNG, "banner.png").get_json()
    template = {"name": "spring_offer", "language": "en_US", "variables": ["20%"]}
    created = client.post(
        "/v1/campaigns",
        headers=bearer(tenant),
        json={
            "name": "spring",
            "template": template,
            "media_id": media["id"],
            "recipients": [{"to": TO}],
        },
    )
    assert created.status_code == 201, created.get_json()
    release_due_campaigns(utcnow() + timedelta(seconds=5))
    with session_scope() as session:
        mid = session.scalars(
            select(Message.id).where(Message.campaign_id == created.get_json()["id"])
        ).one()
    deliver(mid)
    request = live.sends(herald_id=mid)[-1]["request"]
    assert request["template"]["components"] == [
        {
            "type": "header",
            "parameters": [{"type": "image", "image": {"id": media["provider_media_id"]}}],
        },
        {"type": "body", "parameters": [{"type": "text", "text": "20%"}]},
    ]


def test_a_send_with_a_media_id_meta_does_not_know_is_refused_by_the_sandbox(live) -> None:
    answer = httpx.post(
        f"{live.sandbox.url}/v22.0/{META_PHONE_ID}/messages",
        headers={"Authorization": f"Bearer {META_TOKEN}"},
        json={
            "messaging_product": "whatsapp",
            "to": "12025550143",
            "type": "image",
            "image": {"id": "123456"},
        },
    )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == 100


@pytest.mark.parametrize(
    ("data", "name", "mime", "field", "words"),
    [
        (b"GIF89a" + bytes(100), "dance.gif", "image/gif", "type", "image/gif"),
        (b"\x89PNG\r\n\x1a\n" + bytes(5 * 1024 * 1024), "big.png", "image/png", "file", "5 MB"),
        (
            b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(100 * 1024),
            "s.webp",
            "image/webp",
            "file",
            "100 KB",
        ),
        (b"not a png at all", "fake.png", "image/png", "file", "image/png"),
    ],
)
def test_upload_refuses_what_meta_would_with_a_clear_400(
    live, client, data, name, mime, field, words
) -> None:
    tenant = make_tenant("media-bad")
    resp = upload(client, tenant, data, name, mime)
    assert resp.status_code == 400, resp.get_json()
    error = resp.get_json()["error"]
    assert field in error["fields"] and words in error["message"] + str(error["fields"])
    with session_scope() as session:
        assert (
            session.scalars(select(Media).where(Media.tenant_id == tenant["tenant_id"])).all() == []
        )


def test_media_id_refusals(live, client, dispatched) -> None:
    tenant = make_tenant("media-refusals")
    media = upload(client, tenant, PNG, "car.png").get_json()

    def send(who, **fields):  # type: ignore[no-untyped-def]
        return client.post("/v1/messages", headers=bearer(who), json={"to": TO, **fields})

    unknown = send(tenant, media_id="med_nope")
    assert unknown.status_code == 422
    assert unknown.get_json()["error"]["code"] == "media_not_found"
    other = send(make_tenant("media-thief"), media_id=media["id"])
    assert other.status_code == 422 and other.get_json()["error"]["code"] == "media_not_found"
    twilio = send(tenant, media_id=media["id"], provider="twilio")
    assert twilio.status_code == 400 and "media_id" in twilio.get_json()["error"]["fields"]
    both = send(tenant, media_id=media["id"], media_url="https://example.com/a.jpg")
    assert both.status_code == 400 and "media_id" in both.get_json()["error"]["fields"]
    caption = send(tenant, media_id=media["id"], body="x" * 1025)
    assert caption.status_code == 400 and "body" in caption.get_json()["error"]["fields"]
    with session_scope() as session:
        session.get(Media, media["id"]).expires_at = utcnow() - timedelta(seconds=1)
    expired = send(tenant, media_id=media["id"])
    assert expired.status_code == 422 and expired.get_json()["error"]["code"] == "media_expired"
    refused = upload(client, tenant, PNG, "car.png", provider="twilio")
    assert refused.status_code == 400 and "provider" in refused.get_json()["error"]["fields"]
    assert upload(client, tenant, PNG, "car.png", phone_number_id="1").status_code == 422


def test_upload_needs_multipart(live, client) -> None:
    tenant = make_tenant("media-json")
    resp = client.post("/v1/media", headers=bearer(tenant), json={"file": "x"})
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_request"
    missing = client.post(
        "/v1/media", headers=bearer(tenant), content_type="multipart/form-data", data={"type": "x"}
    )
    assert missing.status_code == 400 and "file" in missing.get_json()["error"]["fields"]


def test_deleting_an_upload_deletes_it_at_meta(live, client, dispatched) -> None:
    tenant = make_tenant("media-delete")
    media = upload(client, tenant, PNG, "car.png").get_json()
    other = make_tenant("media-delete-other")
    assert client.delete(f"/v1/media/{media['id']}", headers=bearer(other)).status_code == 404
    assert client.delete(f"/v1/media/{media['id']}", headers=bearer(tenant)).status_code == 204
    assert sandbox_media(live, media["provider_media_id"])["deleted"]
    assert client.get(f"/v1/media/{media['id']}", headers=bearer(tenant)).status_code == 404
    sent = client.post(
        "/v1/messages", headers=bearer(tenant), json={"to": TO, "media_id": media["id"]}
    )
    assert sent.status_code == 422 and sent.get_json()["error"]["code"] == "media_not_found"
