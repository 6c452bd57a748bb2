"""What the API answers is what /openapi.json says it answers.

The response schemas live beside the serializers (core/shapes.py); two checks hold
them to the code, both reading the document the app serves:

* each serializer, given rows with every field filled (rows of each kind where a field
  exists only on some), builds exactly its schema's fields: a key the schema lacks, a
  value of another type, or a declared field no row produces fails;
* the real API, driven through every operation that answers JSON, answers only key
  paths the document declares for that operation and status, with every required one.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import inspect, select

from models import (
    ApiKey,
    Campaign,
    Contact,
    EventDelivery,
    Media,
    Message,
    MessageEvent,
    ProviderAccount,
    Template,
    Tenant,
    new_id,
    session_scope,
    utcnow,
)
from tests.conftest import (
    META_PHONE_ID,
    META_SECRET,
    META_TOKEN,
    TWILIO_SID,
    TWILIO_TOKEN,
    free_number,
)
from tests.unit.document_walk import Walk

ADMIN = "admin-shapes-token-0123456789"
METHODS = ("get", "post", "put", "patch", "delete")
TO = "+12025550143"  # a WhatsApp window open (tests/conftest.py)
FILLED = "shapes_filled"  # the template with every field
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.fixture
def meta_prices(monkeypatch) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """HERALD_META_PRICES set (usage estimates Meta's costs); the settings are read
    afresh with it, and again once it is gone."""
    from core.config import get_settings

    monkeypatch.setenv("HERALD_META_PRICES", '{"currency": "usd", "utility": "0.004"}')
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def providers(monkeypatch, meta_prices) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """Meta and Twilio in the sandbox, the admin API on; sends are not judged against
    the synced templates (the rows here are for their shape)."""
    from core.config import get_settings
    from providers import reset_providers
    from sandbox.app import SandboxServer
    from sandbox.state import MetaAccount, SandboxState, TwilioAccount

    state = SandboxState(
        twilio_accounts=[TwilioAccount(TWILIO_SID, TWILIO_TOKEN)],
        meta_accounts=[MetaAccount(META_PHONE_ID, META_TOKEN, META_SECRET)],
    )
    with SandboxServer(state) as sandbox:
        for name in ("META_GRAPH_BASE", "TWILIO_API_BASE", "TWILIO_CONTENT_BASE"):
            monkeypatch.setenv(name, sandbox.url)
        monkeypatch.setenv("HERALD_ADMIN_TOKEN", ADMIN)
        monkeypatch.setenv("HERALD_TEMPLATE_CHECKS", "0")
        get_settings.cache_clear()
        reset_providers()
        yield state
    monkeypatch.undo()
    get_settings.cache_clear()
    reset_providers()


# ---------------------------------------------------------------- rows with every field


def _accounts(session: Any, tenant_id: str) -> dict[str, ProviderAccount]:
    rows = session.scalars(select(ProviderAccount).where(ProviderAccount.tenant_id == tenant_id))
    return {a.provider: a for a in rows}


def _fill(tenant_id: str) -> dict[str, str]:
    """Messages (outbound, inbound), a contact, a template, an upload and a sender with
    every field they can have set; their ids by name."""
    from services.tenancy.sender_admin import add_sender

    now = utcnow()
    run = uuid.uuid4().hex  # provider ids are unique across tenants
    with session_scope() as session:
        accounts = _accounts(session, tenant_id)
        meta = accounts["meta"]
        meta.settings = {**meta.settings, "waba_id": "1234567890", "auto_mark_read": "false"}
        twilio = accounts["twilio"]
        twilio.settings = {**twilio.settings, "messaging_service_sid": "MG" + "0" * 32, "mps": "2"}
        session.get(Tenant, tenant_id).callback_url = "http://127.0.0.1:9/events"
        sender = add_sender(
            session,
            tenant_id,
            {"provider": "twilio", "address": free_number(), "mps": 1.5, "label": "main"},
        )
        inbound = Message(
            id=new_id("msg"),
            tenant_id=tenant_id,
            direction="inbound",
            channel="whatsapp",
            provider="meta",
            provider_account_id=meta.id,
            to_number="+12025550111",
            from_number=TO,
            body="look",
            media_urls=["https://lookaside.example/1", "https://lookaside.example/2"],
            options={
                "media_types": ["image/png"],
                "context": {
                    "id": "wamid.ctx",
                    "from": "12025550111",
                    "forwarded": True,
                    "frequently_forwarded": False,
                },
                "reaction": {"message_id": "wamid.sent", "emoji": "👍", "target": "msg_target"},
                "location": {"latitude": 1.5, "longitude": 2.5, "url": "https://maps.example"},
                "contacts": [{"name": {"formatted_name": "Ada"}, "phones": [{"phone": "+1"}]}],
                "sticker": {
                    "id": "st1",
                    "mime_type": "image/webp",
                    "sha256": "ab",
                    "animated": False,
                },
            },
            status="received",
            provider_message_id=f"wamid.in{run}",
            attempts=0,
            meta={},
            created_at=now,
            updated_at=now,
        )
        outbound = Message(
            id=new_id("msg"),
            tenant_id=tenant_id,
            direction="outbound",
            channel="whatsapp",
            provider="meta",
            provider_account_id=meta.id,
            to_number=TO,
            from_number="+12025550111",
            contact_id="con_x",
            body="here",
            media_urls=["https://example.com/a.pdf"],
            template={
                "name": "order_update",
                "language": "en_US",
                "variables": ["1"],
                "components": [{"type": "header"}],
                "content_sid": "HX" + "0" * 32,
                "content_variables": {"1": "one"},
            },
            options={
                "sender": {"id": sender.id},
                "target": {"id": inbound.id, "wamid": inbound.provider_message_id},
                "location": {"latitude": 1.5, "longitude": 2.5, "name": "Home", "address": "1 St"},
                "sticker": {"link": "https://example.com/s.webp"},
                "filename": "a.pdf",
                "mark_read": True,
                "failover": {"channel": "sms", "body": "sms text", "after_seconds": 600},
            },
            failover_pending=True,
            failover_at=now + timedelta(minutes=10),
            failover_id="msg_fallback",
            status="failed",
            provider_message_id=f"wamid.out{run}",
            error_code="provider_rejected",
            error_message="Re-engagement message",
            provider_error_code="131047",
            attempts=2,
            campaign_id=f"cmp_{run[:26]}",
            meta={"order": {"id": 7}},
            callback_url="http://127.0.0.1:9/mine",
            send_at=now - timedelta(minutes=5),
            price=Decimal("0.00500"),
            price_unit="USD",
            pricing_category="utility",
            billable=True,
            expires_at=now + timedelta(hours=1),
            created_at=now,
            updated_at=now,
            sent_at=now,
            delivered_at=now,
            read_at=now,
        )
        outbound.events = [
            MessageEvent(status="queued", source="api", applied=True, at=now),
            MessageEvent(
                status="failed",
                native_status="failed",
                source="meta",
                applied=True,
                error_code="131047",
                at=now,
            ),
        ]
        sms = Message(
            tenant_id=tenant_id,
            channel="sms",
            provider="twilio",
            provider_account_id=twilio.id,
            to_number=TO,
            body="priced",
            options={"smart_encoded": 2, "resend_of": "msg_a", "resent_as": "msg_b"},
            failover_of=f"msg_{run}"[:32],
            status="sent",
            provider_message_id="SM" + run,
            price=Decimal("0.00790"),
            price_unit="usd",
            created_at=now,
            updated_at=now,
        )
        contact = Contact(
            tenant_id=tenant_id,
            external_id="crm-1",
            phone="+12025550188",
            name="Ada",
            opted_out=True,
            opted_out_at=now,
            last_inbound_at=now,
        )
        template = Template(
            tenant_id=tenant_id,
            provider_account_id=meta.id,
            provider="meta",
            name=FILLED,
            language="en_US",
            status="approved",
            provider_status="APPROVED",
            status_reason="none",
            status_at=now,
            category="UTILITY",
            variables={"format": "positional", "count": 1},
            variable_count=1,
            components=[{"type": "BODY", "text": "Hi {{1}}"}],
            content_sid="HX" + "1" * 32,
            provider_template_id="987",
            synced_at=now,
            deleted_at=now,
        )
        media = Media(
            tenant_id=tenant_id,
            provider="meta",
            provider_account_id=meta.id,
            provider_media_id="m1",
            kind="document",
            mime_type="application/pdf",
            size=10,
            filename="a.pdf",
            sha256="0" * 64,
            expires_at=now + timedelta(days=30),
        )
        session.add_all([inbound, outbound, sms, contact, template, media])
        session.flush()
        return {
            "inbound": inbound.id,
            "inbound_wamid": inbound.provider_message_id,
            "outbound": outbound.id,
            "outbound_wamid": outbound.provider_message_id,
            "sms": sms.id,
            "sms_sid": sms.provider_message_id,
            "contact": contact.id,
            "media": media.id,
            "sender": sender.id,
        }


def _values(message: Message) -> dict[str, Any]:
    """A row's values by column name, as the accept path hands them to
    `new_message_to_dict`."""
    return {c.columns[0].name: getattr(message, c.key) for c in inspect(Message).column_attrs}


# ---------------------------------------------------------------- serializers vs schemas


def _samples(client, auth, tenant_id: str, ids: dict[str, str], monkeypatch) -> dict[str, list]:  # type: ignore[no-untyped-def]
    """Each response component, and what the serializers build for it from the rows."""
    from core.errors import InvalidRequest, RateLimited
    from models import Sender
    from services.campaigns.campaigns import campaign_to_dict
    from services.content import template_sync, templates
    from services.content.media import media_to_dict
    from services.messages.batch import item_answer
    from services.messages.serialize import message_to_dict, new_message_to_dict
    from services.policy.contacts import contact_to_dict
    from services.reporting.events import record_status_event
    from services.reporting.usage import GROUPS, usage
    from services.tenancy import admin
    from services.tenancy.sender_admin import sender_to_dict

    now = utcnow()
    sms = {"to": TO, "channel": "sms", "body": "hi"}
    entries = [{**sms, "idempotency_key": "k"}, {**sms, "idempotency_key": "k"}, {"to": "555"}]
    batch = client.post("/v1/messages/batch", json={"messages": entries}, headers=auth).get_json()
    over = RateLimited("Over the hourly quota.", headers={"Retry-After": "60"})
    with session_scope() as session:
        out = session.get(Message, ids["outbound"])
        inbound = session.get(Message, ids["inbound"])
        event = {"status": "queued", "at": now, "source": "api", "applied": True}
        messages = [
            message_to_dict(out),
            message_to_dict(inbound, events=False),
            new_message_to_dict(_values(out), event),
            message_to_dict(session.get(Message, ids["sms"])),  # segments, smart encoding
        ]
        campaign = Campaign(
            tenant_id=tenant_id,
            name="spring",
            channel="sms",
            provider="twilio",
            body="hi",
            status="running",
            rate=Decimal("2.5"),
            send_at=now,
            total=3,
            skipped=1,
            invalid=1,
            duplicates=1,
            invalid_rows=[{"row": 2, "error": "Not a valid phone number."}],
            quiet_hours={"start": "21:00", "end": "08:00", "default_timezone": "UTC", "zones": []},
            estimated_cost={"amount": "0.02", "currency": "USD"},
        )
        session.add(campaign)
        session.flush()
        record_status_event(session, out.id)
        tenant = session.get(Tenant, tenant_id)
        tenant.disabled_at = now
        tenant.sms_prices = {"currency": "USD", "per_segment": {"US": "0.0079"}}
        new_tenant = admin.create_tenant_with_key(
            session,
            {
                "name": "fresh",
                "callback_url": "https://x.example",
                "hourly_limit": 5,
                "keywords": {"stop": ["ARRET"]},
                "keyword_replies": {"help": ""},
            },
        )
        new_key = admin.create_tenant_key(session, tenant_id, "ci")
        key = session.get(ApiKey, new_key["id"])
        key.revoked_at = now
        monkeypatch.setattr(template_sync, "fetch_twilio_contents", lambda creds: [])
        monkeypatch.setattr(
            template_sync,
            "fetch_meta_templates",
            lambda creds: (_ for _ in ()).throw(templates.TemplateSyncError("Meta refused")),
        )
        accounts = _accounts(session, tenant_id)
        synced = [template_sync.sync_account(session, a) for a in accounts.values()]
        template = session.scalars(
            select(Template).where(Template.tenant_id == tenant_id, Template.name == FILLED)
        ).one()
        events = session.scalars(
            select(EventDelivery).where(EventDelivery.tenant_id == tenant_id)
        ).all()
        return {
            "Message": messages,
            "MessageBatch": [batch, {**batch, "data": [item_answer(0, over)]}],
            "MessageStatusEvent": [{"id": f"evt_{e.id}", **e.payload} for e in events],
            "MessageFailoverEvent": [
                {
                    "id": "evt_1",
                    "type": "message.failover",
                    "message": messages[0],
                    "fallback": messages[3],
                },
                {
                    "id": "evt_2",
                    "type": "message.failover",
                    "message": messages[0],
                    "fallback": None,
                    "refusal": {"code": "opted_out", "message": "The recipient opted out."},
                },
                {
                    "id": "evt_3",
                    "type": "message.late_status",
                    "message": messages[0],
                    "status": "delivered",
                    "native_status": "delivered",
                },
            ],
            "ContactView": [contact_to_dict(session.get(Contact, ids["contact"]))],
            "Campaign": [campaign_to_dict(session, campaign)],
            "CampaignResend": [{"campaign_id": campaign.id, "resent": 1, "refused": {"x": 1}}],
            "MediaView": [media_to_dict(session.get(Media, ids["media"]))],
            "TemplateView": [templates.template_to_dict(template)],
            "SyncResult": synced,
            "Usage": [
                usage(session, tenant_id, now - timedelta(days=1), now + timedelta(days=1), GROUPS),
                usage(session, tenant_id, now - timedelta(days=1), now + timedelta(days=1)),
            ],
            "TenantView": [admin.tenant_to_dict(tenant), new_tenant["tenant"]],
            "NewTenantView": [new_tenant],
            "AccountView": [admin.account_to_dict(a) for a in accounts.values()],
            "ApiKeyView": [admin.api_key_to_dict(key)],
            "NewApiKeyView": [new_key],
            "SenderView": [sender_to_dict(session.get(Sender, ids["sender"]))],
            "Error": [InvalidRequest("bad", fields={"to": ["Not a number."]}).to_dict()],
        }


# Components whose own samples cover them: others that nest them check only their own
# fields.
OWNED = ("Message", "Error", "TenantView", "ApiKeyView")


def test_each_serializer_builds_exactly_the_fields_of_its_schema(
    client, tenant, auth, dispatched, meta_prices, monkeypatch
) -> None:
    ids = _fill(tenant["tenant_id"])
    samples = _samples(client, auth, tenant["tenant_id"], ids, monkeypatch)
    walk = Walk(client.get("/openapi.json").get_json())
    for name, values in samples.items():
        assert values, name
        used: set[str] = set()
        for value in values:
            assert walk.check(walk.component(name), value, name) == []
            used |= walk.used
            walk.used = set()
        stop = {f"#/components/schemas/{n}" for n in OWNED if n != name}
        never = walk.declared(walk.component(name), stop=stop) - used
        assert not never, f"{name}: declared, never built: {sorted(never)}"


# ---------------------------------------------------------------- the API, driven


class Recorder:
    """Calls the app, and checks each JSON answer against the document's schema for
    its operation and status."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.document = client.get("/openapi.json").get_json()
        self.walk = Walk(self.document)
        self.answered: set[tuple[str, str, str]] = set()
        self.patterns = sorted(
            (
                (path.count("{"), re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$"), path)
                for path in self.document["paths"]
            ),
            key=lambda p: p[0],
        )

    def operation(self, method: str, url: str) -> tuple[str, dict[str, Any]]:
        for _, pattern, path in self.patterns:
            item = self.document["paths"][path]
            if pattern.match(url) and method in item:
                return path, item[method]
        raise AssertionError(f"{method} {url} is not in the document")

    def __call__(
        self, method: str, url: str, status: int, *, documented_as: str = "", **kwargs: Any
    ) -> Any:
        """`documented_as`: the operation that documents this method's answer (seed 000's
        POST documents the 405 of its other methods)."""
        resp = self.client.open(url, method=method.upper(), **kwargs)
        assert resp.status_code == status, (method, url, resp.get_data(as_text=True))
        method = documented_as or method
        path, operation = self.operation(method, url.split("?", 1)[0])
        code = str(resp.status_code)
        where = f"{method} {path} {code}"
        response = self.walk.resolve(operation["responses"].get(code, {}))
        schema = response.get("content", {}).get("application/json", {}).get("schema")
        if code not in operation["responses"]:
            self.walk.problems.append(f"{where}: the status is not in the document")
        elif resp.is_json and schema is None:
            self.walk.problems.append(f"{where}: a JSON body, none in the document")
        elif resp.is_json:
            self.walk.check(schema, resp.get_json(), where)
            self.answered.add((method, path, code))
        return resp


def _signed_meta(body: dict[str, Any]) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    signature = hmac.new(META_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return {
        "data": raw,
        "content_type": "application/json",
        "headers": {"X-Hub-Signature-256": f"sha256={signature}"},
    }


def test_every_answer_is_declared_in_the_document(
    client, tenant, auth, dispatched, providers
) -> None:
    from twilio.request_validator import RequestValidator

    from core.config import get_settings
    from sandbox.conversations import remember_inbound

    call = Recorder(client)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tenant_id = tenant["tenant_id"]
    ids = _fill(tenant_id)

    # Admin
    created = call(
        "post",
        "/admin/v1/tenants",
        201,
        json={"name": "shapes", "callback_url": "https://x.example", "daily_limit": 9},
        headers=admin,
    ).get_json()
    other = created["tenant"]["id"]
    call("get", "/admin/v1/tenants", 200, headers=admin)
    call("get", f"/admin/v1/tenants/{other}", 200, headers=admin)
    call("patch", f"/admin/v1/tenants/{other}", 200, json={"hourly_limit": 3}, headers=admin)
    call("post", f"/admin/v1/tenants/{other}/disable", 200, headers=admin)
    call("post", f"/admin/v1/tenants/{other}/enable", 200, headers=admin)
    account = call(
        "post",
        f"/admin/v1/tenants/{other}/accounts",
        201,
        json={
            "provider": "meta",
            "phone_number_id": "109876543210777",
            "access_token": "t",
            "waba_id": "55",
            "display_phone_number": "+12025550199",
        },
        headers=admin,
    ).get_json()
    call(
        "patch",
        f"/admin/v1/tenants/{other}/accounts/{account['id']}",
        200,
        json={"app_secret": "s", "auto_mark_read": "true"},
        headers=admin,
    )
    call("get", f"/admin/v1/tenants/{tenant_id}/accounts", 200, headers=admin)
    key = call(
        "post", f"/admin/v1/tenants/{other}/keys", 201, json={"name": "ci"}, headers=admin
    ).get_json()
    call("delete", f"/admin/v1/tenants/{other}/keys/{key['id']}", 200, headers=admin)
    call("get", f"/admin/v1/tenants/{other}/keys", 200, headers=admin)
    sender = call(
        "post",
        f"/admin/v1/tenants/{tenant_id}/senders",
        201,
        json={"provider": "twilio", "address": free_number(), "channels": ["sms"]},
        headers=admin,
    ).get_json()
    call(
        "patch",
        f"/admin/v1/tenants/{tenant_id}/senders/{sender['id']}",
        200,
        json={"label": "spare", "mps": 2},
        headers=admin,
    )
    call("get", f"/admin/v1/tenants/{tenant_id}/senders", 200, headers=admin)
    call("delete", f"/admin/v1/tenants/{tenant_id}/senders/{sender['id']}", 204, headers=admin)
    call("delete", f"/admin/v1/tenants/{other}/accounts/{account['id']}", 204, headers=admin)
    call("get", "/admin/v1/tenants/ten_nope", 404, headers=admin)

    # Messages
    sms = {"to": TO, "channel": "sms", "body": "hi", "metadata": {"k": [1, {"x": None}]}}
    call("post", "/v1/messages", 202, json=sms, headers=auth)
    keyed = {**auth, "Idempotency-Key": "shapes-1"}
    later = {**sms, "send_at": (utcnow() + timedelta(days=1)).isoformat(), "ttl": 172800}
    first = call("post", "/v1/messages", 202, json=later, headers=keyed).get_json()
    call("post", "/v1/messages", 200, json=later, headers=keyed)
    reply = {
        "to": TO,
        "provider": "meta",
        "reply_to": ids["inbound"],
        "location": {"latitude": 1.0, "longitude": 2.0, "name": "Here"},
    }
    call("post", "/v1/messages", 202, json=reply, headers=auth)
    template = {"to": TO, "provider": "meta", "template": {"name": "hello", "variables": ["a"]}}
    call("post", "/v1/messages", 202, json=template, headers=auth)
    batch = {
        "messages": [
            {**sms, "idempotency_key": "b-1"},
            {**sms, "idempotency_key": "b-1"},
            {"to": "555", "body": "x"},
        ]
    }
    call("post", "/v1/messages/batch", 200, json=batch, headers=auth)
    for message_id in (ids["outbound"], ids["inbound"]):
        call("get", f"/v1/messages/{message_id}", 200, headers=auth)
    call("get", "/v1/messages?limit=2", 200, headers=auth)
    call("post", f"/v1/messages/{first['id']}/cancel", 200, headers=auth)
    call("post", f"/v1/messages/{first['id']}/cancel", 409, headers=auth)
    failed = call("post", "/v1/messages", 202, json={**sms, "body": "again"}, headers=auth)
    with session_scope() as session:
        session.get(Message, failed.get_json()["id"]).status = "failed"
    call("post", f"/v1/messages/{failed.get_json()['id']}/resend", 202, headers=auth)
    call("post", f"/v1/messages/{failed.get_json()['id']}/resend", 200, headers=auth)
    remember_inbound(providers, META_PHONE_ID, ids["inbound_wamid"])  # Meta received it
    call("post", f"/v1/messages/{ids['inbound']}/read", 200, json={"typing": True}, headers=auth)
    call("post", "/v1/messages", 400, json={"to": "x"}, headers=auth)
    call("get", "/v1/messages/msg_nope", 404, headers=auth)
    call("get", "/v1/messages", 401)

    # Contacts
    contact = {"id": "crm-2", "phone": "+12025550189", "name": "Bo"}
    call("post", "/v1/contacts", 201, json=contact, headers=auth)
    call("post", "/v1/contacts", 200, json=contact, headers=auth)
    call("get", "/v1/contacts/crm-2", 200, headers=auth)
    call("patch", "/v1/contacts/crm-2", 200, json={"opted_out": True}, headers=auth)
    call("post", "/v1/messages", 422, json={**sms, "to": "+12025550189"}, headers=auth)
    # Erasure (services/privacy/): of people with no messages, so the events below stay.
    call("delete", "/v1/contacts/crm-2", 200, headers=auth)
    call("post", "/v1/erasures", 200, json={"phone": "+12025550188"}, headers=auth)
    erasure = {"wa_id": "12025550187", "tenant_id": other}
    call("post", "/admin/v1/erasures", 200, json=erasure, headers=admin)

    # Campaigns
    campaign = {
        "name": "spring",
        "channel": "sms",
        "body": "Spring sale",
        "rate": 5,
        "quiet_hours": {"start": "21:00", "end": "08:00"},
        "recipients": [{"to": TO}, {"to": TO}, {"to": "nope"}, {"to": "+15005550011"}],
    }
    made = call("post", "/v1/campaigns", 201, json=campaign, headers=auth).get_json()
    call("get", f"/v1/campaigns/{made['id']}", 200, headers=auth)
    call("get", "/v1/campaigns?limit=1", 200, headers=auth)
    call("post", f"/v1/campaigns/{made['id']}/pause", 200, headers=auth)
    call("post", f"/v1/campaigns/{made['id']}/resend", 200, headers=auth)
    upload = {
        "campaign": json.dumps({"name": "csv", "channel": "sms", "body": "hi"}),
        "file": (io.BytesIO(b"to\n+15005550012\n"), "list.csv"),
    }
    call("post", "/v1/campaigns", 201, data=upload, headers=auth)

    # Templates, media, usage
    call("get", "/v1/templates?include_deleted=true", 200, headers=auth)
    call("post", "/v1/templates/sync", 200, headers=auth)
    uploaded = call(
        "post",
        "/v1/media",
        201,
        data={"file": (io.BytesIO(PNG), "a.png"), "type": "image/png"},
        headers=auth,
    ).get_json()
    call("get", f"/v1/media/{uploaded['id']}", 200, headers=auth)
    call("get", "/v1/usage?group_by=channel,provider,category,campaign,status", 200, headers=auth)
    call("get", "/v1/usage", 200, headers=auth)

    # Webhooks: a Twilio status applied (an event out), a Meta status
    url = get_settings().public_url + "/webhooks/twilio/status"  # what Twilio signs
    form = {"MessageSid": ids["sms_sid"], "MessageStatus": "delivered", "AccountSid": TWILIO_SID}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, form)
    call(
        "post", "/webhooks/twilio/status", 204, data=form, headers={"X-Twilio-Signature": signature}
    )
    status = {
        "id": ids["outbound_wamid"],
        "status": "read",
        "timestamp": "1700000000",
        "recipient_id": "1",
    }
    value = {"metadata": {"phone_number_id": META_PHONE_ID}, "statuses": [status]}
    change = {"field": "messages", "value": value}
    payload = {"object": "whatsapp_business_account", "entry": [{"changes": [change]}]}
    call("post", "/webhooks/meta", 200, **_signed_meta(payload))

    # Operations
    call("get", "/healthz", 200)
    call("get", "/readyz", 200)
    call("get", "/openapi.json", 200)

    # The seeds' routes
    call("post", "/api/twilio/message", 200, json={"to": TO, "message": "hi"}, headers=auth)
    call("get", "/api/twilio/message", 405, documented_as="post", headers=auth)
    call("post", "/api/twilio/message", 422, json={"to": "x", "message": "hi"}, headers=auth)
    sent = call(
        "post",
        "/api/whatsapp/send",
        200,
        json={"toPhoneNumber": TO, "messageBody": "hi"},
        headers=auth,
    ).get_json()
    call("get", f"/api/whatsapp/status/{sent['messageId']}", 200, headers=auth)
    call("post", "/api/v1/whatsapp/send-message", 200, json={"to": TO, "text": "hi"}, headers=auth)
    call(
        "post",
        "/api/v1/whatsapp/send-template",
        200,
        json={"to": TO, "templateName": "hello", "parameters": ["a"]},
        headers=auth,
    )
    call("post", "/api/v1/whatsapp/send-message", 400, json={"to": TO}, headers=auth)

    # Events out: every payload stored for the tenant (cancel, status callbacks).
    with session_scope() as session:
        events = session.scalars(
            select(EventDelivery).where(EventDelivery.tenant_id == tenant_id)
        ).all()
        assert len({e.payload["message"]["status"] for e in events}) >= 2
        for e in events:
            name = "MessageStatusEvent" if e.payload["type"] == "message.status" else None
            call.walk.check(
                call.walk.component(name or "MessageFailoverEvent"),
                {"id": f"evt_{e.id}", **e.payload},
            )

    assert call.walk.problems == []
    untried = {
        (method, path, code)
        for path, item in call.document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
        for code, response in operation["responses"].items()
        if code.startswith("2")
        and "application/json" in call.walk.resolve(response).get("content", {})
    } - call.answered
    assert not untried, f"answers with a JSON body no call of this test made: {sorted(untried)}"
