"""`herald erase --phone +… | --wa-id … | --user-id US.… [--tenant ten_…]`: an operator
erases a person, in every tenant or in one (the rules are services/privacy/erasure.py's,
the admin API's too). Prints what was erased, rows per table; the number itself is never printed."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _erase(args: argparse.Namespace) -> int:
    from herald import migrate
    from models import session_scope
    from services.privacy.erasure import erase_number, load_request

    request: dict[str, Any] = (
        {"phone": args.phone}
        if args.phone
        else {"wa_id": args.wa_id}
        if args.wa_id
        else {"user_id": args.user_id}
    )
    if args.tenant:
        request["tenant_id"] = args.tenant
    number, tenant_id = load_request(request, operator=True)
    migrate.upgrade()
    with session_scope() as session:
        done = erase_number(session, number, tenant_id)
    print(json.dumps(done.to_dict(), indent=2))
    return 0


def register(sub: Any) -> None:
    """Add `herald erase` to the CLI's subparsers."""
    erase = sub.add_parser(
        "erase",
        help="erase a person (number, name, texts) in every tenant or one; keeps an opt-out",
    )
    who = erase.add_mutually_exclusive_group(required=True)
    who.add_argument("--phone", help="the number, E.164 (+12025550143)")
    who.add_argument("--wa-id", help="a WhatsApp id (digits, country code first)")
    who.add_argument(
        "--user-id", help="a WhatsApp business-scoped user id (BSUID, US.1349…), as Meta gave it"
    )
    erase.add_argument("--tenant", help="only this tenant's rows (default: every tenant)")
    erase.set_defaults(func=_erase)
