"""`/admin/v1`: tenants, provider accounts and API keys, for an administrator without a shell.

Authenticated by `Authorization: Bearer <HERALD_ADMIN_TOKEN>`, compared in constant time.
With HERALD_ADMIN_TOKEN unset the whole prefix answers 404, as if it did not exist: an
admin surface is opt-in. The rules are the CLI's (services/tenant_admin.py); secrets
are write-only, and a new API key is shown once, in the answer that creates it.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, jsonify, request

from api.auth import db, json_body
from herald.config import get_settings
from services.errors import InvalidRequest, NotFound, Unauthorized
from services.tenant_admin import (
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

bp = Blueprint("admin", __name__, url_prefix="/admin/v1")


@bp.before_request
def _require_admin() -> None:
    expected = get_settings().admin_token
    if not expected:
        raise NotFound("The admin API is not enabled on this server.")
    header = request.headers.get("Authorization") or ""
    given = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("Send 'Authorization: Bearer <admin token>'.")


@bp.get("/tenants")
def tenants_index():  # type: ignore[no-untyped-def]
    return jsonify({"data": [tenant_to_dict(t) for t in list_tenants(db())]})


@bp.post("/tenants")
def tenants_create():  # type: ignore[no-untyped-def]
    session = db()
    created = create_tenant_with_key(session, load_tenant_request(json_body()))
    session.commit()
    return jsonify(created), 201


@bp.get("/tenants/<tenant_id>")
def tenants_show(tenant_id: str):  # type: ignore[no-untyped-def]
    return jsonify(tenant_to_dict(get_tenant(db(), tenant_id)))


@bp.patch("/tenants/<tenant_id>")
def tenants_update(tenant_id: str):  # type: ignore[no-untyped-def]
    session = db()
    tenant = update_tenant(session, tenant_id, load_tenant_request(json_body(), partial=True))
    session.commit()
    return jsonify(tenant_to_dict(tenant))


@bp.post("/tenants/<tenant_id>/disable")
def tenants_disable(tenant_id: str):  # type: ignore[no-untyped-def]
    session = db()
    tenant = set_tenant_disabled(session, tenant_id, True)
    session.commit()
    return jsonify(tenant_to_dict(tenant))


@bp.post("/tenants/<tenant_id>/enable")
def tenants_enable(tenant_id: str):  # type: ignore[no-untyped-def]
    session = db()
    tenant = set_tenant_disabled(session, tenant_id, False)
    session.commit()
    return jsonify(tenant_to_dict(tenant))


@bp.get("/tenants/<tenant_id>/accounts")
def accounts_index(tenant_id: str):  # type: ignore[no-untyped-def]
    return jsonify({"data": [account_to_dict(a) for a in list_accounts(db(), tenant_id)]})


@bp.post("/tenants/<tenant_id>/accounts")
def accounts_create(tenant_id: str):  # type: ignore[no-untyped-def]
    session = db()
    account = add_account(session, tenant_id, json_body())
    session.commit()
    return jsonify(account_to_dict(account)), 201


@bp.patch("/tenants/<tenant_id>/accounts/<account_id>")
def accounts_update(tenant_id: str, account_id: str):  # type: ignore[no-untyped-def]
    session = db()
    account = update_account(session, tenant_id, account_id, json_body())
    session.commit()
    return jsonify(account_to_dict(account))


@bp.delete("/tenants/<tenant_id>/accounts/<account_id>")
def accounts_delete(tenant_id: str, account_id: str):  # type: ignore[no-untyped-def]
    session = db()
    remove_account(session, tenant_id, account_id)
    session.commit()
    return "", 204


@bp.get("/tenants/<tenant_id>/keys")
def keys_index(tenant_id: str):  # type: ignore[no-untyped-def]
    return jsonify({"data": [api_key_to_dict(k) for k in list_api_keys(db(), tenant_id)]})


@bp.post("/tenants/<tenant_id>/keys")
def keys_create(tenant_id: str):  # type: ignore[no-untyped-def]
    session = db()
    payload = json_body() if request.data else {}
    if not isinstance(payload, dict) or set(payload) - {"name"}:
        raise InvalidRequest("The body is an optional JSON object with a 'name'.")
    created = create_tenant_key(session, tenant_id, payload.get("name"))
    session.commit()
    return jsonify(created), 201


@bp.delete("/tenants/<tenant_id>/keys/<key_id>")
def keys_revoke(tenant_id: str, key_id: str):  # type: ignore[no-untyped-def]
    session = db()
    row = revoke_tenant_key(session, tenant_id, key_id)
    session.commit()
    return jsonify(api_key_to_dict(row))
