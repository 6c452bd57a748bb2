"""The admin API's part of /openapi.json (`/admin/v1`, bearer HERALD_ADMIN_TOKEN)."""

from __future__ import annotations

import re
from typing import Any

_error = {"$ref": "#/components/schemas/Error"}
_OFF = {
    "description": "The admin API is off (HERALD_ADMIN_TOKEN unset)",
    "content": {"application/json": {"schema": _error}},
}


def _op(
    summary: str, ok: str, *, codes: tuple[str, ...] = (), body: bool = False
) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: {"description": summary}}
    for code in ("401", *codes):
        responses[code] = {"description": code, "content": {"application/json": {"schema": _error}}}
    responses.setdefault("404", _OFF)
    op: dict[str, Any] = {"tags": ["admin"], "summary": summary, "responses": responses}
    if body:
        op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
    return op


_T = "/admin/v1/tenants/{tenant_id}"
ADMIN_PATHS: dict[str, Any] = {
    "/admin/v1/tenants": {
        "get": _op("List tenants", "200"),
        "post": _op(
            "Create a tenant (and accounts); answers its first API key and webhook secret",
            "201",
            codes=("400", "413"),
            body=True,
        ),
    },
    _T: {
        "get": _op("A tenant", "200", codes=("404",)),
        "patch": _op("Change name, limits or callback URL", "200", codes=("400", "404"), body=True),
    },
    f"{_T}/disable": {"post": _op("Refuse the tenant's keys", "200", codes=("404",))},
    f"{_T}/enable": {"post": _op("Accept the tenant's keys again", "200", codes=("404",))},
    f"{_T}/accounts": {
        "get": _op("Provider accounts (no secrets)", "200", codes=("404",)),
        "post": _op("Add a provider account", "201", codes=("400", "404"), body=True),
    },
    f"{_T}/accounts/{{account_id}}": {
        "patch": _op("Rotate secrets, change settings", "200", codes=("400", "404"), body=True),
        "delete": _op("Remove an account", "204", codes=("404", "409")),
    },
    f"{_T}/keys": {
        "get": _op("API keys (prefixes only)", "200", codes=("404",)),
        "post": _op("Create a key (shown once)", "201", codes=("400", "404"), body=True),
    },
    f"{_T}/keys/{{key_id}}": {"delete": _op("Revoke a key", "200", codes=("404",))},
}


def _with_path_parameters(paths: dict[str, Any]) -> dict[str, Any]:
    """Declare each `{name}` of a path as a required string parameter of its path item."""
    for path, item in paths.items():
        names = re.findall(r"{(\w+)}", path)
        if names:
            item["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in names
            ]
    return paths


_with_path_parameters(ADMIN_PATHS)
