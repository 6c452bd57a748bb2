"""Deleting an upload stops what was waiting to send it: each message would otherwise fail
at Meta (the upload is gone) after the tenant was told the media was deleted."""

from __future__ import annotations

from datetime import timedelta

from core.ids import iso, utcnow
from tests.conftest import make_tenant
from tests.integration.test_media import PNG, TO, bearer, sandbox_media, upload


def test_deleting_media_cancels_the_messages_and_campaigns_waiting_for_it(
    live, client, dispatched
) -> None:
    tenant = make_tenant("media-delete-queued")
    auth = bearer(tenant)
    media = upload(client, tenant, PNG, "car.png").get_json()
    other = upload(client, tenant, PNG, "other.png").get_json()
    queued = client.post("/v1/messages", headers=auth, json={"to": TO, "media_id": media["id"]})
    later = iso(utcnow() + timedelta(hours=2))
    scheduled = client.post(
        "/v1/messages", headers=auth, json={"to": TO, "media_id": media["id"], "send_at": later}
    )
    unrelated = client.post("/v1/messages", headers=auth, json={"to": TO, "media_id": other["id"]})
    campaign = client.post(
        "/v1/campaigns",
        headers=auth,
        json={
            "name": "with header",
            "template": {"name": "spring_offer", "language": "en_US", "variables": ["20%"]},
            "media_id": media["id"],
            "recipients": [{"to": TO}],
        },
    )
    assert campaign.status_code == 201, campaign.get_json()
    assert [r.get_json()["status"] for r in (queued, scheduled, unrelated)] == [
        "queued",
        "scheduled",
        "queued",
    ]

    resp = client.delete(f"/v1/media/{media['id']}", headers=auth)
    assert resp.status_code == 204 and resp.data == b""
    assert "Content-Type" not in resp.headers  # a 204 declares no type (was text/html)
    assert sandbox_media(live, media["provider_media_id"])["deleted"]

    for sent in (queued, scheduled):
        message = client.get(f"/v1/messages/{sent.get_json()['id']}", headers=auth).get_json()
        assert message["status"] == "canceled"
        assert message["error"]["code"] == "media_deleted"
    still = client.get(f"/v1/messages/{unrelated.get_json()['id']}", headers=auth).get_json()
    assert still["status"] == "queued"
    shown = client.get(f"/v1/campaigns/{campaign.get_json()['id']}", headers=auth).get_json()
    assert shown["status"] == "canceled" and shown["counts"]["canceled"] == 1
