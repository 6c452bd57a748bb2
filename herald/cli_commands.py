"""More `herald` commands: `send`, `status`, `tail` (a tenant's client, over HTTP) and
`tenant list` / `tenant update` (administration, on the database like `tenant create`).

`send`, `status` and `tail` talk to a running Herald API with a tenant's API key
(`--key` or HERALD_API_KEY; `--url` or HERALD_API_URL, default the local API), so they
follow exactly the path a client's request takes and see only that tenant's data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import httpx

from herald.cli_secrets import EXIT_ERROR, CliError

_UNSET = object()  # an option not given (None means "the deployment's default")

# Tests route the client to an in-process app (httpx.WSGITransport); None = the network.
transport: httpx.BaseTransport | None = None


def _client(args: argparse.Namespace) -> httpx.Client:
    key = args.key or os.environ.get("HERALD_API_KEY")
    if not key:
        raise CliError("give --key or set HERALD_API_KEY (a tenant's API key)")
    url = args.url or os.environ.get("HERALD_API_URL")
    url = url or f"http://127.0.0.1:{os.environ.get('PORT') or 8000}"
    return httpx.Client(
        base_url=url.rstrip("/"),
        headers={"Authorization": f"Bearer {key}"},
        timeout=10.0,
        transport=transport,
    )


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        return client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {client.base_url}: {type(exc).__name__}") from None


def _print_answer(response: httpx.Response) -> int:
    """The answer's JSON on stdout when it succeeded, on one line of stderr otherwise
    (exit 2, as every failed command)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = {"status": response.status_code, "body": response.text[:500]}
    if response.is_success:
        print(json.dumps(body, indent=2))
        return 0
    print(json.dumps(body), file=sys.stderr)
    return EXIT_ERROR


def _send(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"to": args.to, "channel": args.channel}
    if args.provider:
        payload["provider"] = args.provider
    if args.body is not None:
        payload["body"] = args.body
    if args.media_url:
        payload["media_url"] = args.media_url
    if args.template:
        template: dict[str, Any] = {"name": args.template, "language": args.language}
        if args.var:
            template["variables"] = args.var
        payload["template"] = template
    if args.send_at:
        payload["send_at"] = args.send_at
    if args.ttl is not None:
        payload["ttl"] = args.ttl
    if args.from_:  # senders
        payload["from"] = args.from_
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with _client(args) as client:
        return _print_answer(_call(client, "POST", "/v1/messages", json=payload, headers=headers))


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _print_answer(_call(client, "GET", f"/v1/messages/{args.message_id}"))


def _line(message: dict[str, Any], as_json: bool) -> str:
    number = message.get("from") if message.get("direction") == "inbound" else message.get("to")
    if as_json:
        return json.dumps(
            {
                "at": message.get("updated_at"),
                "id": message["id"],
                "status": message["status"],
                "channel": message.get("channel"),
                "provider": message.get("provider"),
                "direction": message.get("direction"),
                "number": number,
                "error": (message.get("error") or {}).get("code"),
            }
        )
    error = (message.get("error") or {}).get("code")
    return (
        f"{message.get('updated_at')}  {message['id']}  {message['status']:<11} "
        f"{message.get('channel')}/{message.get('provider')}  "
        f"{'from' if message.get('direction') == 'inbound' else 'to'} {number}"
        + (f"  ({error})" if error else "")
    )


# Answers a poll rides through (the API restarting, a proxy's blip, the read rate): wait
# and poll again. Any other failure (a revoked key, say) ends `tail` with its error.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF = 30.0  # seconds: the longest wait between two failed polls


def _retry_after(response: httpx.Response | None) -> float | None:
    value = response.headers.get("Retry-After", "") if response is not None else ""
    return float(value) if value.isdigit() else None


def _tail(args: argparse.Namespace) -> int:
    """Poll the newest messages; print each new message and each change of status.

    Follows the newest 200 messages of the tenant: a change to an older one (deep in a
    large campaign) is not shown. A poll that fails transiently (connection reset or
    refused, 429/502/503/504) is retried after Retry-After or a backoff doubling from
    --interval up to MAX_BACKOFF, with one line on stderr when it starts and when it
    is over; any other error answer ends the command with that error."""
    seen: dict[str, str] = {}
    polls = 0
    failing = 0
    with _client(args) as client:
        try:
            while True:
                try:
                    response = client.get("/v1/messages", params={"limit": 200})
                except httpx.TransportError as exc:
                    response, reason = None, type(exc).__name__
                else:
                    reason = str(response.status_code)
                if response is None or response.status_code in TRANSIENT_STATUSES:
                    failing += 1
                    wait = _retry_after(response) or min(
                        MAX_BACKOFF, max(args.interval, 0.5) * 2 ** (failing - 1)
                    )
                    if failing == 1:
                        print(f"herald: {reason} from the API; retrying", file=sys.stderr)
                    time.sleep(wait)
                    continue
                if failing:
                    print(
                        f"herald: the API answers again after {failing} failed polls",
                        file=sys.stderr,
                    )
                    failing = 0
                if not response.is_success:
                    return _print_answer(response)
                rows = list(reversed(response.json()["data"]))  # oldest first
                fresh = [m for m in rows if seen.get(m["id"]) != m["status"]]
                if polls == 0:
                    fresh = fresh[-args.lines :] if args.lines else []
                for message in fresh:
                    print(_line(message, args.json), flush=True)
                seen.update({m["id"]: m["status"] for m in rows})
                polls += 1
                if args.polls and polls >= args.polls:
                    return 0
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def _json_object(value: str) -> dict[str, Any] | None:
    """`--keywords`, `--keyword-replies`, `--sms-prices`: a JSON object (checked by the
    tenant schema) or null."""
    try:
        parsed = json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a JSON object, or null") from None
    if parsed is not None and not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("a JSON object, or null")
    return parsed


def _countries(value: str) -> list[str] | None:
    """`--sms-countries`: comma-separated ISO codes (checked by the tenant schema), or
    'default'."""
    if value == "default":
        return None
    return [code.strip().upper() for code in value.split(",") if code.strip()]


def _segments_cap(value: str) -> int | None:
    """`--sms-max-segments`: a count of at least 1, or 'none' (no cap)."""
    if value == "none":
        return None
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a number of segments or 'none'") from None
    if count < 1:
        raise argparse.ArgumentTypeError("at least 1, or 'none'")
    return count


def _limit(value: str) -> int | None:
    if value == "default":
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("an integer (0 = unlimited) or 'default'") from None
    if number < 0:
        raise argparse.ArgumentTypeError("at least 0 (0 = unlimited)")
    return number


def _tenant_list(args: argparse.Namespace) -> int:
    from herald import migrate
    from models import session_scope
    from services.tenancy.admin import list_tenants, tenant_to_dict

    migrate.upgrade()
    with session_scope() as session:
        print(json.dumps([tenant_to_dict(t) for t in list_tenants(session)], indent=2))
    return 0


def _tenant_update(args: argparse.Namespace) -> int:
    from herald import migrate
    from models import session_scope
    from services.tenancy.admin import (
        load_tenant_request,
        set_tenant_disabled,
        tenant_to_dict,
        update_tenant,
    )

    changes: dict[str, Any] = {}
    if args.name is not None:
        changes["name"] = args.name
    if args.callback_url is not None:
        changes["callback_url"] = args.callback_url or None
    for field in (
        "hourly_limit",
        "daily_limit",
        "sms_max_segments",
        "sms_countries",
        "international_daily_limit",
    ):
        if getattr(args, field) is not _UNSET:
            changes[field] = getattr(args, field)
    if args.smart_encoding is not None:
        changes["smart_encoding"] = args.smart_encoding
    for field in ("keywords", "keyword_replies", "sms_prices"):
        if getattr(args, field) is not _UNSET:
            changes[field] = getattr(args, field)
    migrate.upgrade()
    with session_scope() as session:  # a refusal: its JSON on one line, exit 2 (herald.cli)
        tenant = update_tenant(session, args.tenant_id, load_tenant_request(changes, partial=True))
        if args.disabled is not None:
            tenant = set_tenant_disabled(session, args.tenant_id, args.disabled)
        print(json.dumps(tenant_to_dict(tenant), indent=2))
    return 0


def _templates_sync(args: argparse.Namespace) -> int:
    with _client(args) as client:
        params = {"provider": args.provider} if args.provider else None
        return _print_answer(_call(client, "POST", "/v1/templates/sync", params=params))


def register(sub: Any, tenant: Any) -> None:
    """Add the commands to `herald`'s subparsers and to its `tenant` subparsers."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--key", help="the tenant's API key (default: $HERALD_API_KEY)")
    connection.add_argument(
        "--url", help="the Herald API (default: $HERALD_API_URL or http://127.0.0.1:$PORT)"
    )

    send = sub.add_parser(
        "send", parents=[connection], help="send a message through the API and print it"
    )
    send.add_argument("--to", required=True, help="E.164 number, e.g. +12025550143")
    send.add_argument("--channel", choices=["whatsapp", "sms"], default="whatsapp")
    send.add_argument("--provider", choices=["meta", "twilio"])
    send.add_argument(
        "--from", dest="from_", help="a sender: its id, number, MG… SID or phone number id"
    )
    send.add_argument("--body", help="the text")
    send.add_argument("--media-url", action="append", help="a media URL (repeatable)")
    send.add_argument("--template", help="a WhatsApp template name (Meta)")
    send.add_argument("--language", default="en_US", help="the template's language")
    send.add_argument("--var", action="append", help="a template variable (repeatable)")
    send.add_argument("--send-at", help="ISO 8601 time to send at, e.g. 2026-12-01T09:00:00Z")
    send.add_argument(
        "--ttl",
        type=int,
        help="seconds the message may wait once due; past it, failed/expired (docs/api.md)",
    )
    send.add_argument("--idempotency-key", help="retry-safe key: a replay returns the same message")
    send.set_defaults(func=_send)

    status = sub.add_parser(
        "status", parents=[connection], help="print a message with its timeline"
    )
    status.add_argument("message_id")
    status.set_defaults(func=_status)

    tail = sub.add_parser(
        "tail", parents=[connection], help="follow the tenant's messages and status changes"
    )
    tail.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    tail.add_argument("--lines", type=int, default=10, help="recent messages shown first")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--polls", type=int, default=0, help="stop after N polls (0 = never)")
    tail.set_defaults(func=_tail)

    templates = sub.add_parser("templates", help="WhatsApp templates").add_subparsers(
        dest="action", required=True
    )
    tsync = templates.add_parser(
        "sync", parents=[connection], help="fetch the tenant's templates from its providers now"
    )
    tsync.add_argument("--provider", choices=["meta", "twilio"])
    tsync.set_defaults(func=_templates_sync)

    listing = tenant.add_parser("list", help="print every tenant (no secrets)")
    listing.set_defaults(func=_tenant_list)
    update = tenant.add_parser("update", help="change a tenant's limits, callback URL, state")
    update.add_argument("tenant_id")
    update.add_argument("--name")
    update.add_argument("--callback-url", help="where status events go ('' removes it)")
    for flag in ("--hourly-limit", "--daily-limit"):
        update.add_argument(
            flag, type=_limit, default=_UNSET, help="N (0 = unlimited) or 'default'"
        )
    update.add_argument(
        "--sms-max-segments",
        type=_segments_cap,
        default=_UNSET,
        help="the most segments one SMS may take, or 'none'",
    )
    update.add_argument(
        "--sms-countries",
        type=_countries,
        default=_UNSET,
        help="ISO codes it may text, e.g. US,CA ('default': its own numbers' countries)",
    )
    update.add_argument(
        "--international-daily-limit",
        type=_limit,
        default=_UNSET,
        help="international SMS a day: N (0 = unlimited) or 'default'",
    )
    update.add_argument(
        "--sms-prices",
        type=_json_object,
        default=_UNSET,
        help="SMS price per segment per country, for campaign estimates, e.g. "
        '\'{"currency": "USD", "per_segment": {"US": "0.0079", "*": "0.05"}}\' (null: none)',
    )
    update.add_argument(
        "--keywords",
        type=_json_object,
        default=_UNSET,
        help='its own words, e.g. \'{"stop": ["ARRET", "BAJA"], "help": ["AYUDA"]}\' (null: none)',
    )
    update.add_argument(
        "--keyword-replies",
        type=_json_object,
        default=_UNSET,
        help='answers, e.g. \'{"stop": "Désinscrit.", "help": ""}\' ("" none; null: defaults)',
    )
    encoding = update.add_mutually_exclusive_group()
    encoding.add_argument(
        "--smart-encoding",
        dest="smart_encoding",
        action="store_true",
        default=None,
        help="swap SMS look-alike characters for GSM-7 ones (the default)",
    )
    encoding.add_argument(
        "--no-smart-encoding", dest="smart_encoding", action="store_false", default=None
    )
    state = update.add_mutually_exclusive_group()
    state.add_argument(
        "--disable",
        dest="disabled",
        action="store_true",
        default=None,
        help="refuse the tenant's keys",
    )
    state.add_argument(
        "--enable", dest="disabled", action="store_false", help="accept its keys again"
    )
    update.set_defaults(func=_tenant_update)
