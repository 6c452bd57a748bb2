"""The console's sandbox phone against the real sandbox: a reply is a signed provider
webhook to Herald's live API, so it opens the window; STOP opts out; an image arrives."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from models import Contact, Message, session_scope
from tests.conftest import TWILIO_SID, TWILIO_TOKEN, make_tenant
from tests.unit.test_console import _csrf, sign_in

NUMBER = "+12025550190"


def _phone_tenant() -> dict[str, str]:
    sender = "+1415523" + str(uuid.uuid4().int)[:4]
    return make_tenant(
        "phone",
        windows=(),
        twilio={"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "whatsapp_from": sender},
        meta={},
    )


def test_reply_stop_and_image_from_the_sandbox_phone(live, app) -> None:
    tenant = _phone_tenant()
    console = app.test_client()
    sign_in(console, tenant["api_key"])
    assert "Sandbox phone" in console.get("/console/").get_data(as_text=True)
    page = console.get(f"/console/phone/{NUMBER}").get_data(as_text=True)
    assert "closed" in page

    token = _csrf(console, "/console/")
    path = f"/console/phone/{NUMBER}/reply"
    resp = console.post(path, data={"csrf_token": token, "action": "reply", "body": "Hello!"})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    thread = console.get(f"/console/phone/{NUMBER}/thread").get_data(as_text=True)
    assert "Hello!" in thread and 'class="badge ok">open<' in thread

    console.post(
        path, data={"csrf_token": token, "action": "image", "image_url": "https://e.x/a.jpg"}
    )
    console.post(path, data={"csrf_token": token, "action": "stop"})
    with session_scope() as session:
        inbound = session.scalars(
            select(Message)
            .where(Message.tenant_id == tenant["tenant_id"], Message.direction == "inbound")
            .order_by(Message.id)  # ids are time-ordered; timestamps share a second
        ).all()
        contact = session.scalars(
            select(Contact).where(Contact.tenant_id == tenant["tenant_id"], Contact.phone == NUMBER)
        ).one()
    assert [m.body for m in inbound] == ["Hello!", "", "STOP"]
    assert inbound[1].media_urls == ["https://e.x/a.jpg"]
    assert contact.opted_out and contact.last_inbound_at is not None

    other = app.test_client()
    sign_in(other, make_tenant("other", windows=())["api_key"])
    assert "Hello!" not in other.get(f"/console/phone/{NUMBER}").get_data(as_text=True)


def test_a_reply_needs_text_and_a_csrf_token(live, app) -> None:
    console = app.test_client()
    sign_in(console, _phone_tenant()["api_key"])
    path = f"/console/phone/{NUMBER}/reply"
    assert console.post(path, data={"action": "reply", "body": "x"}).status_code == 400
    token = _csrf(console, "/console/")
    resp = console.post(path, data={"csrf_token": token, "action": "reply", "body": " "})
    assert resp.status_code == 400 and "Write a reply" in resp.get_data(as_text=True)
    bad = console.post("/console/phone/12/reply", data={"csrf_token": token, "body": "x"})
    assert bad.status_code == 400
