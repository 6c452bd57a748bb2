"""Encryption at rest for provider tokens and webhook secrets (Fernet, AES-128-CBC + HMAC).

The key comes from HERALD_SECRET_KEY: a Fernet key, or any passphrase (stretched
with SHA-256). Without it, a key file under HERALD_HOME is created once, which
suits a single development machine; a deployment sets HERALD_SECRET_KEY.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from core.config import get_settings

_lock = threading.Lock()
_cache: dict[str, Fernet] = {}


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
    return path.read_text().strip()


def _fernet() -> Fernet:
    material = _key_material()
    fernet = _cache.get(material)
    if fernet is None:
        try:
            fernet = Fernet(material.encode())
        except ValueError:
            digest = hashlib.sha256(material.encode()).digest()
            fernet = Fernet(base64.urlsafe_b64encode(digest))
        _cache[material] = fernet
    return fernet


def encrypt_json(data: dict[str, Any]) -> str:
    return _fernet().encrypt(json.dumps(data, sort_keys=True).encode()).decode()


def decrypt_json(token: str) -> dict[str, Any]:
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken:
        raise RuntimeError(
            "cannot decrypt a stored secret: HERALD_SECRET_KEY differs from the key it was "
            "encrypted with"
        ) from None


def derived_key(purpose: str) -> bytes:
    """A key for one purpose (e.g. signing console sessions), derived from the same
    secret as encryption at rest, so a deployment sets one secret, not one per use."""
    return hmac.new(_key_material().encode(), purpose.encode(), hashlib.sha256).digest()
