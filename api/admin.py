"""`/admin/v1`: tenants, provider accounts and API keys, for an administrator without a shell.

Authenticated by `Authorization: Bearer <HERALD_ADMIN_TOKEN>`, compared in constant time.
With HERALD_ADMIN_TOKEN unset the whole prefix answers 404, as if it did not exist: an
admin surface is opt-in. The rules are the CLI's (services/tenancy/admin.py); secrets
are write-only, and a new API key is shown once, in the answer that creates it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, jsonify, request

from api.auth import db, json_body
from api.openapi import answers
from core.config import get_settings
from core.errors import InvalidRequest, NotFound, Unauthorized
from services.privacy.erasure import ADMIN_ERASURE_BODY, ErasureView, erase_number, load_request
from services.tenancy.admin import (
    AccountView,
    ApiKeyView,
    NewApiKeyView,
    NewTenantView,
    TenantSchema,
    TenantView,
    account_to_dict,
    add_account,
    api_key_to_dict,
    create_tenant_key,
    create_tenant_with_key,
    get_tenant,
    list_accounts,
    list_api_keys,
    list_tenants,
    load_tenant_request,
    remove_account,
    revoke_tenant_key,
    set_tenant_disabled,
    tenant_to_dict,
    update_account,
    update_tenant,
)
from services.tenancy.sender_admin import (
    SenderSchema,
    SenderUpdateSchema,
    SenderView,
    add_sender,
    list_senders,
    remove_sender,
    sender_to_dict,
    update_sender,
)

bp = Blueprint("admin", __name__, url_prefix="/admin/v1")
T = TypeVar("T")


@bp.before_request
def _require_admin() -> None:
    expected = get_settings().admin_token
    if not expected:
        raise NotFound("The admin API is not enabled on this server.")
    header = request.headers.get("Authorization") or ""
    given = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("Send 'Authorization: Bearer <admin token>'.")


def _committed(change: Callable[..., T], *args: Any) -> T:
    """`change(session, *args)` in the request's session, committed: what every view
    that changes something does."""
    session = db()
    result = change(session, *args)
    session.commit()
    return result


# Each view is documented from its schemas (api/openapi.py `answers`): the summary is
# its docstring's first line; every admin operation may also answer 400, 401, 404 (the
# API off, or an unknown id) and 503, added once for the whole prefix.
_ACCOUNT_FIELDS = {
    "type": "object",
    "description": "the provider's id, secrets and settings (services/tenancy/tenants.py)",
    "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}]},
}
_KEY_NAME = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 200},
        "type": {
            "type": "string",
            "enum": ["live", "test"],
            "default": "live",
            "description": "test: its messages go to the simulator, never to a provider",
        },
    },
    "additionalProperties": False,
}


@bp.get("/tenants")
@answers(TenantView, many=True)
def tenants_index():  # type: ignore[no-untyped-def]
    """List tenants."""
    return jsonify({"data": [tenant_to_dict(t) for t in list_tenants(db())]})


@bp.post("/tenants")
@answers(NewTenantView, 201, body=TenantSchema)
def tenants_create():  # type: ignore[no-untyped-def]
    """Create a tenant (and accounts); answers its first API key and webhook secret."""
    return jsonify(_committed(create_tenant_with_key, load_tenant_request(json_body()))), 201


@bp.get("/tenants/<tenant_id>")
@answers(TenantView)
def tenants_show(tenant_id: str):  # type: ignore[no-untyped-def]
    """A tenant."""
    return jsonify(tenant_to_dict(get_tenant(db(), tenant_id)))


@bp.patch("/tenants/<tenant_id>")
@answers(TenantView, body=TenantSchema)
def tenants_update(tenant_id: str):  # type: ignore[no-untyped-def]
    """Change name, limits or callback URL."""
    data = load_tenant_request(json_body(), partial=True)
    return jsonify(tenant_to_dict(_committed(update_tenant, tenant_id, data)))


@bp.post("/tenants/<tenant_id>/disable")
@answers(TenantView)
def tenants_disable(tenant_id: str):  # type: ignore[no-untyped-def]
    """Refuse the tenant's keys."""
    return jsonify(tenant_to_dict(_committed(set_tenant_disabled, tenant_id, True)))


@bp.post("/tenants/<tenant_id>/enable")
@answers(TenantView)
def tenants_enable(tenant_id: str):  # type: ignore[no-untyped-def]
    """Accept the tenant's keys again."""
    return jsonify(tenant_to_dict(_committed(set_tenant_disabled, tenant_id, False)))


@bp.get("/tenants/<tenant_id>/accounts")
@answers(AccountView, many=True)
def accounts_index(tenant_id: str):  # type: ignore[no-untyped-def]
    """Provider accounts (no secrets)."""
    return jsonify({"data": [account_to_dict(a) for a in list_accounts(db(), tenant_id)]})


@bp.post("/tenants/<tenant_id>/accounts")
@answers(AccountView, 201, body=_ACCOUNT_FIELDS)
def accounts_create(tenant_id: str):  # type: ignore[no-untyped-def]
    """Add a provider account (secrets are write-only)."""
    return jsonify(account_to_dict(_committed(add_account, tenant_id, json_body()))), 201


@bp.patch("/tenants/<tenant_id>/accounts/<account_id>")
@answers(AccountView, body=_ACCOUNT_FIELDS)
def accounts_update(tenant_id: str, account_id: str):  # type: ignore[no-untyped-def]
    """Rotate secrets, change settings."""
    account = _committed(update_account, tenant_id, account_id, json_body())
    return jsonify(account_to_dict(account))


@bp.delete("/tenants/<tenant_id>/accounts/<account_id>")
@answers(None, 204, errors={409: "Conflict"})
def accounts_delete(tenant_id: str, account_id: str):  # type: ignore[no-untyped-def]
    """Remove an account."""
    _committed(remove_account, tenant_id, account_id)
    return "", 204


@bp.get("/tenants/<tenant_id>/keys")
@answers(ApiKeyView, many=True)
def keys_index(tenant_id: str):  # type: ignore[no-untyped-def]
    """API keys (prefixes only)."""
    return jsonify({"data": [api_key_to_dict(k) for k in list_api_keys(db(), tenant_id)]})


@bp.post("/tenants/<tenant_id>/keys")
@answers(NewApiKeyView, 201, body=_KEY_NAME)
def keys_create(tenant_id: str):  # type: ignore[no-untyped-def]
    """Create a key (shown once)."""
    payload = json_body() if request.data else {}
    if not isinstance(payload, dict) or set(payload) - {"name", "type"}:
        raise InvalidRequest("The body is an optional JSON object with a 'name' and a 'type'.")
    made = _committed(
        create_tenant_key, tenant_id, payload.get("name"), payload.get("type", "live")
    )
    return jsonify(made), 201


@bp.delete("/tenants/<tenant_id>/keys/<key_id>")
@answers(ApiKeyView)
def keys_revoke(tenant_id: str, key_id: str):  # type: ignore[no-untyped-def]
    """Revoke a key."""
    return jsonify(api_key_to_dict(_committed(revoke_tenant_key, tenant_id, key_id)))


# ------------------------------------------------------ senders (services/tenancy/senders.py)


@bp.get("/tenants/<tenant_id>/senders")
@answers(SenderView, many=True)
def senders_index(tenant_id: str):  # type: ignore[no-untyped-def]
    """The tenant's senders: numbers, Messaging Services, Meta phone number ids."""
    return jsonify({"data": [sender_to_dict(s) for s in list_senders(db(), tenant_id)]})


@bp.post("/tenants/<tenant_id>/senders")
@answers(SenderView, 201, body=SenderSchema, errors={409: "Conflict"})
def senders_create(tenant_id: str):  # type: ignore[no-untyped-def]
    """Add a sender to one of the tenant's provider accounts."""
    return jsonify(sender_to_dict(_committed(add_sender, tenant_id, json_body()))), 201


@bp.patch("/tenants/<tenant_id>/senders/<sender_id>")
@answers(SenderView, body=SenderUpdateSchema)
def senders_update(tenant_id: str, sender_id: str):  # type: ignore[no-untyped-def]
    """Change a sender's channels, rate, label, or make it the default."""
    sender = _committed(update_sender, tenant_id, sender_id, json_body())
    return jsonify(sender_to_dict(sender))


@bp.delete("/tenants/<tenant_id>/senders/<sender_id>")
@answers(None, 204)
def senders_delete(tenant_id: str, sender_id: str):  # type: ignore[no-untyped-def]
    """Remove a sender (messages already accepted from it still go out from it)."""
    _committed(remove_sender, tenant_id, sender_id)
    return "", 204


# ------------------------------------------------------ erasure (services/privacy/erasure.py)


@bp.post("/erasures")
@answers(ErasureView, body=ADMIN_ERASURE_BODY)
def erasures_create():  # type: ignore[no-untyped-def]
    """Erase a person in every tenant (or in `tenant_id`'s only)."""
    number, tenant_id = load_request(json_body(), operator=True)
    return jsonify(_committed(erase_number, number, tenant_id).to_dict())
