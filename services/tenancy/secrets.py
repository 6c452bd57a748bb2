"""Encryption at rest for provider tokens and webhook secrets (Fernet, AES-128-CBC + HMAC).

The key comes from HERALD_SECRET_KEY: a random key of at least 32 bytes (core/config.py
refuses anything weaker, passphrases included, because the same secret signs the
console's cookies, which anyone can fetch and attack offline). Without it, a Fernet key
file under HERALD_HOME is created once, which suits a single development machine (and is
what `make run` uses); a deployment sets HERALD_SECRET_KEY.

The derivation is unchanged from earlier releases (a Fernet key is used as it is, any
other text through SHA-256), so every key still accepted reads what it wrote before.
A deployment that used a passphrase sets a new key and moves the passphrase to
HERALD_SECRET_KEY_PREVIOUS: rows written under it stay readable, every write uses the new
key, and `herald secrets rotate` re-encrypts the rest, after which the old one is dropped.
The previous key only ever decrypts: it signs nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import check_secret_key, get_settings
from models import PrivacyKey, ProviderAccount, Tenant

_lock = threading.Lock()
_cache: dict[tuple[str, str | None], MultiFernet] = {}


def _key_material() -> str:
    settings = get_settings()
    if settings.secret_key:
        return settings.secret_key
    path = settings.home / "secret.key"
    with _lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Fernet.generate_key().decode())
            path.chmod(0o600)
    return check_secret_key(path.read_text().strip(), name=str(path))


def _derive(material: str) -> Fernet:
    """The Fernet of a key's text: as every release has derived it (see the module's doc)."""
    try:
        return Fernet(material.encode())
    except ValueError:
        digest = hashlib.sha256(material.encode()).digest()
        return Fernet(base64.urlsafe_b64encode(digest))


def _fernet() -> MultiFernet:
    """Encrypts with the current key; decrypts with it or the previous one."""
    material, previous = _key_material(), get_settings().previous_secret_key
    fernet = _cache.get((material, previous))
    if fernet is None:
        keys = [_derive(material)] + ([_derive(previous)] if previous else [])
        fernet = _cache[(material, previous)] = MultiFernet(keys)
    return fernet


def encrypt_json(data: dict[str, Any]) -> str:
    return _fernet().encrypt(json.dumps(data, sort_keys=True).encode()).decode()


def decrypt_json(token: str) -> dict[str, Any]:
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken:
        raise RuntimeError(
            "cannot decrypt a stored secret: HERALD_SECRET_KEY (and HERALD_SECRET_KEY_PREVIOUS) "
            "differ from the key it was encrypted with"
        ) from None


def rotate_stored_secrets(session: Session) -> tuple[int, list[str]]:
    """Re-encrypt every stored secret with the current key, so that the previous one can
    go: (rows re-encrypted, ids of rows neither key decrypts, left as they are)."""
    fernet, done, unreadable = _fernet(), 0, []
    columns = (
        (ProviderAccount, "secrets_enc"),
        (Tenant, "webhook_secret_enc"),
        (PrivacyKey, "key_enc"),  # services/privacy/suppression.py
    )
    for model, column in columns:
        for row in session.scalars(select(model).where(getattr(model, column).is_not(None))):
            try:
                setattr(row, column, fernet.rotate(getattr(row, column).encode()).decode())
            except InvalidToken:
                unreadable.append(row.id)
            else:
                done += 1
    session.flush()
    return done, unreadable


def derived_key(purpose: str) -> bytes:
    """A key for one purpose (e.g. signing console sessions), derived from the same
    secret as encryption at rest, so a deployment sets one secret, not one per use."""
    return hmac.new(_key_material().encode(), purpose.encode(), hashlib.sha256).digest()
