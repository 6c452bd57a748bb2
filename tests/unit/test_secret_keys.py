"""HERALD_SECRET_KEY must be a real key, the other shared secrets long enough; secrets
stored under a former key (a passphrase included) stay readable and can be rotated."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet

from core.config import ConfigError, get_settings, load_settings


@pytest.mark.parametrize(
    "weak",
    [
        "hunter2",
        "correct horse battery staple",
        "test-secret-key-0123abcd",
        "a" * 64,  # hex, one byte repeated
        "k" * 44,  # base64 of a three-byte pattern
        secrets.token_hex(16),  # 16 bytes: too short
        base64.urlsafe_b64encode(b"0123456789" * 4).decode(),  # 40 bytes, a pattern
    ],
)
def test_a_weak_secret_key_is_refused_naming_the_variable(weak: str) -> None:
    with pytest.raises(ConfigError, match="HERALD_SECRET_KEY") as refused:
        load_settings({"HERALD_SECRET_KEY": weak})
    assert weak not in str(refused.value)  # the secret is not echoed to the logs


@pytest.mark.parametrize(
    "key",
    [
        Fernet.generate_key().decode(),
        secrets.token_hex(32),
        secrets.token_urlsafe(32),  # no padding
        base64.b64encode(secrets.token_bytes(48)).decode(),  # the standard alphabet
    ],
)
def test_a_random_key_of_32_bytes_or_more_is_taken(key: str) -> None:
    assert load_settings({"HERALD_SECRET_KEY": key}).secret_key == key


@pytest.mark.parametrize(
    ("name", "weak", "strong"),
    [
        ("HERALD_JWT_SECRET", "jwt-secret", secrets.token_urlsafe(32)),
        ("HERALD_JWT_SECRET", "ab" * 20, "test-jwt-secret-0123456789abcdef0123"),
        ("HERALD_METRICS_TOKEN", "scrape", "scrape-me-0123456789"),
        ("HERALD_METRICS_TOKEN", "x" * 40, secrets.token_urlsafe(16)),
    ],
)
def test_short_shared_secrets_are_refused(name: str, weak: str, strong: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: weak})
    load_settings({name: strong})
    load_settings({})  # unset stays allowed: JWTs off, /metrics open


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Change the keys in a test; the session's come back after it."""
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def _use(monkeypatch: pytest.MonkeyPatch, current: str, previous: str | None = None) -> None:
    monkeypatch.setenv("HERALD_SECRET_KEY", current)
    if previous is None:
        monkeypatch.delenv("HERALD_SECRET_KEY_PREVIOUS", raising=False)
    else:
        monkeypatch.setenv("HERALD_SECRET_KEY_PREVIOUS", previous)
    get_settings.cache_clear()


def test_secrets_stored_under_a_passphrase_stay_readable_as_the_previous_key(keys) -> None:
    from services.tenancy.secrets import decrypt_json, encrypt_json

    passphrase = "the old deployment's passphrase"
    # What earlier releases stored with HERALD_SECRET_KEY=<passphrase>: SHA-256 of it.
    old = Fernet(base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest()))
    stored = old.encrypt(json.dumps({"auth_token": "tok"}).encode()).decode()
    new_key = Fernet.generate_key().decode()
    _use(keys, new_key)
    with pytest.raises(RuntimeError, match="HERALD_SECRET_KEY_PREVIOUS"):
        decrypt_json(stored)
    _use(keys, new_key, previous=passphrase)
    assert decrypt_json(stored) == {"auth_token": "tok"}
    written = encrypt_json({"auth_token": "new"})
    _use(keys, new_key)  # what is written now needs only the new key
    assert decrypt_json(written) == {"auth_token": "new"}


def test_rotation_re_encrypts_every_stored_secret_with_the_current_key(keys) -> None:
    from models import ProviderAccount, Tenant, session_scope
    from services.tenancy.secrets import decrypt_json, rotate_stored_secrets
    from services.tenancy.tenants import find_account
    from tests.conftest import TWILIO_TOKEN, make_tenant

    old_key = get_settings().secret_key
    assert old_key is not None
    made = make_tenant("rekeyed")
    new_key = Fernet.generate_key().decode()
    try:
        _use(keys, new_key, previous=old_key)
        with session_scope() as session:
            done, unreadable = rotate_stored_secrets(session)
        assert done >= 3 and unreadable == []
        _use(keys, new_key)  # the previous key is gone: everything reads with the new one
        with session_scope() as session:
            account = find_account(session, made["tenant_id"], "twilio")
            assert account is not None
            assert decrypt_json(account.secrets_enc)["auth_token"] == TWILIO_TOKEN
            tenant = session.get(Tenant, made["tenant_id"])
            assert decrypt_json(tenant.webhook_secret_enc)["secret"].startswith("whsec_")
            assert session.query(ProviderAccount).count() >= 2
    finally:  # the rest of the run reads with the session's key again
        _use(keys, old_key, previous=new_key)
        with session_scope() as session:
            rotate_stored_secrets(session)
