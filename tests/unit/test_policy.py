"""Policy before queueing: opt-out (keywords, provider codes, PATCH), the WhatsApp
24-hour window, and the contacts API."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from models import Contact, session_scope, utcnow
from tests.conftest import META_SECRET, META_TOKEN, make_tenant

NEW = "+12025550177"  # has never written


@pytest.fixture
def tenant() -> dict[str, str]:
    """A business with its own WhatsApp number, so inbound messages reach it alone."""
    import uuid

    phone_id = "1" + str(uuid.uuid4().int)[:14]
    made = make_tenant(
        "policy",
        meta={"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": META_SECRET},
    )
    return {**made, "phone_id": phone_id}


@pytest.fixture
def auth(tenant: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant['api_key']}"}


def post(client, auth, **fields):  # type: ignore[no-untyped-def]
    return client.post("/v1/messages", json={"to": NEW, **fields}, headers=auth)


def inbound(client, tenant: dict, phone: str, body: str):  # type: ignore[no-untyped-def]
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "W",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"phone_number_id": tenant["phone_id"]},
                            "messages": [
                                {
                                    "from": phone.lstrip("+"),
                                    "id": f"wamid.{phone}{body}{utcnow()}",
                                    "timestamp": str(int(utcnow().timestamp())),
                                    "type": "text",
                                    "text": {"body": body},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    raw = json.dumps(payload).encode()
    sig = "sha256=" + hmac.new(META_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    resp = client.post(
        "/webhooks/meta",
        data=raw,
        content_type="application/json",
        headers={"X-Hub-Signature-256": sig},
    )
    assert resp.status_code == 200


def test_window_refuses_free_form_and_allows_templates(client, auth, dispatched) -> None:
    refused = post(client, auth, body="Hello")
    assert refused.status_code == 422
    assert refused.get_json()["error"]["code"] == "window_closed"
    template = post(client, auth, template={"name": "order_update", "variables": ["1"]})
    assert template.status_code == 202
    sms = post(client, auth, body="Hello", channel="sms")  # SMS has no window
    assert sms.status_code == 202


def test_inbound_whatsapp_opens_the_window_and_it_closes_after_24h(
    client, auth, tenant, dispatched
) -> None:
    inbound(client, tenant, NEW, "Is the car available?")
    assert post(client, auth, body="Yes it is").status_code == 202
    with session_scope() as session:
        session.execute(
            update(Contact)
            .where(Contact.tenant_id == tenant["tenant_id"], Contact.phone == NEW)
            .values(last_inbound_at=utcnow() - timedelta(hours=24, minutes=1))
        )
    assert post(client, auth, body="Still there?").get_json()["error"]["code"] == "window_closed"


def test_stop_and_start_keywords(client, auth, tenant, dispatched) -> None:
    inbound(client, tenant, NEW, "  stop ")
    resp = post(client, auth, body="x", channel="sms")
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "opted_out"
    inbound(client, tenant, NEW, "START")
    assert post(client, auth, body="welcome back", channel="sms").status_code == 202
    for word in ("UNSUBSCRIBE", "Cancel", "end", "QUIT", "STOPALL"):
        inbound(client, tenant, NEW, word)
        assert post(client, auth, body="x", channel="sms").status_code == 422, word
        inbound(client, tenant, NEW, "yes")
    inbound(client, tenant, NEW, "please stop calling me at night")  # not a keyword
    assert post(client, auth, body="x", channel="sms").status_code == 202


def test_contacts_api_and_opt_out_by_patch(client, auth, dispatched) -> None:
    created = client.post(
        "/v1/contacts",
        headers=auth,
        json={"id": "6475ce431870c4941b667158", "phone": "+12025550188", "name": "Ana"},
    )
    assert created.status_code == 201
    body = created.get_json()
    assert body["id"] == "6475ce431870c4941b667158" and body["window_open"] is False
    got = client.get("/v1/contacts/6475ce431870c4941b667158", headers=auth).get_json()
    assert got["phone"] == "+12025550188"
    sent = client.post(
        "/v1/messages",
        headers=auth,
        json={"contact_id": "6475ce431870c4941b667158", "channel": "sms", "body": "Nuevo estado"},
    )
    assert sent.status_code == 202 and sent.get_json()["to"] == "+12025550188"
    patched = client.patch(
        "/v1/contacts/6475ce431870c4941b667158", headers=auth, json={"opted_out": True}
    )
    assert patched.get_json()["opted_out"] is True
    again = client.post(
        "/v1/messages",
        headers=auth,
        json={"contact_id": "6475ce431870c4941b667158", "channel": "sms", "body": "x"},
    )
    assert again.status_code == 422 and again.get_json()["error"]["code"] == "opted_out"


def test_contacts_api_rejects_bad_input_and_hides_other_tenants(client, auth) -> None:
    bad = client.post("/v1/contacts", headers=auth, json={"phone": "12"})
    assert bad.status_code == 400 and "phone" in bad.get_json()["error"]["fields"]
    unknown = client.post("/v1/contacts", headers=auth, json={"phone": "+12025550189", "x": 1})
    assert unknown.status_code == 400
    client.post("/v1/contacts", headers=auth, json={"id": "mine-1", "phone": "+12025550190"})
    other = make_tenant("other")
    hdr = {"Authorization": f"Bearer {other['api_key']}"}
    assert client.get("/v1/contacts/mine-1", headers=hdr).status_code == 404
    assert client.patch("/v1/contacts/mine-1", headers=hdr, json={"name": "x"}).status_code == 404
