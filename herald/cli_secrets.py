"""Provider secrets for `herald tenant create --account` and `herald account add`, read
from a file, stdin or the environment, never from the command line; and the one way
every `herald` command fails.

A secret typed as an argument sits in `ps` for any local user to read and in the shell's
history file afterwards, so a secret field given as `key=value` is refused. It comes
instead from `--secrets-file PATH` (`key=value` lines; `-` reads them from stdin) or from
`--<field>-env NAME` (the variable NAME, e.g. `--auth-token-env TWILIO_AUTH_TOKEN`).

A failing command prints one line on stderr and exits 2: never a traceback, which for a
database error would show the statement's parameters (an account's encrypted secrets).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_ERROR = 2


class CliError(Exception):
    """A command failed; its message is the one line the user sees."""


def secret_fields() -> dict[str, set[str]]:
    """Each provider's secret fields (services/tenancy/tenants.py encrypts those)."""
    from services.tenancy.tenants import PROVIDER_FIELDS

    return {provider: set(fields[1]) for provider, fields in PROVIDER_FIELDS.items()}


def _env_flag(field: str) -> str:
    return f"--{field.replace('_', '-')}-env"


def add_secret_options(parser: argparse.ArgumentParser) -> None:
    """`--secrets-file` and one `--<field>-env NAME` per secret field."""
    parser.add_argument(
        "--secrets-file",
        metavar="PATH",
        help="secret fields as key=value lines (e.g. auth_token=…); '-' reads them from stdin",
    )
    for field in sorted(set().union(*secret_fields().values())):
        parser.add_argument(
            _env_flag(field),
            dest=f"{field}_env",
            metavar="NAME",
            help=f"read {field} from the environment variable NAME",
        )


def _read_file(path: str) -> dict[str, str]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read --secrets-file {path}: {exc.__class__.__name__}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        field, sep, value = line.partition("=")
        if not sep or not field.strip():
            # The line itself is not shown: it may be a secret.
            raise CliError(f"--secrets-file {path}, line {number}: not key=value")
        values[field.strip()] = value.strip()
    return values


def given_secrets(args: argparse.Namespace) -> dict[str, str]:
    """The secret fields given by --secrets-file and the --<field>-env options."""
    known = set().union(*secret_fields().values())
    values = _read_file(args.secrets_file) if args.secrets_file else {}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CliError(
            f"--secrets-file holds {', '.join(unknown)}: not a secret field "
            f"(secret fields: {', '.join(sorted(known))}; the others go on the command line)"
        )
    for field in sorted(known):
        name = getattr(args, f"{field}_env", None)
        if name:
            value = os.environ.get(name)
            if not value:
                raise CliError(f"{_env_flag(field)}: the environment variable {name} is not set")
            values[field] = value
    return values


def account_fields(provider: str, pairs: list[str], secrets: dict[str, str]) -> dict[str, str]:
    """An account's fields: the non-secret `key=value` pairs, and its provider's secrets
    from `secrets`. A secret among the pairs is refused."""
    own = secret_fields().get(provider, set())
    every = set().union(*secret_fields().values())
    values: dict[str, str] = {}
    for number, pair in enumerate(pairs, start=1):
        field, sep, value = pair.partition("=")
        if not sep:  # not echoed: it may be a secret typed without its key
            raise CliError(f"{provider} account field {number} is not key=value")
        if field in every:
            raise CliError(
                f"{field} was given on the command line, where ps and the shell's history "
                f"keep it: give it with --secrets-file PATH (or - for stdin) or "
                f"{_env_flag(field)} NAME (docs/tenants.md)"
            )
        values[field] = value
    values.update({k: v for k, v in secrets.items() if k in own})
    return values


def unused_secrets(secrets: dict[str, str], providers: list[str]) -> None:
    """Refuse secrets that none of the accounts being added takes (a typo, or the wrong
    provider), rather than dropping them silently."""
    taken = set().union(*(secret_fields().get(p, set()) for p in providers))
    extra = sorted(set(secrets) - taken)
    if extra:
        raise CliError(f"{', '.join(extra)} given, but no account being added takes it")


def describe(exc: BaseException) -> str:
    """The one line an error is shown as: never a statement's parameters or a traceback."""
    from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

    from core.config import ConfigError
    from core.errors import HeraldError

    if isinstance(exc, HeraldError):
        return json.dumps(exc.to_dict())
    if isinstance(exc, CliError | ConfigError):
        return f"herald: {exc}"
    if isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return f"herald: the database cannot be reached: {_first_line(exc.orig)}"
    if isinstance(exc, DBAPIError):
        return f"herald: the database refused the change: {_first_line(exc.orig)}"
    if isinstance(exc, SQLAlchemyError):
        return f"herald: database error ({type(exc).__name__})"
    return f"herald: {type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException | None) -> str:
    text = str(exc or "").strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def fail(exc: BaseException) -> int:
    """Print `exc` as its one line on stderr; the exit code of a failed command."""
    print(describe(exc), file=sys.stderr, flush=True)
    return EXIT_ERROR


def rotate(args: argparse.Namespace) -> int:
    """`herald secrets rotate`: every stored secret re-encrypted with HERALD_SECRET_KEY."""
    from herald import migrate
    from models import session_scope
    from services.tenancy.secrets import rotate_stored_secrets

    migrate.upgrade()
    with session_scope() as session:
        done, unreadable = rotate_stored_secrets(session)
    print(json.dumps({"reencrypted": done, "unreadable": unreadable}))
    if unreadable:
        raise CliError(
            f"{len(unreadable)} rows decrypt with neither HERALD_SECRET_KEY nor "
            f"HERALD_SECRET_KEY_PREVIOUS (first: {', '.join(unreadable[:5])}); left as they are"
        )
    return 0


def register(sub: Any) -> None:
    """Add `herald secrets rotate` to the CLI's subparsers."""
    group = sub.add_parser("secrets", help="encryption of stored secrets").add_subparsers(
        dest="action", required=True
    )
    group.add_parser(
        "rotate",
        help="re-encrypt every stored secret with HERALD_SECRET_KEY (after changing it, "
        "with the former one in HERALD_SECRET_KEY_PREVIOUS)",
    ).set_defaults(func=rotate)
