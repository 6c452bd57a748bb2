"""`herald key list`, `herald account list` and `herald account update`: what the admin API
shows and changes of a tenant's keys and provider accounts, on the database like
`herald account add` (the rules are services/tenancy/admin.py's). Secrets are never
printed, and an update takes new secrets only from --secrets-file or --<field>-env."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from herald.cli_secrets import account_fields, add_secret_options, given_secrets, unused_secrets


def _run(work: Callable[[Any], Any]) -> int:
    """`work(session)` in one transaction, its JSON answer printed; a refusal is printed
    by herald.cli (its JSON on one line, exit 2)."""
    from herald import migrate
    from models import session_scope

    migrate.upgrade()
    with session_scope() as session:
        print(json.dumps(work(session), indent=2))
    return 0


def _key_list(args: argparse.Namespace) -> int:
    from services.tenancy.admin import api_key_to_dict, list_api_keys

    return _run(lambda s: [api_key_to_dict(k) for k in list_api_keys(s, args.tenant_id)])


def _account_list(args: argparse.Namespace) -> int:
    from services.tenancy.admin import account_to_dict, list_accounts

    return _run(lambda s: [account_to_dict(a) for a in list_accounts(s, args.tenant_id)])


def _account_update(args: argparse.Namespace) -> int:
    from services.tenancy.admin import account_to_dict, get_account, update_account

    secrets = given_secrets(args)

    def work(session: Any) -> dict[str, Any]:
        provider = get_account(session, args.tenant_id, args.account_id).provider
        values = account_fields(provider, args.fields, secrets)
        unused_secrets(secrets, [provider])
        return account_to_dict(update_account(session, args.tenant_id, args.account_id, values))

    return _run(work)


def register(key: Any, account: Any) -> None:
    """Add `key list` to the `key` subparsers and `account list|update` to `account`'s."""
    listing = key.add_parser("list", help="a tenant's API keys (ids and prefixes, never keys)")
    listing.add_argument("tenant_id")
    listing.set_defaults(func=_key_list)

    accounts = account.add_parser("list", help="a tenant's provider accounts (no secrets)")
    accounts.add_argument("tenant_id")
    accounts.set_defaults(func=_account_list)

    update = account.add_parser("update", help="change an account's settings or rotate its secrets")
    update.add_argument("tenant_id")
    update.add_argument("account_id")
    update.add_argument(
        "fields",
        nargs="*",
        help="key=value settings to change, secrets excepted: those come from "
        "--secrets-file or --<field>-env",
    )
    add_secret_options(update)
    update.set_defaults(func=_account_update)
