"""Tenants, API keys, JWTs and provider accounts."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import jwt
from sqlalchemy import event, inspect, select
from sqlalchemy.orm import ORMExecuteState, Session, make_transient_to_detached

from core.config import get_settings
from core.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from models import ApiKey, ProviderAccount, Sender, Tenant, utcnow
from providers.base import AccountCredentials
from services.content.inputs import text_problem
from services.tenancy.secrets import decrypt_json, derived_key, encrypt_json

log = logging.getLogger(__name__)

KEY_PREFIX = "hk_"
PROVIDER_FIELDS = {
    # provider: (external id field, secret fields, setting fields)
    "twilio": (
        "account_sid",
        ("auth_token",),
        ("sms_from", "whatsapp_from", "messaging_service_sid", "mps"),
    ),
    "meta": (
        "phone_number_id",
        ("access_token", "app_secret", "verify_token"),
        ("waba_id", "display_phone_number", "mps", "auto_mark_read"),
    ),
}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_tenant(session: Session, name: str, **options: Any) -> Tenant:
    tenant = Tenant(name=name, **options)
    tenant.webhook_secret_enc = encrypt_json({"secret": "whsec_" + secrets.token_urlsafe(24)})
    session.add(tenant)
    session.flush()
    return tenant


KEY_TYPES = ("live", "test")
TEST_KEY_PREFIX = KEY_PREFIX + "test_"  # a test key says so, as Stripe's `sk_test_` does


def create_api_key(
    session: Session, tenant_id: str, name: str | None = None, type: str = "live"
) -> str:
    """Create a key and return it in clear: the only time it is ever visible. A `test`
    key (`hk_test_…`) sends nothing: its messages go to the simulator."""
    if type not in KEY_TYPES:
        raise InvalidRequest(
            f"Unknown key type {type!r}: live or test.", fields={"type": ["live or test"]}
        )
    key = (TEST_KEY_PREFIX if type == "test" else KEY_PREFIX) + secrets.token_urlsafe(32)
    prefix = key[: len(TEST_KEY_PREFIX) + 7] if type == "test" else key[:10]
    session.add(
        ApiKey(tenant_id=tenant_id, key_hash=hash_key(key), prefix=prefix, name=name, type=type)
    )
    session.flush()
    return key


def revoke_api_key(session: Session, key: str) -> str | None:
    """Revoke a key named by its id (`key_…`) or by the key itself (`hk_…`, what its
    holder has at hand when it leaked); the key's id, or None when no active key is so
    named."""
    if key.startswith(KEY_PREFIX):
        row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).first()
    else:
        row = session.get(ApiKey, key)
    if row is None or row.revoked_at is not None:
        return None
    row.revoked_at = utcnow()
    forget_cached()  # again at commit (see _track_changes): no request re-reads the old row
    return row.id


# Key → tenant → accounts, cached per process for a few seconds: every POST used to
# read them (three SELECTs, ~26 % of the accept path's CPU). A change made through
# this process (ORM or session.execute(update(...))) clears the cache at flush and at
# commit; a change made by another process is seen within CACHE_SECONDS at most.
CACHE_SECONDS = 5.0
CACHE_SIZE = 4096
_CACHED_TABLES = frozenset({"tenants", "api_keys", "provider_accounts"})


class _TTLCache:
    """A small thread-safe map whose entries expire; the oldest go first when full.
    Expiry is read on `clock` (a test sets its own to pass CACHE_SECONDS without waiting)."""

    def __init__(self, size: int, clock: Callable[[], float] | None = None) -> None:
        self._size = size
        # `time.monotonic` looked up at each read, so patching the module's clock works too.
        self.clock = clock or (lambda: time.monotonic())
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> tuple[bool, Any]:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return False, None
            if entry[0] <= self.clock():
                del self._data[key]
                return False, None
            return True, entry[1]

    def put(self, key: Any, value: Any, generation: int) -> None:
        with self._lock:
            if generation != _generation:  # cleared while this value was read: stale
                return
            self._data[key] = (self.clock() + CACHE_SECONDS, value)
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_generation = 0
_keys = _TTLCache(CACHE_SIZE)  # API key hash → (tenant id, test key)
_tenants = _TTLCache(CACHE_SIZE)  # tenant id → detached Tenant (read-only)
_accounts = _TTLCache(CACHE_SIZE)  # (tenant id, provider) → AccountCredentials | None
_by_external = _TTLCache(CACHE_SIZE)  # (provider, external id) → webhook signers, decrypted


def forget_cached() -> None:
    """Drop every cached key, tenant and account: call after revoking a key or
    changing a tenant or an account by any path this module does not see."""
    global _generation
    _generation += 1
    for cache in (_keys, _tenants, _accounts, _by_external):
        cache.clear()


@event.listens_for(Session, "do_orm_execute")
def _track_statements(state: ORMExecuteState) -> None:
    if state.is_update or state.is_delete:
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) in _CACHED_TABLES:
            state.session.info["herald_forget"] = True
            forget_cached()


@event.listens_for(Session, "after_flush")
def _track_changes(session: Session, _context: Any) -> None:
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, Tenant | ApiKey | ProviderAccount):
            session.info["herald_forget"] = True
            forget_cached()
            return


@event.listens_for(Session, "after_commit")
def _forget_on_commit(session: Session) -> None:
    # Cleared again once the change is visible: a request between flush and commit
    # may have cached the old row.
    if not session.in_nested_transaction() and session.info.pop("herald_forget", False):
        forget_cached()


def _cached_tenant(session: Session, tenant_id: str) -> Tenant | None:
    hit, tenant = _tenants.get(tenant_id)
    if hit:
        return tenant
    generation = _generation
    row = session.get(Tenant, tenant_id)
    if row is None:
        return None
    copy = Tenant(**{c.key: getattr(row, c.key) for c in Tenant.__table__.columns})
    make_transient_to_detached(copy)  # shared read-only between threads, never in a session
    _tenants.put(tenant_id, copy, generation)
    return copy


def authenticate(session: Session, authorization: str | None) -> Tenant:
    """The tenant behind an `Authorization: Bearer …` header (API key or HS256 JWT)."""
    return authenticate_caller(session, authorization)[0]


def authenticate_caller(session: Session, authorization: str | None) -> tuple[Tenant, bool]:
    """The tenant behind an `Authorization: Bearer …` header (API key or HS256 JWT), and
    whether the caller is in test mode (a `test` key; a JWT is live)."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("Send 'Authorization: Bearer <api key>'.")
    token = authorization[len("Bearer ") :].strip()
    tenant: Tenant | None = None
    test = False
    if token.startswith(KEY_PREFIX):
        digest = hash_key(token)
        hit, found = _keys.get(digest)
        if not hit:
            generation = _generation
            row = session.execute(
                select(ApiKey.tenant_id, ApiKey.type).where(
                    ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)
                )
            ).first()
            found = (row.tenant_id, row.type == "test") if row is not None else None
            if found is not None:  # unknown keys are not cached: no cache flooding
                _keys.put(digest, found, generation)
        if found is not None:
            tenant_id, test = found
            tenant = _cached_tenant(session, tenant_id)
    elif token.count(".") == 2 and get_settings().jwt_secret:
        tenant_id = _jwt_tenant(token)
        tenant = _cached_tenant(session, tenant_id) if tenant_id else None
    if tenant is None or tenant.disabled_at is not None:
        raise Unauthorized("The API key or token is not valid.")
    return tenant, test


JWT_LEEWAY_SECONDS = 30  # clock skew between the token's issuer and Herald


def _jwt_tenant(token: str) -> str | None:
    """The `tenant` of a valid HS256 token, else None.

    A token must carry `exp` (one without it would be valid forever) and a numeric
    `iat` no older than HERALD_JWT_MAX_AGE_SECONDS (a far-future `exp` does not
    make a token live longer than that); `alg: none` and other algorithms are
    refused, and so is a `tenant` that is not a plain string.
    """
    settings = get_settings()
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=["HS256"],
            options={"require": ["tenant", "exp", "iat"]},
            leeway=JWT_LEEWAY_SECONDS,
        )
    except jwt.PyJWTError:
        return None
    issued, tenant_id = claims["iat"], claims["tenant"]
    if not isinstance(issued, int | float) or isinstance(issued, bool):
        return None
    if time.time() - issued > settings.jwt_max_age_seconds + JWT_LEEWAY_SECONDS:
        return None
    if not isinstance(tenant_id, str) or len(tenant_id) > 64 or text_problem(tenant_id):
        return None
    return tenant_id


def add_provider_account(
    session: Session, tenant_id: str, provider: str, **values: Any
) -> ProviderAccount:
    """Attach provider credentials to a tenant; secret fields are encrypted before storing."""
    if provider not in PROVIDER_FIELDS:
        raise InvalidRequest(f"Unknown provider {provider!r}.")
    id_field, secret_fields, setting_fields = PROVIDER_FIELDS[provider]
    if not values.get(id_field):
        raise InvalidRequest(f"{provider} account needs {id_field}.")
    unknown = set(values) - {id_field, *secret_fields, *setting_fields}
    if unknown:
        raise InvalidRequest(f"Unknown {provider} account fields: {sorted(unknown)}.")
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:  # said before the INSERT, whose error would carry the secrets
        raise NotFound(f"No tenant {tenant_id!r}.")
    external_id = str(values[id_field])
    taken = session.scalar(
        select(ProviderAccount.id).where(
            ProviderAccount.tenant_id == tenant_id,
            ProviderAccount.provider == provider,
            ProviderAccount.external_id == external_id,
        )
    )
    if taken:  # two rows for one account: which one's secrets a send uses is a coin toss
        raise Conflict(
            f"This tenant already has the {provider} account {external_id} ({taken}): "
            "change it with `herald account update` (PATCH …/accounts/<id>).",
            code="account_exists",
            fields={id_field: ["The tenant already has this account."]},
        )
    account = ProviderAccount(
        tenant_id=tenant_id,
        provider=provider,
        external_id=str(values[id_field]),
        settings={k: values[k] for k in setting_fields if values.get(k)},
        secrets_enc=encrypt_json({k: values[k] for k in secret_fields if values.get(k)}),
    )
    session.add(account)
    forget_cached()
    # Meta's Cloud API is the direct route for WhatsApp: preferred when present.
    if provider == "meta":
        tenant.default_whatsapp_provider = "meta"
    if provider == "twilio":
        tenant.default_sms_provider = tenant.default_sms_provider or "twilio"
        if not tenant.default_whatsapp_provider and values.get("whatsapp_from"):
            tenant.default_whatsapp_provider = "twilio"
    session.flush()
    return account


def credentials(account: ProviderAccount) -> AccountCredentials:
    return AccountCredentials(
        id=account.id,
        tenant_id=account.tenant_id,
        provider=account.provider,
        external_id=account.external_id,
        settings=dict(account.settings or {}),
        secrets=decrypt_json(account.secrets_enc),
    )


# ---------------------------------------------------------------- Meta verify tokens


def verify_token_hash(token: str) -> str:
    """The keyed hash a Meta verify token is looked up by (`verify_token_hash`): no
    account is decrypted to answer Meta's unauthenticated subscription check, and the
    column alone neither reveals a token nor lets a guess be tested."""
    key = derived_key("meta-verify-token")
    return hmac.new(key, token.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def _hash_of_secrets(secrets_enc: str) -> str | None:
    """`verify_token_hash` for an account's encrypted secrets: '' without a verify
    token, None when this process cannot decrypt them (tried again next time)."""
    try:
        token = decrypt_json(secrets_enc).get("verify_token")
    except RuntimeError:
        return None
    return verify_token_hash(token) if isinstance(token, str) and token else ""


@event.listens_for(ProviderAccount, "before_insert")
@event.listens_for(ProviderAccount, "before_update")
def _keep_verify_token_hash(_mapper: Any, _connection: Any, account: ProviderAccount) -> None:
    """Whoever writes an account's secrets (creation, the admin API, the CLI), the hash
    follows them in the same statement."""
    if account.verify_token_hash is None or inspect(account).attrs.secrets_enc.history.added:
        account.verify_token_hash = _hash_of_secrets(account.secrets_enc)


def meta_verify_token_held(session: Session, token: str) -> bool:
    """Whether a Meta account holds this verify token: one indexed lookup. Accounts
    stored before the column existed (NULL) are hashed first, each once; the caller
    commits."""
    query = select(ProviderAccount.id).where(
        ProviderAccount.provider == "meta",
        ProviderAccount.verify_token_hash == verify_token_hash(token),
    )
    if session.scalar(query.limit(1)) is not None:
        return True
    unhashed = session.scalars(
        select(ProviderAccount).where(
            ProviderAccount.provider == "meta", ProviderAccount.verify_token_hash.is_(None)
        )
    ).all()
    for account in unhashed:
        account.verify_token_hash = _hash_of_secrets(account.secrets_enc)
        if account.verify_token_hash is None:
            log.error("provider account %s: cannot decrypt its secrets", account.id)
    if not unhashed:
        return False
    session.flush()
    return session.scalar(query.limit(1)) is not None


def find_account(session: Session, tenant_id: str, provider: str) -> ProviderAccount | None:
    return session.scalars(
        select(ProviderAccount)
        .where(ProviderAccount.tenant_id == tenant_id, ProviderAccount.provider == provider)
        .order_by(ProviderAccount.created_at)
    ).first()


def cached_account(session: Session, tenant_id: str, provider: str) -> AccountCredentials | None:
    """`find_account`, decrypted, from the per-process cache (see CACHE_SECONDS)."""
    hit, found = _accounts.get((tenant_id, provider))
    if hit:
        return found
    generation = _generation
    account = find_account(session, tenant_id, provider)
    found = credentials(account) if account is not None else None
    _accounts.put((tenant_id, provider), found, generation)
    return found


def accounts_by_external_id(
    session: Session, provider: str, external_id: str
) -> list[ProviderAccount]:
    """Accounts a webhook names, oldest first: a stable order, never the database's whim."""
    return accounts_by_external_ids(session, provider, [external_id])


def cached_accounts_by_external_id(
    session: Session,
    provider: str,
    external_id: str,
    decrypt: Callable[[ProviderAccount], AccountCredentials | None],
) -> list[AccountCredentials]:
    """`accounts_by_external_id`, each through `decrypt` (None: skipped), from the
    per-process cache (CACHE_SECONDS): a webhook's signature check reads no row. An id
    no account has is not cached (no cache flooding by forged ids)."""
    hit, found = _by_external.get((provider, external_id))
    if hit:
        return found
    generation = _generation
    found = [
        creds
        for creds in map(decrypt, accounts_by_external_id(session, provider, external_id))
        if creds is not None
    ]
    if found:
        _by_external.put((provider, external_id), found, generation)
    return found


def accounts_for_addresses(session: Session, provider: str, addresses: list[str]) -> set[str]:
    """Ids of the accounts whose senders hold these addresses (Meta phone number ids a
    webhook names, beyond each account's own)."""
    if not addresses:
        return set()
    return set(
        session.scalars(
            select(Sender.provider_account_id).where(
                Sender.provider == provider, Sender.address.in_(addresses)
            )
        )
    )


def accounts_by_external_ids(
    session: Session, provider: str, external_ids: Iterable[str]
) -> list[ProviderAccount]:
    """The accounts for several external ids in one query, oldest first."""
    wanted = sorted(set(external_ids))
    if not wanted:
        return []
    named = ProviderAccount.external_id.in_(wanted)
    if provider == "meta":  # senders: a phone number id of the account's senders names it too
        owners = accounts_for_addresses(session, provider, wanted)
        named = named | ProviderAccount.id.in_(owners) if owners else named
    return list(
        session.scalars(
            select(ProviderAccount)
            .where(ProviderAccount.provider == provider, named)
            .order_by(ProviderAccount.created_at, ProviderAccount.id)
        )
    )
