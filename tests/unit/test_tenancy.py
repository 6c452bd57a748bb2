"""Tenant isolation on every endpoint, revocable keys, secrets unreadable at rest."""

from __future__ import annotations

from sqlalchemy import text

from models import get_engine, session_scope
from services.tenancy.tenants import revoke_api_key
from tests.conftest import make_tenant

TO = "+12025550143"
SECRET_TOKEN = "tok-" + "Zq9" * 10


def test_every_endpoint_hides_other_tenants(client, auth, dispatched) -> None:
    mid = client.post("/v1/messages", json={"to": TO, "body": "mine"}, headers=auth).get_json()[
        "id"
    ]
    client.post("/v1/contacts", json={"id": "c-own", "phone": "+12025550191"}, headers=auth)
    other = make_tenant("intruder")
    hdr = {"Authorization": f"Bearer {other['api_key']}"}
    assert client.get(f"/v1/messages/{mid}", headers=hdr).status_code == 404
    assert client.post(f"/v1/messages/{mid}/cancel", headers=hdr).status_code == 404
    assert client.get("/v1/contacts/c-own", headers=hdr).status_code == 404
    assert (
        client.patch("/v1/contacts/c-own", json={"opted_out": True}, headers=hdr).status_code == 404
    )
    listed = client.get("/v1/messages?limit=200", headers=hdr).get_json()["data"]
    assert mid not in [m["id"] for m in listed]
    # Another tenant's contact id cannot be used as a recipient either.
    resp = client.post(
        "/v1/messages", json={"contact_id": "c-own", "body": "x", "channel": "sms"}, headers=hdr
    )
    assert resp.status_code == 422 and resp.get_json()["error"]["code"] == "contact_not_found"
    # And the owner still sees everything.
    assert client.get(f"/v1/messages/{mid}", headers=auth).status_code == 200


def test_revoked_key_is_refused(client, dispatched) -> None:
    from models import ApiKey
    from services.tenancy.tenants import hash_key

    tenant = make_tenant("revoke")
    hdr = {"Authorization": f"Bearer {tenant['api_key']}"}
    assert client.get("/v1/messages", headers=hdr).status_code == 200
    with session_scope() as session:
        key = session.query(ApiKey).filter_by(key_hash=hash_key(tenant["api_key"])).one()
        assert key.prefix == tenant["api_key"][:10]
        assert revoke_api_key(session, key.id)
    assert client.get("/v1/messages", headers=hdr).status_code == 401


def test_provider_secrets_are_unreadable_at_rest(client) -> None:
    tenant = make_tenant(
        "vault",
        twilio={
            "account_sid": "AC" + "d4" * 16,
            "auth_token": SECRET_TOKEN,
            "sms_from": "+12025550100",
        },
    )
    with get_engine().connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM provider_accounts WHERE tenant_id = :t"), {"t": tenant["tenant_id"]}
        ).all()
        keys = conn.execute(
            text("SELECT key_hash FROM api_keys WHERE tenant_id = :t"), {"t": tenant["tenant_id"]}
        ).all()
    assert rows and all(SECRET_TOKEN not in str(value) for row in rows for value in row)
    assert all(tenant["api_key"] not in str(row) for row in keys)


def test_api_never_returns_secrets(client, auth, dispatched) -> None:
    created = client.post("/v1/messages", json={"to": TO, "body": "x"}, headers=auth)
    text_body = created.get_data(as_text=True)
    assert "test-twilio-token" not in text_body and "test-meta-token" not in text_body
    assert "app_secret" not in text_body
