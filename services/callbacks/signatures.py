"""Who may post a webhook: Twilio and Meta signatures, checked before any work that
costs, and the bounds every payload is read within (depth, ids, text)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from twilio.request_validator import RequestValidator

from core.config import get_settings
from core.errors import Forbidden
from models import ProviderAccount
from services.tenancy.tenants import (
    AccountCredentials,
    accounts_by_external_ids,
    cached_accounts_by_external_id,
    meta_verify_token_held,
)
from services.tenancy.tenants import credentials as _credentials

log = logging.getLogger(__name__)

# Before a Meta signature is checked, the body may only name the secrets to try: at
# most this many distinct phone number ids are looked up (one query), so an unsigned
# body costs the same whatever it lists. A real delivery names its own number first.
MAX_SIGNER_PHONE_IDS = 8
# Meta's deliveries nest about ten levels; anything far deeper is not one.
MAX_JSON_DEPTH = 64
MAX_ID_LENGTH = 128  # provider_message_id columns


def credentials(account: Any) -> AccountCredentials | None:
    """Decrypted credentials, or None (logged) for a row this process cannot decrypt,
    so one misconfigured account never breaks webhooks for the others."""
    try:
        return _credentials(account)
    except RuntimeError as exc:
        log.error("skipping provider account %s: %s", account.id, exc)
        return None


def same_text(given: str, expected: str) -> bool:
    """Constant-time comparison of any two strings (`hmac.compare_digest` raises on
    non-ASCII `str`, which a forged header or query can carry)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


class _SignedParams(dict[str, str]):
    """A callback's form as RequestValidator reads it: `getall` is the first accessor it
    tries for each field, so no AttributeError is raised and caught per field (a plain
    dict costs two). The same values, so the same signature."""

    __slots__ = ()

    def getall(self, name: str) -> list[str]:
        return [self[name]]


def verify_twilio(
    session: Session, url: str, form: dict[str, str], signature: str
) -> list[AccountCredentials]:
    """The accounts whose auth token signed this request (one Twilio account may
    serve several tenants); Forbidden if none did. Each distinct token is tried once.
    The accounts come from a per-process cache (services.tenancy.tenants.CACHE_SECONDS): a
    rotated auth token is refused by every process within that many seconds, and the
    session is used only when the cache does not hold them."""
    matched = []
    verdicts: dict[str, bool] = {}
    if signature:
        sid = form.get("AccountSid", "")
        params = _SignedParams(form)
        found = cached_accounts_by_external_id(session, "twilio", sid, credentials)
        if found and _kept_signers.get(sid) is not found:  # a cache miss: a new list
            _keep_signers(sid, found)
        for creds in found:
            token = creds.secrets.get("auth_token", "")
            if not token:
                continue
            if token not in verdicts:
                verdicts[token] = _twilio_signed(token, url, params, signature)
            if verdicts[token]:
                matched.append(creds)
    if not matched:
        raise Forbidden("Invalid or missing X-Twilio-Signature.")
    return matched


# The signers last read for each Twilio account SID, kept past the cache's seconds and
# whatever the database does: while it is unreachable they decide whether a callback may
# be spooled (services/callbacks/spool.py; the drain checks it again against the database).
KEPT_SIGNERS = 4096
_kept_signers: OrderedDict[str, list[AccountCredentials]] = OrderedDict()
_kept_lock = threading.Lock()


def _keep_signers(sid: str, found: list[AccountCredentials]) -> None:
    with _kept_lock:
        _kept_signers[sid] = found
        _kept_signers.move_to_end(sid)
        while len(_kept_signers) > KEPT_SIGNERS:
            _kept_signers.popitem(last=False)


def twilio_signed_by_kept(url: str, form: dict[str, str], signature: str) -> bool | None:
    """Whether a signer this process last saw for the callback's AccountSid signed it,
    without the database; None when it saw none (a process started during an outage)."""
    found = _kept_signers.get(form.get("AccountSid", ""))
    if not found:
        return None
    params = _SignedParams(form)
    tokens = {c.secrets.get("auth_token", "") for c in found}
    return any(_twilio_signed(t, url, params, signature) for t in tokens if t)


def _twilio_signed(token: str, url: str, form: dict[str, str], signature: str) -> bool:
    """Twilio's check, the URL as received first: `RequestValidator.validate` always
    computes two signatures (with and without the port), one is enough when it matches."""
    validator = RequestValidator(token)
    if same_text(signature, validator.compute_signature(url, form)):
        return True
    return validator.validate(url, form, signature)


@dataclass(frozen=True)
class MetaSigner:
    """Who signed a Meta delivery: the app secret, whether it is the deployment-wide
    one (`META_APP_SECRET`, any account), and the accounts named in the body that hold it."""

    secret: str = field(repr=False)
    app_wide: bool
    accounts: tuple[AccountCredentials, ...]

    def may_touch(self, account: AccountCredentials) -> bool:
        return self.app_wide or account.secrets.get("app_secret") == self.secret

    @property
    def scope(self) -> str:
        """What this signer's receipts are keyed under when no account is known."""
        return "app" if self.app_wide else min(a.id for a in self.accounts)


def parse_meta_body(raw: bytes) -> dict[str, Any] | None:
    """The delivery as a JSON object, or None for anything else (not JSON, not an
    object, nested deeper than any delivery: a RecursionError is never raised)."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict) or _depth_exceeds(payload, MAX_JSON_DEPTH):
        return None
    return _clean(payload)


def verify_meta(
    session: Session, raw: bytes, payload: dict[str, Any] | None, signature: str
) -> MetaSigner:
    """Check `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with an app secret).
    The secrets tried are those of the first few phone number ids the body names (one
    query) plus the deployment-wide one, each once; the signer scopes what the body
    may touch."""
    given = signature[len("sha256=") :] if signature.startswith("sha256=") else ""
    if given and given.isascii():
        holders: dict[str, list[AccountCredentials]] = {}
        ids = _meta_phone_ids(payload or {}, MAX_SIGNER_PHONE_IDS)
        for account in accounts_by_external_ids(session, "meta", ids):
            creds = credentials(account)
            secret = creds.secrets.get("app_secret") if creds else None
            if creds and isinstance(secret, str) and secret:
                holders.setdefault(secret, []).append(creds)
        if has_account_changes(payload or {}):  # WABA-level: no phone number to narrow by
            for secret, creds in account_secrets(session):
                holders.setdefault(secret, []).append(creds)
        app_secret = get_settings().meta_app_secret
        for secret in [*([app_secret] if app_secret else []), *holders]:
            expected = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected.encode(), given.encode()):
                return MetaSigner(secret, secret == app_secret, tuple(holders.get(secret, ())))
    raise Forbidden("Invalid or missing X-Hub-Signature-256.")


def meta_verify_challenge(session: Session, mode: str | None, token: str | None) -> bool:
    """Meta's subscription handshake: accept a verify token any Meta account (or config) holds."""
    if mode != "subscribe" or not token:
        return False
    if get_settings().meta_verify_token and same_text(token, get_settings().meta_verify_token):
        return True
    return meta_verify_token_held(session, token)


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests deeper than `limit`, without recursing."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in children)
    return False


def _clean(value: Any) -> Any:
    """The same JSON with every string storable: NUL removed, a lone surrogate replaced
    (PostgreSQL refuses both, and a provider's text is kept, not refused)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def clean_text(text: str) -> str:
    """`text` without NUL and with any lone surrogate replaced by U+FFFD."""
    if text.isascii() and "\x00" not in text:  # a callback's fields, nearly always
        return text
    text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def meta_changes(payload: Any) -> Iterator[dict[str, Any]]:
    """Each change of a Meta delivery that is an object; any other shape is skipped."""
    entries = payload.get("entry") if isinstance(payload, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            if isinstance(change, dict):
                yield change


def meta_change_value(change: dict[str, Any]) -> dict[str, Any]:
    value = change.get("value")
    return value if isinstance(value, dict) else {}


def meta_phone_id(value: dict[str, Any]) -> str:
    metadata = value.get("metadata")
    phone_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if isinstance(phone_id, bool) or not isinstance(phone_id, str | int):
        return ""
    text = str(phone_id)
    return text if len(text) <= 64 else ""


def _meta_phone_ids(payload: Any, limit: int) -> set[str]:
    """The first `limit` distinct phone number ids the delivery names."""
    ids: set[str] = set()
    for change in meta_changes(payload):
        phone_id = meta_phone_id(meta_change_value(change))
        if phone_id:
            ids.add(phone_id)
            if len(ids) >= limit:
                break
    return ids


# ---------------------------------------------------------------- WABA-level changes
# `message_template_status_update`, `phone_number_quality_update`, `account_update`, ...
# carry no `phone_number_id`: they are verified by any app secret Herald holds,
# answered 200 and recorded (meta.py), so Meta stops retrying them.

# The app secrets tried on a WABA-level webhook, at most: the check stays bounded
# (a deployment with more Meta accounts sets META_APP_SECRET).
MAX_ACCOUNT_SECRETS = 32


def is_account_change(change: dict[str, Any]) -> bool:
    """A change about the WhatsApp Business Account itself, not one phone number's traffic."""
    value = change.get("value")
    metadata = value.get("metadata") if isinstance(value, dict) else None
    phone_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    return not phone_id and change.get("field") != "messages"


def account_changes(payload: Any) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(entry, change) for each WABA-level change of a delivery."""
    entries = payload.get("entry") if isinstance(payload, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            if isinstance(change, dict) and is_account_change(change):
                yield entry, change


def has_account_changes(payload: Any) -> bool:
    return next(account_changes(payload), None) is not None


def account_secrets(session: Session) -> list[tuple[str, Any]]:
    """The Meta app secrets Herald holds (at most MAX_ACCOUNT_SECRETS distinct ones),
    with the credentials holding each: what a WABA-level webhook, which names no phone
    number to look up, may be signed with."""
    found: list[tuple[str, Any]] = []
    distinct: set[str] = set()
    query = select(ProviderAccount).where(ProviderAccount.provider == "meta")
    for account in session.scalars(query.order_by(ProviderAccount.created_at)):
        creds = credentials(account)
        secret = creds.secrets.get("app_secret") if creds else None
        if not isinstance(secret, str) or not secret:
            continue
        if secret not in distinct and len(distinct) >= MAX_ACCOUNT_SECRETS:
            log.warning("more than %d Meta app secrets: set META_APP_SECRET", MAX_ACCOUNT_SECRETS)
            break
        distinct.add(secret)
        found.append((secret, creds))
    return found
