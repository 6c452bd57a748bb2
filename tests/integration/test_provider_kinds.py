"""Every message kind on each provider, through the real clients against the sandbox,
plus inbound on both providers and each error class."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import select

from models import Contact, Message, session_scope, utcnow
from services.messages.delivery import deliver
from tests.conftest import META_SECRET, META_TOKEN, TWILIO_SID, TWILIO_TOKEN, make_tenant
from tests.integration.conftest import wait_for

TO = "+12025550143"
CONTENT_SID = "HX" + "b" * 32


def send(client, auth, live, **fields):  # type: ignore[no-untyped-def]
    """Create through the API, deliver once, return (message row, the request the provider got)."""
    resp = client.post("/v1/messages", json={"to": TO, **fields}, headers=auth)
    assert resp.status_code == 202, resp.get_json()
    mid = resp.get_json()["id"]
    deliver(mid)
    with session_scope() as session:
        message = session.get(Message, mid)
    sends = live.sends(herald_id=mid)
    return message, (sends[-1]["request"] if sends else None)


# ------------------------------------------------------------------ Twilio


def test_twilio_mms_with_several_media(live, client, auth, dispatched) -> None:
    urls = ["https://example.com/car-front.jpg", "https://example.com/car-back.jpg"]
    message, request = send(client, auth, live, channel="sms", body="Your car", media_url=urls)
    assert message.status == "sent" and message.provider_message_id.startswith("MM")
    assert request["MediaUrl"] == urls


def test_twilio_whatsapp_uses_prefixed_numbers(live, client, auth, dispatched) -> None:
    message, request = send(client, auth, live, provider="twilio", body="Hola!")
    assert message.status == "sent"
    assert request["To"] == f"whatsapp:{TO}"
    assert request["From"] == "whatsapp:+14155238886"


def test_twilio_template_goes_by_content_sid(live, client, auth, dispatched) -> None:
    message, request = send(
        client,
        auth,
        live,
        provider="twilio",
        template={"content_sid": CONTENT_SID, "variables": ["123", "Friday"]},
    )
    assert message.status == "sent"
    assert request["ContentSid"] == CONTENT_SID
    assert json.loads(request["ContentVariables"]) == {"1": "123", "2": "Friday"}
    assert "Body" not in request


def test_twilio_template_without_content_sid_is_400(client, auth, dispatched) -> None:
    resp = client.post(
        "/v1/messages",
        headers=auth,
        json={"to": TO, "provider": "twilio", "template": {"name": "order_update"}},
    )
    assert resp.status_code == 400 and "template" in resp.get_json()["error"]["fields"]


def test_twilio_messaging_service_sender(live, client, dispatched) -> None:
    mg = "MG" + "c" * 32
    tenant = make_tenant(
        "svc",
        meta={},
        twilio={"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "messaging_service_sid": mg},
    )
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    message, request = send(client, auth, live, channel="sms", body="via service")
    assert message.status == "sent"
    assert request["MessagingServiceSid"] == mg and "From" not in request


# ------------------------------------------------------------------ Meta


@pytest.mark.parametrize(
    ("url", "kind", "caption"),
    [
        ("https://example.com/car.jpg", "image", True),
        ("https://example.com/invoice.pdf", "document", True),
        ("https://example.com/note.mp3", "audio", False),
        ("https://example.com/tour.mp4", "video", True),
    ],
)
def test_meta_media_by_link(live, client, auth, dispatched, url, kind, caption) -> None:
    message, request = send(client, auth, live, media_url=url, body="Look")
    assert message.status == "sent" and message.provider_message_id.startswith("wamid.")
    assert request["type"] == kind
    assert request[kind]["link"] == url
    assert (request[kind].get("caption") == "Look") is caption


def test_meta_text_with_preview_url(live, client, auth, dispatched) -> None:
    _, request = send(client, auth, live, body="See https://example.com/car", preview_url=True)
    assert request["text"] == {"body": "See https://example.com/car", "preview_url": True}


def test_meta_template_with_body_parameters(live, client, auth, dispatched) -> None:
    message, request = send(
        client,
        auth,
        live,
        template={"name": "order_update", "language": "es_MX", "variables": ["123", "mañana"]},
    )
    assert message.status == "sent"
    assert request["template"]["name"] == "order_update"
    assert request["template"]["language"] == {"code": "es_MX"}
    assert request["template"]["components"] == [
        {
            "type": "body",
            "parameters": [{"type": "text", "text": "123"}, {"type": "text", "text": "mañana"}],
        }
    ]


def test_meta_interactive_is_passed_through(live, client, auth, dispatched) -> None:
    interactive = {
        "type": "button",
        "body": {"text": "Test drive on Friday?"},
        "action": {
            "buttons": [
                {"type": "reply", "reply": {"id": "yes", "title": "Yes"}},
                {"type": "reply", "reply": {"id": "no", "title": "No"}},
            ]
        },
    }
    message, request = send(client, auth, live, interactive=interactive)
    assert message.status == "sent"
    assert request["type"] == "interactive" and request["interactive"] == interactive


def test_meta_one_media_only(client, auth, dispatched) -> None:
    resp = client.post(
        "/v1/messages",
        headers=auth,
        json={"to": TO, "media_url": ["https://e.com/a.jpg", "https://e.com/b.jpg"]},
    )
    assert resp.status_code == 400 and "media_url" in resp.get_json()["error"]["fields"]


# ------------------------------------------------------------------ error classes


@pytest.mark.parametrize(
    ("fields", "code", "opt_out"),
    [
        ({"to": "+15005550012", "body": "hi"}, "131047", False),  # window closed
        ({"to": "+15005550013", "body": "hi"}, "131050", True),  # stopped marketing
        ({"to": "+15005550004", "body": "hi", "channel": "sms"}, "21610", True),  # STOP
        ({"to": "+15005550009", "body": "hi", "channel": "sms"}, "21614", False),  # not mobile
    ],
)
def test_permanent_errors_fail_with_code(
    live, client, auth, tenant, dispatched, fields, code, opt_out
) -> None:
    message, _ = send(client, auth, live, **fields)
    assert message.status == "failed"
    assert message.provider_error_code == code
    with session_scope() as session:
        contact = session.scalars(
            select(Contact).where(
                Contact.tenant_id == tenant["tenant_id"], Contact.phone == fields["to"]
            )
        ).first()
    assert bool(contact and contact.opted_out) is opt_out


def test_async_failure_arrives_by_callback(live, client, auth, dispatched) -> None:
    message, _ = send(client, auth, live, to="+15005550011", body="hi")  # Meta 131026 later
    assert message.status == "sent"
    wait_for(lambda: _status(message.id) == "failed", what="failed status webhook")
    with session_scope() as session:
        assert session.get(Message, message.id).provider_error_code == "131026"


def test_connection_refused_is_transient(live, client, auth, dispatched, monkeypatch) -> None:
    from core.config import get_settings
    from herald.stack import free_port
    from providers import reset_providers

    monkeypatch.setenv("META_GRAPH_BASE", f"http://127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    reset_providers()
    try:
        resp = client.post("/v1/messages", json={"to": TO, "body": "hi"}, headers=auth)
        outcome = deliver(resp.get_json()["id"])
        assert outcome.action == "retry"
        assert _status(resp.get_json()["id"]) == "sending"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        reset_providers()


def _status(message_id: str) -> str:
    with session_scope() as session:
        return session.get(Message, message_id).status


# ------------------------------------------------------------------ inbound


def test_inbound_on_both_providers_opens_the_window(live, client) -> None:
    sender = "+1415523" + str(uuid.uuid4().int)[:4]
    # A phone number id of this tenant's alone: one several tenants hold routes nowhere.
    phone_id = "1" + str(uuid.uuid4().int)[:14]
    meta = {"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": META_SECRET}
    live.control.post("/_sandbox/accounts", json={"provider": "meta", **meta}).raise_for_status()
    tenant = make_tenant(
        "inbound",
        twilio={"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "whatsapp_from": sender},
        meta=meta,
    )
    # Other tests write inbound messages from these numbers to their own tenants: only this
    # test's rows are looked at, so the tenant each landed in is a real check.
    started = utcnow().replace(microsecond=0)  # Meta stamps its messages in whole seconds
    twilio = live.control.post(
        "/_sandbox/inbound",
        json={
            "provider": "twilio",
            "from": "+12025550161",
            "to": f"whatsapp:{sender}",
            "body": "Is it still available?",
            "profile_name": "Ana",
            "media_url": "https://example.com/photo.jpg",
            "media_type": "image/jpeg",
        },
    ).json()
    assert twilio["status_code"] == 200 and twilio["ok"], twilio
    meta = live.control.post(
        "/_sandbox/inbound",
        json={
            "provider": "meta",
            "from": "+12025550162",
            "to": phone_id,
            "interactive": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}},
            "profile_name": "Luis",
        },
    ).json()
    assert meta["status_code"] == 200 and meta["ok"], meta
    with session_scope() as session:
        got = {
            m.from_number: m
            for m in session.scalars(
                select(Message).where(
                    Message.direction == "inbound",
                    Message.from_number.in_(["+12025550161", "+12025550162"]),
                    Message.created_at >= started,
                )
            )
        }
        assert got["+12025550161"].tenant_id == tenant["tenant_id"]
        assert got["+12025550161"].media_urls == ["https://example.com/photo.jpg"]
        assert got["+12025550161"].body == "Is it still available?"
        assert got["+12025550162"].body == "Yes"
        assert got["+12025550162"].tenant_id == tenant["tenant_id"]
        windows = session.scalars(
            select(Contact.last_inbound_at).where(
                Contact.tenant_id == tenant["tenant_id"],
                Contact.phone.in_(["+12025550161", "+12025550162"]),
            )
        ).all()
        assert len(windows) >= 2 and all(windows)
