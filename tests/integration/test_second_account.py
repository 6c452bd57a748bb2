"""A tenant with two Meta accounts: `from` may name the second account's phone number id
(docs/tenants.md), and the message goes out through that account."""

from __future__ import annotations

import random

from models import Message, ProviderAccount, session_scope
from services.messages.delivery import deliver
from services.tenancy.tenants import add_provider_account
from tests.conftest import META_PHONE_ID, META_SECRET, make_tenant
from tests.integration.test_senders import TO, sent_request


def test_from_may_name_a_second_meta_accounts_phone_number_id(live, client, dispatched) -> None:
    phone_id = "11" + "".join(random.choices("0123456789", k=13))
    token = "second-account-token"
    live.control.post(
        "/_sandbox/accounts",
        json={
            "provider": "meta",
            "phone_number_id": phone_id,
            "access_token": token,
            "app_secret": META_SECRET,
        },
    ).raise_for_status()
    tenant = make_tenant("two-meta", twilio={})
    with session_scope() as session:
        second = add_provider_account(
            session,
            tenant["tenant_id"],
            "meta",
            phone_number_id=phone_id,
            access_token=token,
            app_secret=META_SECRET,
        ).id
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    resp = client.post(
        "/v1/messages", json={"to": TO, "body": "Hola", "from": phone_id}, headers=auth
    )
    assert resp.status_code == 202, resp.get_json()
    message = resp.get_json()
    assert message["provider"] == "meta" and message["sender_id"] is None
    assert deliver(message["id"]).action == "sent"
    assert sent_request(live, message["id"])["account"] == phone_id  # its URL, its token
    with session_scope() as session:
        assert session.get(Message, message["id"]).provider_account_id == second
        assert session.get(ProviderAccount, second).external_id == phone_id
    # The first account's own id still works as before, and an id of no account is refused.
    first = client.post(
        "/v1/messages", json={"to": TO, "body": "Hola", "from": META_PHONE_ID}, headers=auth
    )
    assert first.status_code == 202 and deliver(first.get_json()["id"]).action == "sent"
    assert sent_request(live, first.get_json()["id"])["account"] == META_PHONE_ID
    other = client.post(
        "/v1/messages", json={"to": TO, "body": "Hola", "from": "19999999999999"}, headers=auth
    )
    assert other.status_code == 422 and other.get_json()["error"]["code"] == "sender_not_found"
