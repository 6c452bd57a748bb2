"""`/admin/v1`: admin token required, secrets never returned, the CLI's rules."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from core.config import get_settings

TOKEN = "admin-token-0123456789abcdef"
TWILIO = {
    "provider": "twilio",
    "account_sid": "AC" + "d" * 32,
    "auth_token": "twilio-secret-value",
    "sms_from": "+12025550100",
}
META = {
    "provider": "meta",
    "phone_number_id": "109876543219999",
    "access_token": "meta-secret-access",
    "app_secret": "meta-secret-app",
}


@pytest.fixture
def admin_token(monkeypatch) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HERALD_ADMIN_TOKEN", TOKEN)
    get_settings.cache_clear()
    yield {"Authorization": f"Bearer {TOKEN}"}
    monkeypatch.delenv("HERALD_ADMIN_TOKEN")
    get_settings.cache_clear()


def _no_secret(body: object) -> None:
    text = json.dumps(body)
    for secret in ("twilio-secret-value", "meta-secret-access", "meta-secret-app", "rotated-"):
        assert secret not in text


def test_disabled_without_a_token(client) -> None:
    resp = client.get("/admin/v1/tenants", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"


def test_admin_token_required(client, admin_token) -> None:
    assert client.get("/admin/v1/tenants").status_code == 401
    wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
    resp = client.get("/admin/v1/tenants", headers=wrong)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "unauthorized"
    assert client.post("/admin/v1/tenants", json={"name": "x"}, headers=wrong).status_code == 401


def test_a_tenant_api_key_is_not_an_admin_token(client, admin_token, tenant) -> None:
    resp = client.get("/admin/v1/tenants", headers={"Authorization": f"Bearer {tenant['api_key']}"})
    assert resp.status_code == 401


def test_a_short_admin_token_fails_at_start_up() -> None:
    from core.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="HERALD_ADMIN_TOKEN"):
        load_settings({"HERALD_ADMIN_TOKEN": "short"})


def test_tenant_lifecycle(client, admin_token, dispatched) -> None:
    resp = client.post(
        "/admin/v1/tenants",
        json={"name": "Acme", "hourly_limit": 5, "accounts": [TWILIO]},
        headers=admin_token,
    )
    assert resp.status_code == 201, resp.get_json()
    created = resp.get_json()
    _no_secret(created)
    tenant_id, key = created["tenant"]["id"], created["api_key"]
    assert key.startswith("hk_") and created["webhook_secret"].startswith("whsec_")
    assert created["tenant"]["default_sms_provider"] == "twilio"
    listed = client.get("/admin/v1/tenants", headers=admin_token).get_json()["data"]
    assert tenant_id in [t["id"] for t in listed]
    _no_secret(listed)

    tenant_auth = {"Authorization": f"Bearer {key}"}
    sms = {"to": "+12025550143", "channel": "sms", "body": "hi"}
    assert client.post("/v1/messages", json=sms, headers=tenant_auth).status_code == 202

    resp = client.patch(
        f"/admin/v1/tenants/{tenant_id}",
        json={"hourly_limit": 0, "daily_limit": 50, "callback_url": "https://acme.example/ev"},
        headers=admin_token,
    )
    assert resp.status_code == 200
    body = resp.get_json()
    assert (body["hourly_limit"], body["daily_limit"], body["callback_url"]) == (
        0,
        50,
        "https://acme.example/ev",
    )
    bad = client.patch(
        f"/admin/v1/tenants/{tenant_id}",
        json={"hourly_limit": -1, "callback_url": "ftp://x", "colour": "red"},
        headers=admin_token,
    )
    assert bad.status_code == 400
    assert set(bad.get_json()["error"]["fields"]) == {"hourly_limit", "callback_url", "colour"}

    assert client.post(f"/admin/v1/tenants/{tenant_id}/disable", headers=admin_token).get_json()[
        "disabled"
    ]
    assert client.post("/v1/messages", json=sms, headers=tenant_auth).status_code == 401
    client.post(f"/admin/v1/tenants/{tenant_id}/enable", headers=admin_token)
    assert client.post("/v1/messages", json=sms, headers=tenant_auth).status_code == 202


def test_bad_tenant_requests(client, admin_token) -> None:
    assert client.post("/admin/v1/tenants", json={}, headers=admin_token).status_code == 400
    assert (
        client.post(
            "/admin/v1/tenants", data="{", headers=admin_token, content_type="application/json"
        ).status_code
        == 400
    )
    assert client.post("/admin/v1/tenants", data="{", headers=admin_token).status_code == 415
    resp = client.post(
        "/admin/v1/tenants",
        json={"name": "x", "accounts": [{"provider": "twilio"}]},
        headers=admin_token,
    )
    assert resp.status_code == 400
    assert client.get("/admin/v1/tenants/ten_nope", headers=admin_token).status_code == 404


def test_accounts_secrets_are_write_only(client, admin_token) -> None:
    tenant_id = client.post(
        "/admin/v1/tenants", json={"name": "Acme"}, headers=admin_token
    ).get_json()["tenant"]["id"]
    base = f"/admin/v1/tenants/{tenant_id}/accounts"
    resp = client.post(base, json=META, headers=admin_token)
    assert resp.status_code == 201
    account = resp.get_json()
    _no_secret(account)
    assert account["secrets_set"] == ["access_token", "app_secret"]
    assert account["phone_number_id"] == META["phone_number_id"]

    rotated = client.patch(
        f"{base}/{account['id']}",
        json={"access_token": "rotated-token", "display_phone_number": "+12025550111"},
        headers=admin_token,
    )
    assert rotated.status_code == 200
    _no_secret(rotated.get_json())
    assert rotated.get_json()["settings"]["display_phone_number"] == "+12025550111"
    from models import ProviderAccount, session_scope
    from services.tenancy.tenants import credentials

    with session_scope() as session:
        stored = credentials(session.get(ProviderAccount, account["id"]))
    assert stored.secrets == {"access_token": "rotated-token", "app_secret": "meta-secret-app"}

    assert (
        client.patch(
            f"{base}/{account['id']}", json={"phone_number_id": "1"}, headers=admin_token
        ).status_code
        == 400
    )
    assert (
        client.patch(
            f"{base}/{account['id']}", json={"bogus": "1"}, headers=admin_token
        ).status_code
        == 400
    )
    listed = client.get(base, headers=admin_token).get_json()["data"]
    _no_secret(listed)
    assert [a["id"] for a in listed] == [account["id"]]

    assert client.delete(f"{base}/{account['id']}", headers=admin_token).status_code == 204
    assert client.get(base, headers=admin_token).get_json()["data"] == []
    tenant = client.get(f"/admin/v1/tenants/{tenant_id}", headers=admin_token).get_json()
    assert tenant["default_whatsapp_provider"] is None
    assert client.delete(f"{base}/{account['id']}", headers=admin_token).status_code == 404


def test_an_account_in_use_cannot_be_removed(client, admin_token, tenant, auth, dispatched) -> None:
    resp = client.post("/v1/messages", json={"to": "+12025550143", "body": "hi"}, headers=auth)
    assert resp.status_code == 202  # queued through the tenant's Meta account
    base = f"/admin/v1/tenants/{tenant['tenant_id']}/accounts"
    meta = next(
        a
        for a in client.get(base, headers=admin_token).get_json()["data"]
        if a["provider"] == "meta"
    )
    resp = client.delete(f"{base}/{meta['id']}", headers=admin_token)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "account_in_use"


def test_another_tenants_account_or_key_is_not_found(client, admin_token, tenant) -> None:
    other = client.post("/admin/v1/tenants", json={"name": "B"}, headers=admin_token).get_json()
    mine = client.get(
        f"/admin/v1/tenants/{tenant['tenant_id']}/accounts", headers=admin_token
    ).get_json()["data"][0]
    path = f"/admin/v1/tenants/{other['tenant']['id']}/accounts/{mine['id']}"
    assert client.delete(path, headers=admin_token).status_code == 404
    key_id = client.get(
        f"/admin/v1/tenants/{tenant['tenant_id']}/keys", headers=admin_token
    ).get_json()["data"][0]["id"]
    path = f"/admin/v1/tenants/{other['tenant']['id']}/keys/{key_id}"
    assert client.delete(path, headers=admin_token).status_code == 404


def test_api_keys_create_list_revoke(client, admin_token, tenant) -> None:
    base = f"/admin/v1/tenants/{tenant['tenant_id']}/keys"
    resp = client.post(base, json={"name": "ci"}, headers=admin_token)
    assert resp.status_code == 201
    created = resp.get_json()
    assert created["api_key"].startswith("hk_") and created["name"] == "ci"
    listed = client.get(base, headers=admin_token).get_json()["data"]
    assert created["id"] in [k["id"] for k in listed]
    text = json.dumps(listed)
    assert created["api_key"] not in text and tenant["api_key"] not in text
    assert all("key_hash" not in k and "api_key" not in k for k in listed)

    new_auth = {"Authorization": f"Bearer {created['api_key']}"}
    assert client.get("/v1/messages", headers=new_auth).status_code == 200
    resp = client.delete(f"{base}/{created['id']}", headers=admin_token)
    assert resp.status_code == 200 and resp.get_json()["revoked_at"]
    assert client.get("/v1/messages", headers=new_auth).status_code == 401
    assert client.post(base, json={"name": 5}, headers=admin_token).status_code == 400
    assert client.post(base, json={"x": 1}, headers=admin_token).status_code == 400
    assert client.post(base, headers=admin_token).status_code == 201  # no body: unnamed key


def test_a_disabled_tenant_sends_nothing_by_any_path(client, admin_token, tenant, dispatched):  # type: ignore[no-untyped-def]
    """Disabling refuses the keys and also the paths that carry a tenant id without one:
    the Celery task and the seeds' unauthenticated routes."""
    from workers.tasks import send_message

    client.post(f"/admin/v1/tenants/{tenant['tenant_id']}/disable", headers=admin_token)
    result = send_message.run(tenant_id=tenant["tenant_id"], to="+12025550143", body="x")
    assert result["error"]["code"] == "tenant_disabled"
    console = client.application.test_client()
    from tests.unit.test_console import sign_in

    assert sign_in(console, tenant["api_key"]).status_code == 401
