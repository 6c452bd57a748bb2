"""Administering tenants: the rules shared by the admin API (`/admin/v1`) and the CLI.

Creating a tenant, its provider accounts and keys goes through services/tenancy/tenants.py;
this module adds what an administrator needs on top: listing, updating limits and the
callback URL, disabling, rotating provider secrets, removing an account, listing and
revoking keys. Secrets are write-only here: no function returns a stored secret.
"""

from __future__ import annotations

from typing import Any

import phonenumbers
from marshmallow import RAISE, Schema, fields, validate
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.errors import Conflict, InvalidRequest, NotFound
from core.ids import iso
from core.shapes import Shape, shape
from models import ApiKey, Message, ProviderAccount, Tenant, utcnow
from services.content.prices import SmsPricesSchema
from services.content.schemas import (
    FAILOVER_MAX_SECONDS,
    FAILOVER_MIN_SECONDS,
    load_object,
)
from services.lifecycle.retention import MAX_DAYS, MIN_DAYS, effective_days
from services.policy.keywords import KeywordRepliesSchema, KeywordsSchema
from services.reporting.events import webhook_secret
from services.tenancy.owned import get_owned, list_owned
from services.tenancy.secrets import decrypt_json, encrypt_json
from services.tenancy.tenants import (
    KEY_TYPES,
    PROVIDER_FIELDS,
    add_provider_account,
    create_api_key,
    create_tenant,
    hash_key,
)

# Statuses in which a message still needs its provider account to be sent.
IN_FLIGHT = ("scheduled", "queued", "sending")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class TenantFailoverSchema(_Strict):
    """A tenant's default failover: an SMS fallback with the message's own text."""

    channel = fields.String(load_default="sms", validate=validate.OneOf(("sms",)))
    after_seconds = fields.Integer(
        strict=True, validate=validate.Range(min=FAILOVER_MIN_SECONDS, max=FAILOVER_MAX_SECONDS)
    )


class TenantSchema(_Strict):
    name = fields.String(validate=validate.Length(min=1, max=200))
    callback_url = fields.Url(
        schemes={"http", "https"},
        require_tld=False,
        allow_none=True,
        validate=validate.Length(max=2000),
    )
    hourly_limit = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=0))
    daily_limit = fields.Integer(allow_none=True, strict=True, validate=validate.Range(min=0))
    smart_encoding = fields.Boolean(truthy={True}, falsy={False})  # "no" is not false
    sms_max_segments = fields.Integer(strict=True, allow_none=True, validate=validate.Range(min=1))
    sms_countries = fields.List(
        fields.String(validate=validate.OneOf(sorted(phonenumbers.SUPPORTED_REGIONS))),
        allow_none=True,
        validate=validate.Length(min=1, max=250),
    )
    international_daily_limit = fields.Integer(
        strict=True, allow_none=True, validate=validate.Range(min=0)
    )
    sms_prices = fields.Nested(SmsPricesSchema, allow_none=True)
    keywords = fields.Nested(KeywordsSchema, allow_none=True)
    keyword_replies = fields.Nested(KeywordRepliesSchema, allow_none=True)
    # Days content is kept (services/lifecycle/retention.py); null: the default.
    retention_days = fields.Integer(
        strict=True, allow_none=True, validate=validate.Range(min=MIN_DAYS, max=MAX_DAYS)
    )
    # The failover every WhatsApp message gets unless its request says otherwise
    # (services/messages/failover_policy.py); null: none.
    failover = fields.Nested(TenantFailoverSchema, allow_none=True)
    accounts = fields.List(fields.Dict(keys=fields.String()))


# Per-tenant SMS settings an operator may give at creation too.
SMS_SETTINGS = (
    "smart_encoding",
    "sms_max_segments",
    "sms_countries",
    "international_daily_limit",
    "sms_prices",
    "keywords",
    "keyword_replies",
    "failover",
)


def load_tenant_request(payload: Any, *, partial: bool = False) -> dict[str, Any]:
    """A validated tenant create (name required) or update (every field optional)."""
    data = load_object(TenantSchema(), payload, partial=partial, required="name")
    if partial and "accounts" in data:
        raise InvalidRequest(
            "Accounts are managed under /accounts.",
            code="invalid_fields",
            fields={"accounts": ["Unknown field."]},
        )
    return data


def _account_values(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise InvalidRequest("An account must be a JSON object.")
    bad = [k for k, v in payload.items() if not isinstance(v, str | int | float) or v == ""]
    if bad:
        raise InvalidRequest(
            "Account fields are non-empty strings or numbers.",
            code="invalid_fields",
            fields={k: ["Not a non-empty string or number."] for k in bad},
        )
    return {k: str(v) if not isinstance(v, str) else v for k, v in payload.items()}


# ---------------------------------------------------------------- shapes (no secrets)


class TenantView(Shape):
    """A tenant (`tenant_to_dict`)."""

    id = fields.String()
    name = fields.String()
    callback_url = fields.String(allow_none=True)
    hourly_limit = fields.Integer(allow_none=True, metadata={"description": "null: the default"})
    daily_limit = fields.Integer(allow_none=True, metadata={"description": "null: the default"})
    smart_encoding = fields.Boolean(
        metadata={"description": "SMS look-alike characters swapped for GSM-7 ones"}
    )
    sms_max_segments = fields.Integer(
        allow_none=True, metadata={"description": "the most segments an SMS may take; null: no cap"}
    )
    sms_countries = fields.List(
        fields.String(),
        allow_none=True,
        metadata={"description": "ISO countries it may text; null: those of its own numbers"},
    )
    international_daily_limit = fields.Integer(
        allow_none=True, metadata={"description": "international SMS a day; null: the default"}
    )
    sms_prices = fields.Nested(
        SmsPricesSchema,
        allow_none=True,
        metadata={"description": "SMS price per segment per country: campaigns' cost estimates"},
    )
    keywords = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.String()),
        allow_none=True,
        metadata={"description": "its own stop/start/help words, besides the standard ones"},
    )
    keyword_replies = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        allow_none=True,
        metadata={"description": "answers to stop/start/help ('' none; absent: the default)"},
    )
    failover = fields.Dict(
        allow_none=True,
        metadata={
            "description": "the SMS fallback WhatsApp messages get unless they say"
            " otherwise: {channel, after_seconds?}; null: none"
        },
    )
    default_whatsapp_provider = fields.String(allow_none=True)
    default_sms_provider = fields.String(allow_none=True)
    retention_days = fields.Integer(
        allow_none=True, metadata={"description": "days content is kept; null: the default"}
    )
    effective_retention_days = fields.Integer(metadata={"description": "what applies"})
    disabled = fields.Boolean()
    disabled_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()


class NewTenantView(Shape):
    """A tenant just created (`create_tenant_with_key`): its key and webhook secret are
    shown this once."""

    tenant = fields.Nested(TenantView)
    api_key = fields.String()
    webhook_secret = fields.String(metadata={"description": "signs the events out"})


_SETTINGS = sorted({name for _, _, names in PROVIDER_FIELDS.values() for name in names})


class AccountView(Shape):
    """A provider account without its secrets (`account_to_dict`): its provider's own id
    under that provider's name for it."""

    class Meta:
        optional = tuple(id_field for id_field, _, _ in PROVIDER_FIELDS.values())

    id = fields.String()
    tenant_id = fields.String()
    provider = fields.String()
    account_sid = fields.String(metadata={"description": "twilio"})
    phone_number_id = fields.String(metadata={"description": "meta"})
    settings = fields.Nested(
        shape("AccountSettings", {name: fields.String() for name in _SETTINGS}, optional=_SETTINGS),
        metadata={"description": "those set"},
    )
    secrets_set = fields.List(fields.String(), metadata={"description": "names only"})
    created_at = fields.DateTime()


class ApiKeyView(Shape):
    """An API key: its prefix, never the key (`api_key_to_dict`)."""

    id = fields.String()
    tenant_id = fields.String()
    prefix = fields.String()
    name = fields.String(allow_none=True)
    type = fields.String(metadata={"description": "live, or test: sends to the simulator only"})
    created_at = fields.DateTime()
    revoked_at = fields.DateTime(allow_none=True)


class NewApiKeyView(ApiKeyView):
    """A key just created (`create_tenant_key`): the key is shown this once."""

    api_key = fields.String()


def tenant_to_dict(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "name": tenant.name,
        "callback_url": tenant.callback_url,
        "hourly_limit": tenant.hourly_limit,
        "daily_limit": tenant.daily_limit,
        "smart_encoding": tenant.smart_encoding is not False,
        "sms_max_segments": tenant.sms_max_segments,
        "sms_countries": tenant.sms_countries,
        "international_daily_limit": tenant.international_daily_limit,
        "sms_prices": tenant.sms_prices,
        "keywords": tenant.keywords,
        "keyword_replies": tenant.keyword_replies,
        "failover": None if tenant.failover is None else {"channel": "sms", **tenant.failover},
        "default_whatsapp_provider": tenant.default_whatsapp_provider,
        "default_sms_provider": tenant.default_sms_provider,
        "retention_days": tenant.retention_days,
        "effective_retention_days": effective_days(tenant.retention_days),
        "disabled": tenant.disabled_at is not None,
        "disabled_at": iso(tenant.disabled_at),
        "created_at": iso(tenant.created_at),
    }


def account_to_dict(account: ProviderAccount) -> dict[str, Any]:
    """The account without its secrets: only the names of the secrets it holds."""
    try:
        held = sorted(decrypt_json(account.secrets_enc))
    except RuntimeError:
        held = []
    return {
        "id": account.id,
        "tenant_id": account.tenant_id,
        "provider": account.provider,
        PROVIDER_FIELDS[account.provider][0]: account.external_id,
        "settings": dict(account.settings or {}),
        "secrets_set": held,
        "created_at": iso(account.created_at),
    }


def api_key_to_dict(row: ApiKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "tenant_id": row.tenant_id,
        "prefix": row.prefix,
        "name": row.name,
        "type": row.type,
        "created_at": iso(row.created_at),
        "revoked_at": iso(row.revoked_at),
    }


# ---------------------------------------------------------------- tenants


def get_tenant(session: Session, tenant_id: str) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"No tenant {tenant_id!r}.")
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id)))


def create_tenant_with_key(session: Session, data: dict[str, Any]) -> dict[str, Any]:
    """Create a tenant, its accounts and its first API key; the key and webhook secret
    are in the answer, the only time either is shown."""
    tenant = create_tenant(
        session,
        data["name"],
        callback_url=data.get("callback_url"),
        hourly_limit=data.get("hourly_limit"),
        daily_limit=data.get("daily_limit"),
        **{k: data[k] for k in SMS_SETTINGS if k in data},
    )
    tenant.retention_days = data.get("retention_days")
    for spec in data.get("accounts") or []:
        values = _account_values(spec)
        provider = values.pop("provider", None)
        add_provider_account(session, tenant.id, str(provider), **values)
    key = create_api_key(session, tenant.id, name="admin")
    session.flush()
    session.refresh(tenant)
    return {
        "tenant": tenant_to_dict(tenant),
        "api_key": key,
        "webhook_secret": webhook_secret(tenant),
    }


def update_tenant(session: Session, tenant_id: str, data: dict[str, Any]) -> Tenant:
    """Change name, limits or retention (None = the deployment's default) or callback URL
    (None = none)."""
    tenant = get_tenant(session, tenant_id)
    for field in (
        "name",
        "callback_url",
        "hourly_limit",
        "daily_limit",
        *SMS_SETTINGS,
        "retention_days",
    ):
        if field in data:
            setattr(tenant, field, data[field])
    session.flush()
    return tenant


def set_tenant_disabled(session: Session, tenant_id: str, disabled: bool) -> Tenant:
    """A disabled tenant's keys and tokens are refused (401) and its console sign-in too;
    messages already accepted are still delivered and its data is kept."""
    tenant = get_tenant(session, tenant_id)
    if disabled and tenant.disabled_at is None:
        tenant.disabled_at = utcnow()
    elif not disabled:
        tenant.disabled_at = None
    session.flush()
    return tenant


# ---------------------------------------------------------------- provider accounts


def list_accounts(session: Session, tenant_id: str) -> list[ProviderAccount]:
    get_tenant(session, tenant_id)
    return list_owned(session, ProviderAccount, tenant_id)


def get_account(session: Session, tenant_id: str, account_id: str) -> ProviderAccount:
    missing = f"No account {account_id!r} on this tenant."
    return get_owned(session, ProviderAccount, tenant_id, account_id, missing)


def add_account(session: Session, tenant_id: str, payload: Any) -> ProviderAccount:
    get_tenant(session, tenant_id)
    values = _account_values(payload)
    provider = values.pop("provider", None)
    if provider not in PROVIDER_FIELDS:
        raise InvalidRequest(
            "provider must be 'twilio' or 'meta'.",
            code="invalid_fields",
            fields={"provider": ["Must be one of: twilio, meta."]},
        )
    return add_provider_account(session, tenant_id, provider, **values)


def update_account(
    session: Session, tenant_id: str, account_id: str, payload: Any
) -> ProviderAccount:
    """Rotate secrets and change settings; fields not given keep their value. The
    provider's own id (account SID, phone number id) cannot change: add a new account."""
    account = get_account(session, tenant_id, account_id)
    values = _account_values(payload)
    id_field, secret_fields, setting_fields = PROVIDER_FIELDS[account.provider]
    if id_field in values and values[id_field] != account.external_id:
        raise InvalidRequest(
            f"{id_field} cannot change; add a new account instead.",
            code="invalid_fields",
            fields={id_field: ["Cannot change."]},
        )
    values.pop(id_field, None)
    unknown = set(values) - {*secret_fields, *setting_fields}
    if unknown:
        raise InvalidRequest(
            f"Unknown {account.provider} account fields: {sorted(unknown)}.",
            code="invalid_fields",
            fields={k: ["Unknown field."] for k in sorted(unknown)},
        )
    new_secrets = {k: values[k] for k in secret_fields if k in values}
    if new_secrets:
        account.secrets_enc = encrypt_json({**decrypt_json(account.secrets_enc), **new_secrets})
    new_settings = {k: values[k] for k in setting_fields if k in values}
    if new_settings:
        account.settings = {**(account.settings or {}), **new_settings}
    session.flush()
    return account


def remove_account(session: Session, tenant_id: str, account_id: str) -> None:
    """Remove an account no message in flight still needs (409 otherwise). Its sent
    messages are kept, detached from it; the tenant's default providers follow."""
    account = get_account(session, tenant_id, account_id)
    waiting = session.scalar(
        select(func.count()).where(
            Message.provider_account_id == account.id, Message.status.in_(IN_FLIGHT)
        )
    )
    if waiting:
        raise Conflict(
            f"{waiting} message(s) waiting to be sent need this account; cancel them or "
            "wait for them to be sent.",
            code="account_in_use",
        )
    session.execute(
        update(Message)
        .where(Message.provider_account_id == account.id)
        .values(provider_account_id=None)
        .execution_options(synchronize_session=False)
    )
    session.delete(account)
    session.flush()
    _refresh_defaults(session, get_tenant(session, tenant_id))


def _refresh_defaults(session: Session, tenant: Tenant) -> None:
    """Defaults point only at providers the tenant still has (Meta first for WhatsApp)."""
    remaining = list_accounts(session, tenant.id)
    providers = {a.provider for a in remaining}
    twilio_whatsapp = any(
        a.provider == "twilio" and (a.settings or {}).get("whatsapp_from") for a in remaining
    )
    if tenant.default_whatsapp_provider not in providers:
        tenant.default_whatsapp_provider = (
            "meta" if "meta" in providers else "twilio" if twilio_whatsapp else None
        )
    if tenant.default_sms_provider not in providers:
        tenant.default_sms_provider = "twilio" if "twilio" in providers else None
    session.flush()


# ---------------------------------------------------------------- API keys


def list_api_keys(session: Session, tenant_id: str) -> list[ApiKey]:
    get_tenant(session, tenant_id)
    return list(
        session.scalars(
            select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
        )
    )


def create_tenant_key(
    session: Session, tenant_id: str, name: str | None = None, type: str = "live"
) -> dict[str, Any]:
    """A new key for the tenant: the clear key is in this answer only. A `test` key's
    messages go to the simulator, never to a provider."""
    get_tenant(session, tenant_id)
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise InvalidRequest(
            "name is a string of at most 200 characters.",
            code="invalid_fields",
            fields={"name": ["Not a string of at most 200 characters."]},
        )
    if type not in KEY_TYPES:
        raise InvalidRequest(
            "type is live or test.", code="invalid_fields", fields={"type": ["live or test"]}
        )
    key = create_api_key(session, tenant_id, name=name, type=type)
    row = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).first()
    assert row is not None
    return {**api_key_to_dict(row), "api_key": key}


def revoke_tenant_key(session: Session, tenant_id: str, key_id: str) -> ApiKey:
    """Revoke one of the tenant's keys; revoking twice keeps the first time."""
    row = get_owned(session, ApiKey, tenant_id, key_id, f"No key {key_id!r} on this tenant.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.flush()
    return row
