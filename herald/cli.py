"""The `herald` command-line tool: tenants, keys, provider accounts, migrations, the stack."""

from __future__ import annotations

import argparse
import json
import os
import sys

from herald import migrate
from herald.cli_secrets import (
    CliError,
    account_fields,
    add_secret_options,
    fail,
    given_secrets,
    unused_secrets,
)


def _tenant_create(args: argparse.Namespace) -> int:
    from models import session_scope
    from services.reporting.events import webhook_secret
    from services.tenancy.tenants import add_provider_account, create_api_key, create_tenant

    accounts = args.account or []
    secrets = given_secrets(args)
    specs = [(spec[0], account_fields(spec[0], spec[1:], secrets)) for spec in accounts]
    unused_secrets(secrets, [provider for provider, _ in specs])
    migrate.upgrade()
    with session_scope() as session:
        tenant = create_tenant(
            session,
            args.name,
            callback_url=args.callback_url,
            hourly_limit=args.hourly_limit,
            daily_limit=args.daily_limit,
        )
        for provider, values in specs:
            add_provider_account(session, tenant.id, provider, **values)
        key = create_api_key(session, tenant.id, name="cli")
        print(
            json.dumps(
                {"tenant_id": tenant.id, "api_key": key, "webhook_secret": webhook_secret(tenant)}
            )
        )
    return 0


def _account_add(args: argparse.Namespace) -> int:
    from models import session_scope
    from services.tenancy.tenants import add_provider_account

    provider = args.provider
    secrets = given_secrets(args)
    values = account_fields(provider, args.fields, secrets)
    unused_secrets(secrets, [provider])
    migrate.upgrade()
    with session_scope() as session:
        account = add_provider_account(session, args.tenant_id, provider, **values)
        print(json.dumps({"account_id": account.id, "provider": provider}))
    return 0


def _key_create(args: argparse.Namespace) -> int:
    from models import Tenant, session_scope
    from services.tenancy.admin import create_tenant_key

    with session_scope() as session:
        if session.get(Tenant, args.tenant_id) is None:
            raise CliError(f"no tenant {args.tenant_id}")
        made = create_tenant_key(session, args.tenant_id, args.name, args.type)
        # The key id is what `key list` shows and `key revoke` takes.
        print(
            json.dumps(
                {
                    "tenant_id": args.tenant_id,
                    "key_id": made["id"],
                    "type": made["type"],
                    "api_key": made["api_key"],
                }
            )
        )
    return 0


def _key_revoke(args: argparse.Namespace) -> int:
    from models import session_scope
    from services.tenancy.tenants import revoke_api_key

    with session_scope() as session:
        key_id = revoke_api_key(session, args.key_id)  # its id, or the key itself
    if key_id is None:
        named = "with that value" if args.key_id.startswith("hk_") else args.key_id
        raise CliError(f"no active API key {named}")  # a key itself is never echoed
    print(json.dumps({"revoked": True, "key_id": key_id}))
    return 0


def _inbound_unrouted(args: argparse.Namespace) -> int:
    from models import session_scope
    from services.callbacks.inbound import unrouted_inbound

    with session_scope() as session:
        for row in unrouted_inbound(session, args.limit):
            print(json.dumps(row))
    return 0


def _run(args: argparse.Namespace) -> int:
    from herald.stack import run_stack

    return run_stack()


def main(argv: list[str] | None = None) -> int:
    """Run one command; a failure is one line on stderr and exit code 2 (argparse's own
    usage errors included), never a traceback."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader gone (`| head`) shows here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    except Exception as exc:
        return fail(exc)


# What a shell reports for a program SIGPIPE ended (128 + 13): `herald status | head`
# stops quietly, as any filter does when its reader has read enough.
EXIT_PIPE_CLOSED = 141


def _reader_gone() -> int:
    """stdout's reader closed the pipe: no traceback, and nothing more written (stdout
    pointed at /dev/null, so Python's own flush at exit does not fail again)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor behind stdout
        pass
    return EXIT_PIPE_CLOSED


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="herald", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(
        func=lambda a: migrate.upgrade() or 0
    )
    sub.add_parser("run", help="run the whole stack in the foreground").set_defaults(func=_run)

    tenant = sub.add_parser("tenant", help="tenants").add_subparsers(dest="action", required=True)
    create = tenant.add_parser("create", help="create a tenant and print its first API key")
    create.add_argument("name")
    create.add_argument("--callback-url", help="where status events are POSTed")
    create.add_argument(
        "--hourly-limit", type=int, help="messages per hour (default 100; 0 = none)"
    )
    create.add_argument("--daily-limit", type=int, help="messages per day (default 1000; 0 = none)")
    create.add_argument(
        "--account",
        nargs="+",
        action="append",
        metavar="FIELD",
        help="PROVIDER key=value... without secrets: e.g. twilio account_sid=AC… "
        "sms_from=+1… (repeatable; secrets by --secrets-file or --<field>-env)",
    )
    add_secret_options(create)
    create.set_defaults(func=_tenant_create)

    from herald.cli_commands import register

    register(sub, tenant)

    from herald.cli_senders import register as register_senders

    register_senders(sub)  # herald sender add|list|remove|default

    from herald.cli_secrets import register as register_secrets

    register_secrets(sub)  # herald secrets rotate

    from herald.cli_retention import register as register_retention

    register_retention(sub)  # herald retention show|set|purge
    from herald.cli_privacy import register as register_privacy

    register_privacy(sub)  # herald erase

    account = sub.add_parser("account", help="provider accounts").add_subparsers(
        dest="action", required=True
    )
    add = account.add_parser("add", help="attach provider credentials to a tenant")
    add.add_argument("tenant_id")
    add.add_argument("provider", choices=["twilio", "meta"])
    add.add_argument(
        "fields",
        nargs="+",
        help="key=value, secrets excepted: those come from --secrets-file or --<field>-env "
        "(encrypted at rest)",
    )
    add_secret_options(add)
    add.set_defaults(func=_account_add)

    key = sub.add_parser("key", help="API keys").add_subparsers(dest="action", required=True)
    kc = key.add_parser("create", help="create a key; prints its id and the key (shown once)")
    kc.add_argument("tenant_id")
    kc.add_argument("--name", help="a label shown by `key list`")
    kc.add_argument(
        "--type",
        choices=("live", "test"),
        default="live",
        help="test: a key whose messages go to the built-in simulator, never to a provider",
    )
    kc.set_defaults(func=_key_create)
    kr = key.add_parser("revoke", help="revoke a key, named by its id (key_…) or the key itself")
    kr.add_argument("key_id", metavar="KEY")
    kr.set_defaults(func=_key_revoke)

    from herald.cli_accounts import register as register_accounts

    register_accounts(key, account)  # herald key list, herald account list|update

    inbound = sub.add_parser("inbound", help="inbound messages").add_subparsers(
        dest="action", required=True
    )
    unrouted = inbound.add_parser(
        "unrouted", help="list inbound messages kept for no tenant (newest first, JSON lines)"
    )
    unrouted.add_argument("--limit", type=int, default=100)
    unrouted.set_defaults(func=_inbound_unrouted)

    args = parser.parse_args(argv)
    if args.command == "run" or os.environ.get("DATABASE_URL"):
        return int(args.func(args) or 0)
    return _with_embedded_database(args)


def _with_embedded_database(args: argparse.Namespace) -> int:
    """Run a command on HERALD_HOME's embedded server: the one `make run` keeps up,
    or one started for this command and stopped after it."""
    from core.config import get_settings
    from herald.postgres import embedded

    with embedded(get_settings().home) as url:
        os.environ["DATABASE_URL"] = url
        get_settings.cache_clear()
        if args.command != "migrate":
            migrate.upgrade()  # a first command on a fresh HERALD_HOME
        return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
