"""`herald retention show|set|purge`: how long a tenant's content is kept, and a purge
run by hand (beat runs it hourly). The rules are services/lifecycle/'s, the admin API's
too."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _days(value: str) -> int | None:
    """`default` or a whole number of days (its range is checked by the service)."""
    if value == "default":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number of days, or 'default'") from None


def _show(args: argparse.Namespace) -> int:
    from herald import migrate
    from models import Tenant, session_scope
    from services.lifecycle.retention import retention_to_dict

    migrate.upgrade()
    with session_scope() as session:
        tenant = session.get(Tenant, args.tenant_id)
        if tenant is None:
            from core.errors import NotFound

            raise NotFound(f"No tenant {args.tenant_id!r}.")
        print(json.dumps(retention_to_dict(tenant), indent=2))
    return 0


def _set(args: argparse.Namespace) -> int:
    from herald import migrate
    from models import session_scope
    from services.lifecycle.retention import retention_to_dict, set_retention

    migrate.upgrade()
    with session_scope() as session:
        print(json.dumps(retention_to_dict(set_retention(session, args.tenant_id, args.days))))
    return 0


def _purge(args: argparse.Namespace) -> int:
    from herald import migrate
    from services.lifecycle.purge import purge_all

    migrate.upgrade()
    print(json.dumps(purge_all(max_seconds=args.max_seconds)))
    return 0


def register(sub: Any) -> None:
    """Add `herald retention …` to the CLI's subparsers."""
    retention = sub.add_parser("retention", help="how long tenants' content is kept")
    actions = retention.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", help="a tenant's retention (and the default)")
    show.add_argument("tenant_id")
    show.set_defaults(func=_show)
    setting = actions.add_parser("set", help="days a tenant's content is kept")
    setting.add_argument("tenant_id")
    setting.add_argument("days", type=_days, help="whole days (3-400), or 'default'")
    setting.set_defaults(func=_set)
    purge = actions.add_parser("purge", help="purge content past retention now")
    purge.add_argument("--max-seconds", type=float, default=300.0)
    purge.set_defaults(func=_purge)
