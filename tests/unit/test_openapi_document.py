"""/openapi.json is generated from the code: request bodies from the marshmallow schemas
the views validate with, statuses from the views and the app's hooks, so what the
document says is what the app does (including with the database down or a quota hit)."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import fields

from tests.unit.test_outage import database_down  # noqa: F401  (a fixture)

METHODS = ("get", "post", "put", "patch", "delete")


def _document(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    return resp.get_json()


def _schema(document: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_the_document_is_valid_openapi(client) -> None:
    from openapi_spec_validator import validate

    validate(_document(client))


def _keys(schema) -> set[str]:  # type: ignore[no-untyped-def]
    """The JSON keys a schema reads (`from`, not the attribute `from_`)."""
    return {field.data_key or name for name, field in schema.fields.items()}


def test_request_bodies_are_the_marshmallow_schemas(client) -> None:
    from services.campaigns.campaigns import CampaignSchema
    from services.content.phones import PHONE_PATTERN, TO_PATTERN
    from services.content.schemas import MessageRequestSchema
    from services.policy.contacts import ContactSchema

    document = _document(client)
    paths = document["paths"]
    send = _schema(document, paths["/v1/messages"]["post"])
    assert set(send["properties"]) == _keys(MessageRequestSchema())
    assert send["additionalProperties"] is False  # unknown = RAISE
    to = send["properties"]["to"]
    assert to["pattern"] == TO_PATTERN and "E.164" in to["description"]
    assert "BSUID" in to["description"]  # on WhatsApp, a business-scoped user id too
    assert re.fullmatch(PHONE_PATTERN, "+1 202-555-0143") and not re.fullmatch(PHONE_PATTERN, "555")
    assert send["properties"]["channel"] == {
        "type": "string",
        "default": "whatsapp",
        "enum": ["whatsapp", "sms"],
    }
    assert "oneOf" in send["properties"]["media_url"]

    contact = _schema(document, paths["/v1/contacts"]["post"])
    assert set(contact["properties"]) == set(ContactSchema().fields)
    assert contact["properties"]["phone"]["pattern"] == PHONE_PATTERN
    campaign = _schema(document, paths["/v1/campaigns"]["post"])
    assert set(campaign["properties"]) == _keys(CampaignSchema())
    assert campaign["required"] == ["name"]
    assert campaign["properties"]["rate"]["maximum"] == 1000


def test_a_field_added_to_a_schema_is_in_the_document(app, monkeypatch) -> None:
    from api import openapi
    from services.content.schemas import MessageRequestSchema

    probe = fields.String(validate=lambda _: True, metadata={"description": "a probe"})
    monkeypatch.setitem(MessageRequestSchema._declared_fields, "probe", probe)
    document = openapi.build(app)
    assert document["components"]["schemas"]["MessageRequest"]["properties"]["probe"] == {
        "type": "string",
        "description": "a probe",
    }


def test_every_route_and_operation_is_documented(app, client) -> None:
    document = _document(client)
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("console."):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        item = document["paths"][path]
        assert {m for m in item if m in METHODS}, f"{rule.rule} has no operation"
        for operation in item.values():
            assert "summary" in operation and "400" in operation["responses"]


def _call(client, path: str, method: str, operation: dict[str, Any], headers: dict[str, str]):  # type: ignore[no-untyped-def]
    url = re.sub(r"\{[^}]+\}", "x", path)
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        return client.open(url, method=method.upper(), json={}, headers=headers)
    if "application/x-www-form-urlencoded" in content:
        return client.open(url, method=method.upper(), data={"A": "b"}, headers=headers)
    return client.open(url, method=method.upper(), headers=headers)


def _path(rule) -> str:  # type: ignore[no-untyped-def]
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)


def _check_every_operation(client, auth) -> set[str]:  # type: ignore[no-untyped-def]
    """Call each documented operation once (admin API on); assert each status is
    documented for it; return the operations that answered 503."""
    from core.config import get_settings

    get_settings.cache_clear()
    document = _document(client)
    answered_503 = set()
    for path, item in document["paths"].items():
        headers = (
            {"Authorization": "Bearer admin-secret-0123456789"}
            if path.startswith("/admin")
            else auth
        )
        for method, operation in item.items():
            if method not in METHODS:
                continue
            resp = _call(client, path, method, operation, headers)
            status = resp.status_code
            assert str(status) in operation["responses"], (method, path, status)
            assert status < 500 or status == 503, (method, path, resp.get_data(as_text=True))
            if status == 503:
                answered_503.add(f"{method} {path}")
    get_settings.cache_clear()
    return answered_503


def test_every_operation_answers_a_documented_status(client, auth, monkeypatch) -> None:
    monkeypatch.setenv("HERALD_ADMIN_TOKEN", "admin-secret-0123456789")
    assert _check_every_operation(client, auth) == set()


def test_with_the_database_down_its_503_is_documented(
    client,
    auth,
    database_down,  # noqa: F811
    monkeypatch,
) -> None:
    """Each route that uses the database declares its 503 `unavailable` (or its seed's
    shape of it), and answers it when the database is down."""
    from api import openapi

    monkeypatch.setenv("HERALD_ADMIN_TOKEN", "admin-secret-0123456789")
    answered_503 = _check_every_operation(client, auth)
    expected = {
        f"{method} {_path(rule)}"
        for rule in client.application.url_map.iter_rules()
        if not rule.endpoint.startswith(openapi.UNDOCUMENTED)
        and rule.endpoint not in openapi.WITHOUT_DATABASE
        for method in METHODS
        if method.upper() in rule.methods
    }
    expected -= {f"{m} /api/twilio/message" for m in ("get", "put", "patch", "delete")}  # 405
    document = _document(client)
    for name in expected:
        method, path = name.split(" ")
        assert "503" in document["paths"][path][method]["responses"], name
    # Called with an empty body, some refuse it (400) before reading the database.
    assert answered_503 <= expected and len(answered_503) > len(expected) / 2


def test_where_a_quota_applies_its_429_is_documented(client) -> None:
    from models import Tenant, session_scope
    from tests.conftest import make_tenant

    tenant = make_tenant("quota")
    with session_scope() as session:
        session.get(Tenant, tenant["tenant_id"]).hourly_limit = 1
    headers = {"Authorization": f"Bearer {tenant['api_key']}"}
    document = _document(client)
    send = {"to": "+12025550143", "channel": "sms", "body": "hi"}
    assert client.post("/v1/messages", json=send, headers=headers).status_code == 202
    for path, body in (
        ("/v1/messages", send),
        ("/api/twilio/message", {"to": "+12025550143", "message": "hi"}),
        ("/api/whatsapp/send", {"toPhoneNumber": "+12025550143", "messageBody": "hi"}),
    ):
        resp = client.post(path, json=body, headers=headers)
        assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 0
        assert "429" in document["paths"][path]["post"]["responses"], path


def test_docs_serve_swagger_ui_without_the_internet(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assets = re.findall(r'(?:src|href)="(/docs/[^"]+)"', page.get_data(as_text=True))
    assert "/docs/swagger-ui-bundle.js" in assets and "/docs/herald.js" in assets
    for asset in assets:
        resp = client.get(asset)
        assert resp.status_code == 200 and resp.data, asset
    assert b"/openapi.json" in client.get("/docs/herald.js").data
    assert client.get("/docs/nope.js").status_code == 404
