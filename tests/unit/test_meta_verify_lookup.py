"""`GET /webhooks/meta` (Meta's subscription check, unauthenticated) finds the account
holding a verify token by a keyed hash, so its cost does not grow with the number of
Meta accounts: it used to decrypt every one of them on every request."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import update

from models import ProviderAccount, session_scope
from services.tenancy.tenants import add_provider_account, create_tenant

ACCOUNTS = 120
URL = "/webhooks/meta?hub.mode=subscribe&hub.challenge=42&hub.verify_token="


@pytest.fixture
def decryptions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many secrets were decrypted (every decryption is a Fernet.decrypt)."""
    count = [0]
    real = Fernet.decrypt

    def counting(self: Fernet, token: bytes | str, ttl: int | None = None) -> bytes:
        count[0] += 1
        return real(self, token, ttl)

    monkeypatch.setattr(Fernet, "decrypt", counting)
    yield count


@pytest.fixture(scope="module")
def many_accounts() -> list[str]:
    """ACCOUNTS Meta accounts, each with a verify token of its own; their tokens."""
    tokens = []
    with session_scope() as session:
        tenant = create_tenant(session, f"many-{uuid.uuid4().hex[:6]}")
        for i in range(ACCOUNTS):
            token = f"verify-{uuid.uuid4().hex}"
            tokens.append(token)
            add_provider_account(
                session,
                tenant.id,
                "meta",
                phone_number_id=f"77{uuid.uuid4().int % 10**12:012d}{i}",
                access_token="t",
                app_secret="s",
                verify_token=token,
            )
    return tokens


def test_a_verify_request_decrypts_nothing_however_many_accounts(
    client, many_accounts, decryptions
) -> None:
    client.get(URL + "warm-up")  # hashes any account left unhashed by other tests
    decryptions[0] = 0
    assert client.get(URL + many_accounts[-1]).status_code == 200
    assert client.get(URL + many_accounts[0]).data == b"42"
    assert client.get(URL + "not-a-token").status_code == 403
    assert decryptions[0] == 0


def test_an_account_stored_before_the_hash_is_hashed_once(
    client, many_accounts, decryptions
) -> None:
    token = many_accounts[7]
    with session_scope() as session:
        session.execute(
            update(ProviderAccount)
            .where(ProviderAccount.provider == "meta")
            .where(ProviderAccount.external_id.like("77%"))
            .values(verify_token_hash=None)
        )
    client.get(URL + "warm-up")
    decryptions[0] = 0
    assert client.get(URL + token).status_code == 200
    assert client.get(URL + "nope").status_code == 403
    assert decryptions[0] == 0
    with session_scope() as session:
        row = session.query(ProviderAccount).filter_by(provider="meta").first()
        assert row is not None and row.verify_token_hash is not None


def test_a_rotated_verify_token_follows_the_admin_update(client, tenant) -> None:
    from services.tenancy.admin import update_account

    with session_scope() as session:
        account = (
            session.query(ProviderAccount)
            .filter_by(tenant_id=tenant["tenant_id"], provider="meta")
            .one()
        )
        update_account(session, tenant["tenant_id"], account.id, {"verify_token": "rotated-1"})
    assert client.get(URL + "rotated-1").status_code == 200


def test_the_deployment_wide_verify_token_still_works(client, monkeypatch) -> None:
    from core.config import get_settings

    monkeypatch.setenv("META_VERIFY_TOKEN", "app-wide-verify")
    get_settings.cache_clear()
    try:
        assert client.get(URL + "app-wide-verify").data == b"42"
    finally:
        monkeypatch.delenv("META_VERIFY_TOKEN")
        get_settings.cache_clear()
