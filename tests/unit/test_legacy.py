"""The seeds' endpoints answer as their seeds document."""

from __future__ import annotations

import pytest

from models import Contact, session_scope, utcnow
from tests.conftest import make_tenant

TO = "+12025550143"


@pytest.fixture
def legacy_tenant(monkeypatch):  # type: ignore[no-untyped-def]
    """A deployment replacing a seed: unauthenticated legacy calls belong to one tenant."""
    from core.config import get_settings

    tenant = make_tenant("legacy")
    monkeypatch.setenv("HERALD_LEGACY_TENANT", tenant["tenant_id"])
    get_settings.cache_clear()
    yield tenant
    monkeypatch.delenv("HERALD_LEGACY_TENANT")
    get_settings.cache_clear()


# ---------------------------------------------------------------- seed 000


def test_twilio_message_by_contact_id_and_by_number(client, legacy_tenant, dispatched) -> None:
    with session_scope() as session:
        session.add(
            Contact(
                tenant_id=legacy_tenant["tenant_id"],
                external_id="6475ce431870c4941b667158",
                phone="+12025550166",
                last_inbound_at=utcnow(),
            )
        )
    resp = client.post(
        "/api/twilio/message",
        json={
            "to": "6475ce431870c4941b667158",
            "message": "SWIVEL: Nuevo estado de su proceso: Aceptado",
        },
    )
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["message"] == "Message sent" and body["id"].startswith("msg_")
    msg = client.get(
        f"/v1/messages/{body['id']}",
        headers={"Authorization": f"Bearer {legacy_tenant['api_key']}"},
    ).get_json()
    assert (msg["to"], msg["provider"], msg["channel"]) == ("+12025550166", "twilio", "whatsapp")
    by_number = client.post("/api/twilio/message", json={"to": TO, "message": "hola"})
    assert by_number.status_code == 200


def test_twilio_message_errors(client, legacy_tenant, dispatched) -> None:
    wrong = client.get("/api/twilio/message")
    assert wrong.status_code == 405 and wrong.get_json() == {"message": "Wrong request method"}
    unknown = client.post("/api/twilio/message", json={"to": "nobody", "message": "x"})
    assert unknown.status_code == 422 and "error" in unknown.get_json()
    missing = client.post("/api/twilio/message", json={"to": TO})
    assert missing.status_code == 400 and "error" in missing.get_json()


def test_legacy_routes_need_a_tenant(client, dispatched) -> None:
    resp = client.post("/api/twilio/message", json={"to": TO, "message": "x"})
    assert resp.status_code == 401 and "error" in resp.get_json()
    tenant = make_tenant("keyed")
    keyed = client.post(
        "/api/twilio/message",
        json={"to": TO, "message": "x"},
        headers={"Authorization": f"Bearer {tenant['api_key']}"},
    )
    assert keyed.status_code == 200


# ---------------------------------------------------------------- seed 002


def test_whatsapp_send_and_status(client, legacy_tenant, dispatched) -> None:
    resp = client.post(
        "/api/whatsapp/send",
        json={
            "toPhoneNumber": "12025550143",
            "messageBody": "Hola! Tu vehículo tiene un nuevo interés",
            "imageUrl": "https://okla.example/car.jpg",
        },
    )
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["success"] is True and body["cost"] == 0.015
    status = client.get(f"/api/whatsapp/status/{body['messageId']}").get_json()
    assert status["messageId"] == body["messageId"] and status["status"] == "queued"
    assert status["toPhoneNumber"] == TO
    assert client.get("/api/whatsapp/status/SMnope").status_code == 404


def test_whatsapp_send_errors_are_400_with_error(client, legacy_tenant, dispatched) -> None:
    for payload in (
        {"messageBody": "x"},
        {"toPhoneNumber": "abc", "messageBody": "x"},
        {"toPhoneNumber": TO, "messageBody": "x" * 4097},
    ):
        resp = client.post("/api/whatsapp/send", json=payload)
        assert resp.status_code == 400 and resp.get_json()["error"], payload


# ---------------------------------------------------------------- seed 003


def test_meta_send_message_envelope(client, legacy_tenant, dispatched) -> None:
    resp = client.post(
        "/api/v1/whatsapp/send-message",
        json={"to": TO, "text": "Hello, this is a test message!", "previewUrl": True},
    )
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["type"] == "1" and body["message"] == "Message sent successfully"
    assert body["data"]["messaging_product"] == "whatsapp"
    assert body["data"]["contacts"] == [{"input": TO, "wa_id": TO[1:]}]
    assert body["data"]["messages"][0]["id"].startswith("msg_")


def test_meta_send_message_errors(client, legacy_tenant, dispatched) -> None:
    missing = client.post("/api/v1/whatsapp/send-message", json={"to": TO})
    assert missing.status_code == 400
    assert missing.get_json() == {
        "type": "3",
        "message": "Missing required fields: to, text",
        "data": None,
    }
    bad = client.post("/api/v1/whatsapp/send-message", json={"to": "555", "text": "x"})
    assert bad.status_code == 400 and "E.164" in bad.get_json()["message"]
    closed = client.post("/api/v1/whatsapp/send-message", json={"to": "+12025550171", "text": "x"})
    assert closed.status_code == 400 and closed.get_json()["type"] == "3"


def test_meta_send_message_unauthorized(client, dispatched) -> None:
    resp = client.post(
        "/api/v1/whatsapp/send-message",
        json={"to": TO, "text": "x"},
        headers={"Authorization": "Bearer hk_bad"},
    )
    assert resp.status_code == 401 and resp.get_json()["type"] == "3"


def test_meta_send_template(client, legacy_tenant, dispatched) -> None:
    resp = client.post(
        "/api/v1/whatsapp/send-template",
        json={
            "to": "+12025550172",
            "templateName": "order_update",
            "languageCode": "es_MX",
            "parameters": ["123"],
        },
    )
    assert resp.status_code == 200 and resp.get_json()["type"] == "1"
    mid = resp.get_json()["data"]["messages"][0]["id"]
    msg = client.get(
        f"/v1/messages/{mid}", headers={"Authorization": f"Bearer {legacy_tenant['api_key']}"}
    ).get_json()
    assert msg["template"]["name"] == "order_update" and msg["template"]["language"] == "es_MX"


def test_legacy_status_is_scoped_to_the_tenant(client, legacy_tenant, dispatched) -> None:
    mid = client.post(
        "/api/whatsapp/send", json={"toPhoneNumber": TO, "messageBody": "x"}
    ).get_json()["messageId"]
    other = make_tenant("other")
    resp = client.get(
        f"/api/whatsapp/status/{mid}", headers={"Authorization": f"Bearer {other['api_key']}"}
    )
    assert resp.status_code == 404
    assert client.get(f"/api/whatsapp/status/{mid}").status_code == 200
