"""Meta webhooks as Meta really sends them: `failed` without Herald's id, errors that
arrive by webhook, and WABA-level changes with no phone number."""

from __future__ import annotations

import time

from sqlalchemy import select

from models import Contact, Message, MessageEvent, WebhookEvent, session_scope
from providers import SendResult
from services.messages.record import record_sent as _record_sent
from tests.unit.test_webhooks import TO, get, meta_change, meta_post, new_message, status


def _error(code: int, details: str = "why it failed") -> dict:
    return {"code": code, "title": "t", "message": "m", "error_data": {"details": details}}


def test_failed_status_before_the_wamid_is_recorded_is_applied_then(
    client, auth, dispatched
) -> None:
    mid = new_message(client, auth)
    wamid = "wamid.early-" + mid
    failed = status(mid, wamid, "failed", errors=[_error(131026)])
    del failed["biz_opaque_callback_data"]  # Meta sends it on sent/delivered/read only
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": []}]}
    payload["entry"][0]["changes"].append(meta_change([failed]))
    assert meta_post(client, payload).status_code == 200
    assert get(client, auth, mid)["status"] == "queued"  # nothing to match it to yet

    with session_scope() as session:
        message = session.get(Message, mid)
    _record_sent(message, SendResult(provider_message_id=wamid, native_status="accepted"))

    after = get(client, auth, mid)
    assert after["status"] == "failed" and after["error"]["provider_code"] == "131026"
    with session_scope() as session:
        receipt = session.scalars(
            select(WebhookEvent).where(WebhookEvent.provider_message_id == wamid)
        ).one()
        assert receipt.message_id == mid


def test_stored_orphans_are_applied_by_the_periodic_pass(client, auth, dispatched) -> None:
    from services.callbacks.meta_orphans import apply_stored_orphans
    from services.messages.status import apply_status

    mid = new_message(client, auth)
    wamid = "wamid.race-" + mid
    read = status(mid, wamid, "read")
    del read["biz_opaque_callback_data"]
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": []}]}
    payload["entry"][0]["changes"].append(meta_change([read]))
    assert meta_post(client, payload).status_code == 200
    with session_scope() as session:  # the wamid recorded without looking (a race)
        apply_status(session, mid, "sent", source="worker", provider_message_id=wamid)
    assert apply_stored_orphans() >= 1  # (others' early receipts may be applied too)
    assert get(client, auth, mid)["status"] == "read"
    with session_scope() as session:
        receipt = session.scalars(
            select(WebhookEvent).where(WebhookEvent.provider_message_id == wamid)
        ).one()
        assert receipt.message_id == mid  # applied once: not picked up again


def test_131050_by_webhook_opts_the_contact_out(client, auth, tenant, dispatched) -> None:
    mid = new_message(client, auth)
    wamid = "wamid.optout-" + mid
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    meta_change([status(mid, wamid, "sent")]),
                    meta_change([status(mid, wamid, "failed", errors=[_error(131050, "stop")])]),
                ],
            }
        ],
    }
    assert meta_post(client, payload).status_code == 200
    assert get(client, auth, mid)["status"] == "failed"
    with session_scope() as session:
        contact = session.scalars(
            select(Contact).where(Contact.tenant_id == tenant["tenant_id"], Contact.phone == TO)
        ).one()
        assert contact.opted_out is True
        event = session.scalars(
            select(MessageEvent).where(
                MessageEvent.message_id == mid, MessageEvent.status == "failed"
            )
        ).one()
        assert event.detail["error_data"]["details"] == "stop"  # Meta's own words kept


def _template_update() -> dict:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "time": int(time.time()),
                "changes": [
                    {
                        "field": "message_template_status_update",
                        "value": {
                            "event": "APPROVED",
                            "message_template_id": 594425479261596,
                            "message_template_name": "order_update",
                            "message_template_language": "en_US",
                            "reason": "NONE",
                        },
                    },
                    {
                        "field": "phone_number_quality_update",
                        "value": {
                            "display_phone_number": "12025550111",
                            "event": "FLAGGED",
                            "current_limit": "TIER_1K",
                        },
                    },
                ],
            }
        ],
    }


def test_waba_level_webhooks_are_verified_by_a_tenant_secret_and_recorded(client, tenant) -> None:
    # No META_APP_SECRET is configured: the tenant's own app secret signs it.
    with session_scope() as session:  # other tests' account-level events stay out of it
        before = set(session.scalars(select(WebhookEvent.id).where(WebhookEvent.kind == "account")))
    resp = meta_post(client, _template_update())
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["received"]["account"] == 2
    with session_scope() as session:
        rows = session.scalars(select(WebhookEvent).where(WebhookEvent.kind == "account")).all()
        fields = sorted(r.payload["field"] for r in rows if r.id not in before)
    assert fields == ["message_template_status_update", "phone_number_quality_update"]
    again = meta_post(client, _template_update())  # Meta's retry: recorded once
    assert again.status_code == 200 and again.get_json()["received"]["duplicates"] == 2
    assert meta_post(client, _template_update(), secret="not-ours").status_code == 403
