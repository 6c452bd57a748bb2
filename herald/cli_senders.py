"""`herald sender add|list|remove|default`: a tenant's senders, on the database like
`herald account add` (the rules are services/tenancy/senders.py's, the admin API's too)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def _run(work: Callable[[Any], Any]) -> int:
    """Run `work(session)` in one transaction and print its JSON answer; a refusal is
    printed by herald.cli (its JSON on one line, exit 2)."""
    from herald import migrate
    from models import session_scope

    migrate.upgrade()
    with session_scope() as session:
        answer = work(session)
        print(json.dumps(answer, indent=2))
    return 0


def _add(args: argparse.Namespace) -> int:
    from services.tenancy.sender_admin import add_sender, sender_to_dict

    payload: dict[str, Any] = {"provider": args.provider, "address": args.address}
    for field in ("kind", "account_id", "number", "mps", "label", "priority"):
        if getattr(args, field) is not None:
            payload[field] = getattr(args, field)
    if args.channel:
        payload["channels"] = args.channel
    if args.default:
        payload["is_default"] = True
    return _run(lambda s: sender_to_dict(add_sender(s, args.tenant_id, payload)))


def _list(args: argparse.Namespace) -> int:
    from services.tenancy.sender_admin import list_senders, sender_to_dict

    return _run(lambda s: [sender_to_dict(x) for x in list_senders(s, args.tenant_id)])


def _remove(args: argparse.Namespace) -> int:
    from services.tenancy.sender_admin import remove_sender

    def work(session: Any) -> dict[str, Any]:
        remove_sender(session, args.tenant_id, args.sender_id)
        return {"removed": args.sender_id}

    return _run(work)


def _default(args: argparse.Namespace) -> int:
    from services.tenancy.sender_admin import sender_to_dict, set_default

    return _run(lambda s: sender_to_dict(set_default(s, args.tenant_id, args.sender_id)))


def register(sub: Any) -> None:
    """Add `herald sender …` to the CLI's subparsers."""
    sender = sub.add_parser("sender", help="a tenant's senders (numbers, services, phone ids)")
    actions = sender.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a sender to one of the tenant's provider accounts")
    add.add_argument("tenant_id")
    add.add_argument("provider", choices=["twilio", "meta"])
    add.add_argument("address", help="E.164 number, MG… Messaging Service SID, phone number id")
    add.add_argument("--kind", choices=["number", "messaging_service", "phone_number_id"])
    add.add_argument("--account-id", help="which account (when the tenant has several)")
    add.add_argument("--number", help="the display number of a Meta phone number id")
    add.add_argument("--channel", action="append", choices=["sms", "whatsapp"], help="repeatable")
    add.add_argument("--mps", type=float, help="messages per second for this sender")
    add.add_argument("--label")
    add.add_argument(
        "--priority",
        type=int,
        help="provider failover: its place (1 first) among the tenant's senders of a channel",
    )
    add.add_argument("--default", action="store_true", help="the default for its channels")
    add.set_defaults(func=_add)
    listing = actions.add_parser("list", help="print the tenant's senders")
    listing.add_argument("tenant_id")
    listing.set_defaults(func=_list)
    remove = actions.add_parser("remove", help="remove a sender")
    remove.add_argument("tenant_id")
    remove.add_argument("sender_id")
    remove.set_defaults(func=_remove)
    default = actions.add_parser("default", help="make a sender the default for its channels")
    default.add_argument("tenant_id")
    default.add_argument("sender_id")
    default.set_defaults(func=_default)
