"""WhatsApp templates end to end against the sandbox: sync from Meta and Twilio Content
(with paging), Meta's status webhooks, the accept-time refusals, `GET /v1/templates`,
and the sandbox's own template errors at send."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from models import Message, Template, session_scope
from services.content import template_sync
from services.content import templates as svc
from services.messages.delivery import deliver
from tests.conftest import META_SECRET, META_TOKEN, make_tenant

TWILIO_TOKEN = "tpl-twilio-token"


def _tenant(live: Any) -> dict[str, Any]:
    """A tenant with a Meta number on a WABA of its own and a Twilio account of its own,
    so templates registered in the sandbox concern no other test."""
    phone_id = "1" + str(uuid.uuid4().int)[:14]
    waba = "2" + str(uuid.uuid4().int)[:14]
    sid = "AC" + uuid.uuid4().hex
    meta = {
        "phone_number_id": phone_id,
        "access_token": META_TOKEN,
        "app_secret": META_SECRET,
        "waba_id": waba,
    }
    twilio = {"account_sid": sid, "auth_token": TWILIO_TOKEN, "whatsapp_from": "+14155238886"}
    live.control.post("/_sandbox/accounts", json={"provider": "meta", **meta}).raise_for_status()
    live.control.post(
        "/_sandbox/accounts",
        json={"provider": "twilio", "account_sid": sid, "auth_token": TWILIO_TOKEN},
    ).raise_for_status()
    tenant = make_tenant("tpl", meta=meta, twilio=twilio)
    return {
        **tenant,
        "waba": waba,
        "sid": sid,
        "auth": {"Authorization": f"Bearer {tenant['api_key']}"},
    }


def _meta_template(live: Any, waba: str, name: str, **fields: Any) -> dict[str, Any]:
    response = live.control.post(
        "/_sandbox/templates",
        json={"provider": "meta", "waba_id": waba, "name": name, "status": "APPROVED", **fields},
    )
    assert response.status_code == 201, response.text
    return response.json()


def _content(live: Any, sid: str, **fields: Any) -> dict[str, Any]:
    response = live.control.post(
        "/_sandbox/templates", json={"provider": "twilio", "account_sid": sid, **fields}
    )
    assert response.status_code == 201, response.text
    return response.json()


ORDER = [
    {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"},
    {"type": "BODY", "text": "Hi {{1}}, your order {{2}} is ready."},
    {
        "type": "BUTTONS",
        "buttons": [
            {"type": "URL", "text": "Track", "url": "https://shop.example/t/{{1}}"},
            {"type": "QUICK_REPLY", "text": "Stop"},
        ],
    },
]


def _sync(client: Any, tenant: dict[str, Any], **params: str) -> dict[str, Any]:
    response = client.post("/v1/templates/sync", headers=tenant["auth"], query_string=params)
    assert response.status_code == 200, response.get_json()
    return {r["provider"]: r for r in response.get_json()["accounts"]}


def _list(client: Any, tenant: dict[str, Any], **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/templates", headers=tenant["auth"], query_string=params)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def _send(client: Any, tenant: dict[str, Any], **fields: Any) -> Any:
    return client.post(
        "/v1/messages", json={"to": "+12025550143", **fields}, headers=tenant["auth"]
    )


def test_meta_sync_follows_pages_and_keeps_deleted_templates(live, client, monkeypatch) -> None:
    monkeypatch.setattr(template_sync, "META_PAGE_SIZE", 2)
    tenant = _tenant(live)
    _meta_template(live, tenant["waba"], "order_ready", components=ORDER, category="UTILITY")
    _meta_template(live, tenant["waba"], "order_ready", language="es", status="PENDING")
    gone = _meta_template(live, tenant["waba"], "old_promo", status="REJECTED", reason="SCAM")
    _meta_template(
        live,
        tenant["waba"],
        "hello_named",
        parameter_format="NAMED",
        components=[{"type": "BODY", "text": "Hi {{first_name}}"}],
    )
    _meta_template(
        live,
        tenant["waba"],
        "doc_header",
        components=[{"type": "HEADER", "format": "DOCUMENT"}, {"type": "BODY", "text": "Here"}],
    )

    result = _sync(client, tenant, provider="meta")["meta"]
    assert (result["ok"], result["fetched"], result["created"]) == (True, 5, 5)
    rows = {(t["name"], t["language"]): t for t in _list(client, tenant, provider="meta")}
    assert len(rows) == 5
    order = rows[("order_ready", "en_US")]
    assert (order["status"], order["provider_status"], order["category"]) == (
        "approved",
        "APPROVED",
        "UTILITY",
    )
    assert order["variables"]["header"]["count"] == 1
    assert order["variables"]["body"] == {"count": 2, "names": ["1", "2"]}
    assert order["variables"]["buttons"] == [{"index": 0, "type": "url", "count": 1}]
    assert order["variable_count"] == 4 and order["provider_template_id"]
    assert rows[("order_ready", "es")]["status"] == "pending"
    assert rows[("old_promo", "en_US")]["status_reason"] == "SCAM"
    assert rows[("hello_named", "en_US")]["variables"]["format"] == "named"
    assert rows[("doc_header", "en_US")]["variables"]["header"] == {"count": 1, "type": "document"}

    live.control.delete(f"/_sandbox/templates/{gone['id']}").raise_for_status()
    again = _sync(client, tenant, provider="meta")["meta"]
    assert (again["deleted"], again["created"], again["fetched"]) == (1, 0, 4)
    assert ("old_promo", "en_US") not in {(t["name"], t["language"]) for t in _list(client, tenant)}
    kept = _list(client, tenant, name="old_promo", include_deleted="true")
    assert [(t["status"], t["deleted"]) for t in kept] == [("deleted", True)]


def test_twilio_sync_follows_pages_with_approval_status(live, client, monkeypatch) -> None:
    monkeypatch.setattr(template_sync, "TWILIO_PAGE_SIZE", 2)
    tenant = _tenant(live)
    approved = _content(
        live,
        tenant["sid"],
        friendly_name="order_ready",
        status="approved",
        variables={"1": "Ann", "2": "123"},
        types={"twilio/text": {"body": "Hi {{1}}, order {{2}} is ready"}},
    )
    rejected = _content(
        live, tenant["sid"], friendly_name="promo", status="rejected", reason="Promotional content"
    )
    _content(live, tenant["sid"], friendly_name="draft")

    result = _sync(client, tenant, provider="twilio")["twilio"]
    assert (result["ok"], result["fetched"], result["created"]) == (True, 3, 3)
    rows = {t["content_sid"]: t for t in _list(client, tenant, provider="twilio")}
    assert len(rows) == 3
    row = rows[approved["sid"]]
    assert (row["name"], row["language"], row["status"], row["category"]) == (
        "order_ready",
        "en",
        "approved",
        "UTILITY",
    )
    assert row["variables"]["names"] == ["1", "2"] and row["variable_count"] == 2
    assert rows[rejected["sid"]]["status"] == "rejected"
    assert rows[rejected["sid"]]["status_reason"] == "Promotional content"
    # Twilio sends no status webhook: a change arrives with the next sync.
    live.control.post(
        f"/_sandbox/templates/{rejected['sid']}/status", json={"status": "approved"}
    ).raise_for_status()
    assert _sync(client, tenant, provider="twilio")["twilio"]["updated"] == 1
    assert _list(client, tenant, provider="twilio", status="approved")[-1]["content_sid"] in {
        approved["sid"],
        rejected["sid"],
    }
    assert len(_list(client, tenant, provider="twilio", status="approved")) == 2


def test_meta_status_webhook_updates_the_template(live, client) -> None:
    tenant = _tenant(live)
    created = _meta_template(
        live, tenant["waba"], "order_ready", status="PENDING", components=ORDER
    )
    _sync(client, tenant, provider="meta")
    assert _send(client, tenant, template={"name": "order_ready"}).get_json()["error"]["fields"][
        "template"
    ] == ["Template 'order_ready' (en_US) is pending, not approved."]

    answer = live.control.post(
        f"/_sandbox/templates/{created['id']}/status", json={"status": "APPROVED"}
    ).json()
    assert answer["webhook"]["status_code"] == 200
    change = answer["webhook"]["payload"]["entry"][0]["changes"][0]
    assert change["field"] == "message_template_status_update"
    assert change["value"]["message_template_id"] == int(created["id"])
    [row] = _list(client, tenant, name="order_ready")
    assert (row["status"], row["provider_status"]) == ("approved", "APPROVED")

    answer = live.control.post(
        f"/_sandbox/templates/{created['id']}/status", json={"status": "PAUSED"}
    ).json()
    assert answer["webhook"]["ok"]
    [row] = _list(client, tenant, name="order_ready")
    assert row["status"] == "paused" and "FIRST_PAUSE" in row["status_reason"]
    refused = _send(client, tenant, template={"name": "order_ready", "variables": ["a", "b"]})
    assert refused.status_code == 400
    assert "is paused" in refused.get_json()["error"]["fields"]["template"][0]


def test_meta_accept_time_refusals(live, client) -> None:
    tenant = _tenant(live)
    _meta_template(live, tenant["waba"], "order_ready", components=ORDER[1:2])  # body {{1}} {{2}}
    _meta_template(live, tenant["waba"], "order_ready", language="es")
    _meta_template(live, tenant["waba"], "welcome", status="REJECTED", reason="INVALID_FORMAT")
    _meta_template(live, tenant["waba"], "shipping", components=ORDER)
    # Never synced: accepted as before (the sandbox, like Meta, judges it at send).
    unsynced = _send(client, tenant, template={"name": "nope"})
    assert unsynced.status_code == 202
    # Refused at send: failed, so it holds up none of the messages to this user below
    # (they leave in acceptance order, docs/guarantees.md).
    assert deliver(unsynced.get_json()["id"]).action == "failed"
    _sync(client, tenant, provider="meta")

    def problem(template: dict[str, Any]) -> str:
        response = _send(client, tenant, template=template)
        assert response.status_code == 400, response.get_json()
        error = response.get_json()["error"]
        assert error["code"] == "invalid_fields"
        return error["fields"]["template"][0]

    assert problem({"name": "nope"}) == (
        "No template named 'nope' on this WhatsApp Business Account."
    )
    assert problem({"name": "welcome"}) == (
        "Template 'welcome' (en_US) is rejected, not approved: INVALID_FORMAT."
    )
    assert problem({"name": "order_ready", "language": "pt_BR", "variables": ["a", "b"]}) == (
        "Template 'order_ready' has no pt_BR version; it exists in en_US (approved), es (approved)."
    )
    assert problem({"name": "order_ready", "variables": ["a"]}) == (
        "Template 'order_ready' (en_US): body expects 2 variables, got 1."
    )
    assert problem({"name": "shipping", "variables": ["a", "b"]}) == (
        "Template 'shipping' (en_US): header expects 1 variable, got 0; "
        "button 0 (url) expects 1 parameter, got 0."
    )
    components = [
        {"type": "header", "parameters": [{"type": "text", "text": "7"}]},
        {
            "type": "body",
            "parameters": [{"type": "text", "text": "Ann"}, {"type": "text", "text": "7"}],
        },
        {
            "type": "button",
            "sub_type": "url",
            "index": "0",
            "parameters": [{"type": "text", "text": "7"}],
        },
    ]
    ok = _send(client, tenant, template={"name": "shipping", "components": components})
    assert ok.status_code == 202, ok.get_json()
    deliver(ok.get_json()["id"])
    good = _send(client, tenant, template={"name": "order_ready", "variables": ["Ann", "7"]})
    assert good.status_code == 202
    deliver(good.get_json()["id"])
    with session_scope() as session:
        assert session.get(Message, ok.get_json()["id"]).status in {"sent", "delivered", "read"}
        assert session.get(Message, good.get_json()["id"]).status in {"sent", "delivered", "read"}

    # The Celery task takes the same path and answers the same refusal.
    from workers.tasks import send_message

    result = send_message.apply(
        args=[tenant["tenant_id"]], kwargs={"to": "+12025550143", "template": {"name": "nope"}}
    ).get()
    assert result["error"]["code"] == "invalid_fields"
    assert "No template named 'nope'" in result["error"]["fields"]["template"][0]


def test_twilio_accept_time_refusals(live, client) -> None:
    tenant = _tenant(live)
    ok = _content(
        live,
        tenant["sid"],
        friendly_name="order_ready",
        status="approved",
        types={"twilio/text": {"body": "Hi {{1}}, order {{2}}"}},
    )
    bad = _content(live, tenant["sid"], friendly_name="promo", status="rejected", reason="Spam")
    _sync(client, tenant, provider="twilio")
    unknown_sid = "HX" + uuid.uuid4().hex

    def problem(template: dict[str, Any]) -> str:
        response = _send(client, tenant, provider="twilio", template=template)
        assert response.status_code == 400, response.get_json()
        return response.get_json()["error"]["fields"]["template"][0]

    assert (
        problem({"content_sid": unknown_sid}) == f"No Content {unknown_sid} on this Twilio account."
    )
    assert problem({"content_sid": bad["sid"]}) == (
        f"Content {bad['sid']} (promo) is rejected for WhatsApp: Spam."
    )
    assert problem({"content_sid": ok["sid"], "content_variables": {"1": "Ann"}}) == (
        f"Content {ok['sid']} (order_ready) expects 2 variables (1, 2), got 1; missing 2."
    )
    sent = _send(
        client,
        tenant,
        provider="twilio",
        template={"content_sid": ok["sid"], "content_variables": {"1": "Ann", "2": "7"}},
    )
    assert sent.status_code == 202, sent.get_json()
    deliver(sent.get_json()["id"])
    with session_scope() as session:
        assert session.get(Message, sent.get_json()["id"]).status in {"sent", "delivered", "read"}


def test_campaigns_refuse_unknown_templates_and_fail_rows_with_wrong_variables(
    live, client
) -> None:
    tenant = _tenant(live)
    _meta_template(live, tenant["waba"], "order_ready", components=ORDER[1:2])
    _sync(client, tenant, provider="meta")
    refused = client.post(
        "/v1/campaigns",
        headers=tenant["auth"],
        json={"name": "c1", "template": {"name": "nope"}, "recipients": [{"to": "+12025550143"}]},
    )
    assert refused.status_code == 400
    assert "No template named 'nope'" in refused.get_json()["error"]["fields"]["template"][0]
    created = client.post(
        "/v1/campaigns",
        headers=tenant["auth"],
        json={
            "name": "c2",
            "template": {"name": "order_ready"},
            "recipients": [
                {"to": "+12025550143", "variables": ["Ann", "7"]},
                {"to": "+12025550144", "variables": ["Bob"]},
            ],
        },
    )
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["total"] == 1 and body["invalid"] == 1
    assert body["invalid_rows"] == [
        {"row": 2, "error": "Template 'order_ready' (en_US): body expects 2 variables, got 1."}
    ]


def test_list_filters_and_tenant_isolation(live, client) -> None:
    tenant, other = _tenant(live), _tenant(live)
    _meta_template(live, tenant["waba"], "order_ready")
    _meta_template(live, tenant["waba"], "order_ready", language="es", status="PAUSED")
    _content(live, tenant["sid"], friendly_name="order_ready", status="approved")
    _sync(client, tenant)
    assert len(_list(client, tenant)) == 3
    assert len(_list(client, tenant, provider="twilio")) == 1
    assert [t["language"] for t in _list(client, tenant, status="paused")] == ["es"]
    assert [t["status"] for t in _list(client, tenant, provider="meta", language="en_US")] == [
        "approved"
    ]
    assert _list(client, tenant, name="nothing") == []
    page = client.get("/v1/templates", headers=tenant["auth"], query_string={"limit": 2}).get_json()
    rest = _list(client, tenant, cursor=page["next_cursor"])
    assert len(page["data"]) == 2 and len(rest) == 1
    assert {t["id"] for t in page["data"]}.isdisjoint({t["id"] for t in rest})
    assert _list(client, other) == []  # another tenant's templates are not listed
    bad = client.get("/v1/templates", headers=tenant["auth"], query_string={"provider": "x"})
    assert bad.status_code == 400
    assert client.get("/v1/templates").status_code == 401


def test_sandbox_refuses_template_sends_with_meta_codes(live, client) -> None:
    """Accepted before any sync (no checks), then refused by the sandbox at send the way
    Meta refuses: 132001 unknown, 132000 wrong count, 132015 paused."""
    tenant = _tenant(live)
    ids = {
        case: _send(client, tenant, template=template).get_json()["id"]
        for case, template in {
            "unknown": {"name": "nope"},
            "count": {"name": "order_ready", "variables": ["a"]},
            "paused": {"name": "slow", "variables": []},
        }.items()
    }
    _meta_template(live, tenant["waba"], "order_ready", components=ORDER[1:2])
    _meta_template(live, tenant["waba"], "slow", status="PAUSED")
    for message_id in ids.values():
        deliver(message_id)
    with session_scope() as session:
        codes = {case: session.get(Message, mid).provider_error_code for case, mid in ids.items()}
        assert all(session.get(Message, mid).status == "failed" for mid in ids.values())
    assert codes == {"unknown": "132001", "count": "132000", "paused": "132015"}
    sent = live.sends(herald_id=ids["count"])[0]
    assert sent["status_code"] == 400 and sent["error_code"] == 132000


def test_checks_can_be_turned_off(live, client, monkeypatch) -> None:
    tenant = _tenant(live)
    _meta_template(live, tenant["waba"], "order_ready")
    _sync(client, tenant, provider="meta")
    assert _send(client, tenant, template={"name": "nope"}).status_code == 400
    from core.config import get_settings

    monkeypatch.setenv("HERALD_TEMPLATE_CHECKS", "false")
    get_settings.cache_clear()
    try:
        assert _send(client, tenant, template={"name": "nope"}).status_code == 202
    finally:
        monkeypatch.delenv("HERALD_TEMPLATE_CHECKS")
        get_settings.cache_clear()


def test_sync_reports_a_meta_account_without_waba_id(live, client) -> None:
    tenant = make_tenant("nowaba")
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    answer = client.post("/v1/templates/sync", headers=auth, query_string={"provider": "meta"})
    assert answer.status_code == 200
    [result] = answer.get_json()["accounts"]
    assert result["ok"] is False and "waba_id" in result["error"]
    with session_scope() as session:
        assert (
            session.scalars(
                select(Template).where(Template.tenant_id == tenant["tenant_id"])
            ).first()
            is None
        )


@pytest.fixture(autouse=True)
def _forget_templates() -> Any:
    yield
    svc.forget_cached()


def test_cli_and_daily_task_sync(live, app, capsys, monkeypatch) -> None:
    import json

    import httpx

    from herald import cli_commands
    from herald.cli import main
    from workers.tasks import sync_templates

    tenant = _tenant(live)
    _meta_template(live, tenant["waba"], "order_ready")
    monkeypatch.setattr(cli_commands, "transport", httpx.WSGITransport(app=app))
    argv = ["templates", "sync", "--key", tenant["api_key"], "--url", "http://herald.test"]
    assert main([*argv, "--provider", "meta"]) == 0
    [result] = json.loads(capsys.readouterr().out)["accounts"]
    assert (result["provider"], result["created"]) == ("meta", 1)

    content = _content(live, tenant["sid"], friendly_name="daily", status="approved")
    totals = sync_templates()  # beat's daily task: every account
    assert totals["created"] >= 1 and totals["accounts"] >= 2
    with session_scope() as session:
        row = session.scalars(select(Template).where(Template.content_sid == content["sid"])).one()
        assert (row.tenant_id, row.status) == (tenant["tenant_id"], "approved")


def test_status_webhooks_touch_only_what_their_signer_may_and_never_go_back(live, client) -> None:
    import time

    import httpx

    from sandbox.callbacks import meta_callback
    from sandbox.templates import status_update_payload

    tenant = _tenant(live)
    created = _meta_template(live, tenant["waba"], "order_ready")
    _sync(client, tenant, provider="meta")
    intruder_secret = "another-tenants-app-secret"
    make_tenant(
        "intruder",
        meta={
            "phone_number_id": "1" + str(uuid.uuid4().int)[:14],
            "access_token": "t",
            "app_secret": intruder_secret,
            "waba_id": "3" + str(uuid.uuid4().int)[:14],
        },
    )

    def post(body: dict[str, Any], secret: str) -> None:
        hook = meta_callback(
            f"{live.api_url}/webhooks/meta",
            body,
            secret,
            kind="template",
            event="x",
            message_id=None,
        )
        answer = httpx.post(hook.url, content=hook.body, headers=hook.headers, timeout=10)
        assert answer.status_code == 200, answer.text

    def status() -> str:
        [row] = _list(client, tenant, name="order_ready")
        return row["status"]

    paused = status_update_payload(tenant["waba"], created, "PAUSED", "NONE")
    post(paused, intruder_secret)  # signed by another tenant's app secret: not for this WABA
    assert status() == "approved"
    stale = status_update_payload(tenant["waba"], created, "REJECTED", "SCAM")
    stale["entry"][0]["time"] = int(time.time()) - 3600  # older than the sync
    post(stale, META_SECRET)
    assert status() == "approved"
    post(paused, META_SECRET)
    assert status() == "paused"
    fresh = status_update_payload(
        tenant["waba"], {**created, "name": "brand_new", "id": "42"}, "APPROVED", "NONE"
    )
    post(fresh, META_SECRET)  # a template not synced yet: added, its variables unknown
    [row] = _list(client, tenant, name="brand_new")
    assert (row["status"], row["provider_template_id"], row["components"]) == (
        "approved",
        "42",
        None,
    )
    assert (
        _send(client, tenant, template={"name": "brand_new", "variables": ["x"]}).status_code == 202
    )


def test_sandbox_refuses_twilio_content_sends_like_twilio(live, client) -> None:
    """Unsynced (no checks): an unknown ContentSid is refused at once (21655); Content
    whose variables do not match is accepted, then fails by callback with 63028."""
    from tests.integration.conftest import wait_for

    tenant = _tenant(live)
    unknown = _send(
        client, tenant, provider="twilio", template={"content_sid": "HX" + uuid.uuid4().hex}
    )
    wrong = _send(
        client,
        tenant,
        provider="twilio",
        template={"content_sid": "HX" + "0" * 32, "content_variables": {"1": "a"}},
    )
    content = _content(
        live,
        tenant["sid"],
        friendly_name="order_ready",
        status="approved",
        types={"twilio/text": {"body": "Hi {{1}}, order {{2}}"}},
    )
    with session_scope() as session:  # point the second at the registered Content
        row = session.get(Message, wrong.get_json()["id"])
        row.template = {**row.template, "content_sid": content["sid"]}
    deliver(unknown.get_json()["id"])
    deliver(wrong.get_json()["id"])

    def outcome(message_id: str) -> tuple[str, str | None]:
        with session_scope() as session:
            message = session.get(Message, message_id)
            return message.status, message.provider_error_code

    assert outcome(unknown.get_json()["id"]) == ("failed", "21655")
    assert wait_for(lambda: outcome(wrong.get_json()["id"])[0] == "failed", what="63028")
    assert outcome(wrong.get_json()["id"]) == ("failed", "63028")
