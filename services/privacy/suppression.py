"""Opt-outs that outlive an erased person, kept as keyed hashes (table `suppressions`).

Erasure deletes the contact row that carried the opt-out flag; the promise not to
message that person again must survive it without keeping the number. Each number form
is stored as an HMAC of the tenant id and the E.164 number, keyed from HERALD_SECRET_KEY
(services/tenancy/secrets.py `derived_key`): a database leak gives no number and no way
to test guesses offline, and one person's rows in two tenants do not match each other.
The send policy (services/policy/consent.py, services/messages/claim.py) hashes the
forms of a recipient and refuses one found here; a START from the number lifts it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from core.config import get_settings
from models.fast import Statement
from services.content.phones import whatsapp_forms
from services.tenancy.secrets import derived_key

PURPOSE = "herald-privacy-suppression"

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


_keyed: list[Any] = [None, None]  # (the settings it was keyed under, the keyed HMAC)


def _hmac() -> Any:
    """A fresh HMAC keyed for suppressions, copied from one keyed once per settings (the
    key is read from them): the send policy hashes every recipient's forms on the
    accept path, where deriving the key each time cost more than the hashing."""
    settings = get_settings()
    if _keyed[0] is not settings:
        _keyed[1] = hmac.new(derived_key(PURPOSE), digestmod=hashlib.sha256)
        _keyed[0] = settings
    return _keyed[1].copy()


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
