"""Opt-outs that outlive an erased person, kept as keyed hashes (table `suppressions`).

Erasure deletes the contact row that carried the opt-out flag; the promise not to
message that person again must survive it without keeping the number. Each number form
is stored as an HMAC-SHA256 of the tenant id and the E.164 number: a database leak
gives no number and no way to test guesses offline, and one person's rows in two
tenants do not match each other. The send policy (services/policy/consent.py,
services/messages/claim.py) hashes the forms of a recipient and refuses one found here;
a START from the number lifts it.

The HMAC key is a random key made once and kept in `privacy_keys`, encrypted with
HERALD_SECRET_KEY like provider secrets (services/tenancy/secrets.py), rather than a
key derived from HERALD_SECRET_KEY: that one rotates, and a hash made under a key that
is gone could never be matched again. A rotation re-encrypts this key; its value, and
every hash, stay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.config import get_settings
from core.errors import Unavailable
from models import PrivacyKey, session_scope, utcnow
from models.fast import Statement
from services.content.phones import whatsapp_forms
from services.tenancy.secrets import decrypt_json, encrypt_json

_INSERT = Statement(
    "INSERT INTO suppressions (tenant_id, number_hash, reason, created_at)"
    " SELECT :tenant, h, :reason, timezone('utc', now())"
    " FROM unnest(CAST(:hashes AS varchar[])) AS h"
    " ON CONFLICT (tenant_id, number_hash) DO NOTHING"
)
_DELETE = Statement(
    "DELETE FROM suppressions WHERE tenant_id = :tenant"
    " AND number_hash = ANY(CAST(:hashes AS varchar[]))"
)


log = logging.getLogger(__name__)

KEY_ID = "suppression"
# database URL -> the HMAC keyed with that database's key, ready to copy: the send
# policy hashes every recipient's forms on the accept path.
_keyed: dict[str, Any] = {}
_lock = threading.Lock()


def _load_key() -> bytes:
    """The database's suppression key, made on first use (in its own transaction, so
    a caller's rollback cannot take back a key already used for hashing)."""
    with session_scope() as own:
        stored = own.get(PrivacyKey, KEY_ID)
        if stored is None:
            fresh = base64.b64encode(os.urandom(32)).decode()
            own.execute(
                insert(PrivacyKey)
                .values(id=KEY_ID, key_enc=encrypt_json({"key": fresh}), created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["id"])
            )
            own.flush()
            stored = own.get(PrivacyKey, KEY_ID, populate_existing=True)
        assert stored is not None
        try:
            return base64.b64decode(decrypt_json(stored.key_enc)["key"])
        except RuntimeError as exc:  # HERALD_SECRET_KEY changed without the previous one
            log.error("suppression key unreadable: %s", exc)
            raise Unavailable(
                "Opt-outs cannot be checked: the server's secret key changed.",
                code="secret_key_mismatch",
            ) from None


def _hmac() -> Any:
    """A fresh HMAC keyed for suppressions."""
    url = get_settings().database_url
    base = _keyed.get(url)
    if base is None:
        with _lock:
            base = _keyed.get(url)
            if base is None:
                base = _keyed[url] = hmac.new(_load_key(), digestmod=hashlib.sha256)
    return base.copy()


def number_hash(tenant_id: str, number: str) -> str:
    """The keyed hash a suppression is stored and looked up under (E.164 `number`)."""
    digest = _hmac()
    digest.update(f"{tenant_id}:{number}".encode())
    return digest.hexdigest()


def hashes_of(tenant_id: str, numbers: Iterable[str]) -> dict[str, str]:
    """hash -> number, for every WhatsApp form of every number (a person dialled as
    +55 11 9… and writing as +55 11 … is one person: see whatsapp_forms)."""
    forms = {form for number in numbers for form in whatsapp_forms(number)}
    return {number_hash(tenant_id, form): form for form in sorted(forms)}


def suppress(session: Session, tenant_id: str, numbers: Iterable[str]) -> int:
    """Never message these numbers (every form) from this tenant again; idempotent.
    Returns how many hashes were new."""
    hashes = sorted(hashes_of(tenant_id, numbers))
    if not hashes:
        return 0
    return _INSERT.execute(session, {"tenant": tenant_id, "reason": "opted_out", "hashes": hashes})


def lift(session: Session, tenant_id: str, number: str) -> int:
    """The person wrote START again: their suppression (every form) goes."""
    return _DELETE.execute(
        session, {"tenant": tenant_id, "hashes": sorted(hashes_of(tenant_id, [number]))}
    )
