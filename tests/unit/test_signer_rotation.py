"""A provider secret rotated by another process: the webhook signed with the old one is
refused once this process's cache of signers lapses (Twilio: CACHE_SECONDS, as
documented), and at once where nothing is cached (Meta). The cache's clock is the
test's: no sleeping through the five seconds."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import update

from models import ProviderAccount, get_engine, session_scope
from services.tenancy import tenants
from services.tenancy.secrets import encrypt_json
from tests.conftest import make_tenant
from tests.unit.test_webhooks import meta_change, meta_post, status, twilio_post


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(tenants._by_external, "clock", fake)
    return fake


def rotate_elsewhere(account_id: str, secrets: dict[str, str]) -> None:
    """What another process's rotation looks like from here: the row changes, and this
    process's session events (which clear its caches) never see it."""
    with get_engine().begin() as conn:
        conn.execute(
            update(ProviderAccount)
            .where(ProviderAccount.id == account_id)
            .values(secrets_enc=encrypt_json(secrets))
        )


def account_id(tenant_id: str, provider: str) -> str:
    with session_scope() as session:
        found = tenants.find_account(session, tenant_id, provider)
        assert found is not None
        return found.id


def test_a_rotated_out_twilio_token_is_refused_once_the_cache_lapses(client, clock) -> None:
    sid = "AC" + uuid.uuid4().hex  # this tenant's alone: no other account holds the old token
    tenant = make_tenant(
        "rotate",
        twilio={"account_sid": sid, "auth_token": "old-token", "sms_from": "+12025550100"},
        meta={},
    )
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    mid = client.post(
        "/v1/messages", headers=auth, json={"to": "+12025550143", "body": "x", "channel": "sms"}
    ).get_json()["id"]

    def callback(token: str, state: str):  # type: ignore[no-untyped-def]
        params = {
            "MessageSid": "SM" + "7" * 32,
            "MessageStatus": state,
            "AccountSid": sid,
            "To": "+12025550143",
            "From": "+12025550100",
        }
        return twilio_post(client, f"/webhooks/twilio/status?message_id={mid}", params, token)

    assert callback("old-token", "sent").status_code == 204  # read, and cached, at 5000 s
    rotate_elsewhere(account_id(tenant["tenant_id"], "twilio"), {"auth_token": "new-token"})
    clock.now += tenants.CACHE_SECONDS - 0.01
    # Within the cache's seconds this process still holds the old token (documented: a
    # rotated token is refused everywhere within CACHE_SECONDS, not at once).
    assert callback("old-token", "sent").status_code == 204
    clock.now += 0.02  # the cached signers lapse
    assert callback("old-token", "delivered").status_code == 403
    assert callback("new-token", "delivered").status_code == 204
    assert callback("old-token", "delivered").status_code == 403  # the new one is cached now
    shown = client.get(f"/v1/messages/{mid}", headers=auth).get_json()
    assert shown["status"] == "delivered"


def test_a_rotated_out_meta_app_secret_is_refused_at_once(client, clock) -> None:
    phone_id = str(uuid.uuid4().int)[:15]
    tenant = make_tenant(
        "rotate-meta",
        twilio={},
        meta={
            "phone_number_id": phone_id,
            "access_token": "token",
            "app_secret": "old-secret",
            "display_phone_number": "+12025550111",
        },
    )
    change = meta_change(statuses=[status("msg_unknown", "wamid.rotate", "delivered")])
    change["value"]["metadata"]["phone_number_id"] = phone_id
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
    assert meta_post(client, payload, "old-secret").status_code == 200
    rotate_elsewhere(
        account_id(tenant["tenant_id"], "meta"),
        {"access_token": "token", "app_secret": "new-secret"},
    )
    # The app secrets are read per delivery (one indexed query), never cached.
    assert meta_post(client, payload, "old-secret").status_code == 403
    assert meta_post(client, payload, "new-secret").status_code == 200
