"""`/admin/v1`: tenants, provider accounts and API keys, for an administrator without a shell.

Authenticated by `Authorization: Bearer <HERALD_ADMIN_TOKEN>`, compared in constant time.
With HERALD_ADMIN_TOKEN unset the whole prefix answers 404, as if it did not exist: an
admin surface is opt-in. The rules are the CLI's (services/tenancy/admin.py); secrets
are write-only, and a new API key is shown once, in the answer that creates it.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, jsonify, request

from api.auth import db, json_body
from core.config import get_settings
from core.errors import InvalidRequest, NotFound, Unauthorized
from services.tenancy.admin import (
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
    add_sender,
    list_senders,
    remove_sender,
    sender_to_dict,
    update_sender,
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
    """List tenants.
    ---
    get:
      summary: List tenants
      responses:
        200: {description: "List tenants", content: {application/json: {schema: {type: object}}}}
    """
    return jsonify({"data": [tenant_to_dict(t) for t in list_tenants(db())]})


@bp.post("/tenants")
def tenants_create():  # type: ignore[no-untyped-def]
    """Create a tenant (and accounts); answers its first API key and webhook secret.
    ---
    post:
      summary: Create a tenant (and accounts); answers its first API key and webhook secret
      requestBody:
        content: {application/json: {schema: TenantSchema}}
      responses:
        201:
          description: Create a tenant (and accounts); answers its first API key and webhook secret
          content:
            application/json:
              schema: {type: object}
        400: Invalid
    """
    session = db()
    created = create_tenant_with_key(session, load_tenant_request(json_body()))
    session.commit()
    return jsonify(created), 201


@bp.get("/tenants/<tenant_id>")
def tenants_show(tenant_id: str):  # type: ignore[no-untyped-def]
    """A tenant.
    ---
    get:
      summary: A tenant
      responses:
        200: {description: "A tenant", content: {application/json: {schema: {type: object}}}}
        404: NotFound
    """
    return jsonify(tenant_to_dict(get_tenant(db(), tenant_id)))


@bp.patch("/tenants/<tenant_id>")
def tenants_update(tenant_id: str):  # type: ignore[no-untyped-def]
    """Change name, limits or callback URL.
    ---
    patch:
      summary: Change name, limits or callback URL
      requestBody:
        content: {application/json: {schema: TenantSchema}}
      responses:
        200:
          description: Change name, limits or callback URL
          content:
            application/json:
              schema: {type: object}
        400: Invalid
        404: NotFound
    """
    session = db()
    tenant = update_tenant(session, tenant_id, load_tenant_request(json_body(), partial=True))
    session.commit()
    return jsonify(tenant_to_dict(tenant))


@bp.post("/tenants/<tenant_id>/disable")
def tenants_disable(tenant_id: str):  # type: ignore[no-untyped-def]
    """Refuse the tenant's keys.
    ---
    post:
      summary: Refuse the tenant's keys
      responses:
        200:
          description: Refuse the tenant's keys
          content:
            application/json:
              schema: {type: object}
        404: NotFound
    """
    session = db()
    tenant = set_tenant_disabled(session, tenant_id, True)
    session.commit()
    return jsonify(tenant_to_dict(tenant))


@bp.post("/tenants/<tenant_id>/enable")
def tenants_enable(tenant_id: str):  # type: ignore[no-untyped-def]
    """Accept the tenant's keys again.
    ---
    post:
      summary: Accept the tenant's keys again
      responses:
        200:
          description: Accept the tenant's keys again
          content:
            application/json:
              schema: {type: object}
        404: NotFound
    """
    session = db()
    tenant = set_tenant_disabled(session, tenant_id, False)
    session.commit()
    return jsonify(tenant_to_dict(tenant))


@bp.get("/tenants/<tenant_id>/accounts")
def accounts_index(tenant_id: str):  # type: ignore[no-untyped-def]
    """Provider accounts (no secrets).
    ---
    get:
      summary: Provider accounts (no secrets)
      responses:
        200:
          description: Provider accounts (no secrets)
          content:
            application/json:
              schema: {type: object}
        404: NotFound
    """
    return jsonify({"data": [account_to_dict(a) for a in list_accounts(db(), tenant_id)]})


@bp.post("/tenants/<tenant_id>/accounts")
def accounts_create(tenant_id: str):  # type: ignore[no-untyped-def]
    """Add a provider account (secrets are write-only).
    ---
    post:
      summary: Add a provider account (secrets are write-only)
      requestBody:
        content: {application/json: {schema: {type: object}}}
      responses:
        201:
          description: Add a provider account (secrets are write-only)
          content:
            application/json:
              schema: {type: object}
        400: Invalid
        404: NotFound
    """
    session = db()
    account = add_account(session, tenant_id, json_body())
    session.commit()
    return jsonify(account_to_dict(account)), 201


@bp.patch("/tenants/<tenant_id>/accounts/<account_id>")
def accounts_update(tenant_id: str, account_id: str):  # type: ignore[no-untyped-def]
    """Rotate secrets, change settings.
    ---
    patch:
      summary: Rotate secrets, change settings
      requestBody:
        content: {application/json: {schema: {type: object}}}
      responses:
        200:
          description: Rotate secrets, change settings
          content:
            application/json:
              schema: {type: object}
        400: Invalid
        404: NotFound
    """
    session = db()
    account = update_account(session, tenant_id, account_id, json_body())
    session.commit()
    return jsonify(account_to_dict(account))


@bp.delete("/tenants/<tenant_id>/accounts/<account_id>")
def accounts_delete(tenant_id: str, account_id: str):  # type: ignore[no-untyped-def]
    """Remove an account.
    ---
    delete:
      summary: Remove an account
      responses:
        204: {description: Remove an account}
        404: NotFound
        409: Conflict
    """
    session = db()
    remove_account(session, tenant_id, account_id)
    session.commit()
    return "", 204


@bp.get("/tenants/<tenant_id>/keys")
def keys_index(tenant_id: str):  # type: ignore[no-untyped-def]
    """API keys (prefixes only).
    ---
    get:
      summary: API keys (prefixes only)
      responses:
        200:
          description: API keys (prefixes only)
          content:
            application/json:
              schema: {type: object}
        404: NotFound
    """
    return jsonify({"data": [api_key_to_dict(k) for k in list_api_keys(db(), tenant_id)]})


@bp.post("/tenants/<tenant_id>/keys")
def keys_create(tenant_id: str):  # type: ignore[no-untyped-def]
    """Create a key (shown once).
    ---
    post:
      summary: Create a key (shown once)
      requestBody:
        content:
          application/json:
            schema:
              type: object
              properties:
                name: {type: string}
              additionalProperties: false
      responses:
        201:
          description: Create a key (shown once)
          content:
            application/json:
              schema: {type: object}
        400: Invalid
        404: NotFound
    """
    session = db()
    payload = json_body() if request.data else {}
    if not isinstance(payload, dict) or set(payload) - {"name"}:
        raise InvalidRequest("The body is an optional JSON object with a 'name'.")
    created = create_tenant_key(session, tenant_id, payload.get("name"))
    session.commit()
    return jsonify(created), 201


@bp.delete("/tenants/<tenant_id>/keys/<key_id>")
def keys_revoke(tenant_id: str, key_id: str):  # type: ignore[no-untyped-def]
    """Revoke a key.
    ---
    delete:
      summary: Revoke a key
      responses:
        200: {description: "Revoke a key", content: {application/json: {schema: {type: object}}}}
        404: NotFound
    """
    session = db()
    row = revoke_tenant_key(session, tenant_id, key_id)
    session.commit()
    return jsonify(api_key_to_dict(row))


# ------------------------------------------------------ senders (services/tenancy/senders.py)


@bp.get("/tenants/<tenant_id>/senders")
def senders_index(tenant_id: str):  # type: ignore[no-untyped-def]
    """The tenant's senders: numbers, Messaging Services, Meta phone number ids.
    ---
    get:
      summary: The tenant's senders
      responses:
        200:
          description: The tenant's senders
          content: {application/json: {schema: {type: object}}}
        404: NotFound
    """
    return jsonify({"data": [sender_to_dict(s) for s in list_senders(db(), tenant_id)]})


@bp.post("/tenants/<tenant_id>/senders")
def senders_create(tenant_id: str):  # type: ignore[no-untyped-def]
    """Add a sender to one of the tenant's provider accounts.
    ---
    post:
      summary: Add a sender to one of the tenant's provider accounts
      requestBody:
        content: {application/json: {schema: SenderSchema}}
      responses:
        201:
          description: Add a sender
          content:
            application/json:
              schema: {type: object}
        400: Invalid
        404: NotFound
        409: Conflict
    """
    session = db()
    sender = add_sender(session, tenant_id, json_body())
    session.commit()
    return jsonify(sender_to_dict(sender)), 201


@bp.patch("/tenants/<tenant_id>/senders/<sender_id>")
def senders_update(tenant_id: str, sender_id: str):  # type: ignore[no-untyped-def]
    """Change a sender's channels, rate, label, or make it the default.
    ---
    patch:
      summary: Change a sender's channels, rate, label, or make it the default
      requestBody:
        content: {application/json: {schema: SenderUpdateSchema}}
      responses:
        200:
          description: The sender
          content:
            application/json:
              schema: {type: object}
        400: Invalid
        404: NotFound
    """
    session = db()
    sender = update_sender(session, tenant_id, sender_id, json_body())
    session.commit()
    return jsonify(sender_to_dict(sender))


@bp.delete("/tenants/<tenant_id>/senders/<sender_id>")
def senders_delete(tenant_id: str, sender_id: str):  # type: ignore[no-untyped-def]
    """Remove a sender (messages already accepted from it still go out from it).
    ---
    delete:
      summary: Remove a sender
      responses:
        204: {description: Removed}
        404: NotFound
    """
    session = db()
    remove_sender(session, tenant_id, sender_id)
    session.commit()
    return "", 204
