"""`python -m sandbox`: run the provider sandbox until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from sandbox.app import serve
from sandbox.state import (
    DEFAULT_META_DISPLAY,
    DEFAULT_META_WABA,
    MetaAccount,
    SandboxState,
    TwilioAccount,
)


def _twilio_account(value: str) -> TwilioAccount:
    sid, sep, token = value.partition(":")
    if not (sep and sid and token):
        raise argparse.ArgumentTypeError("expected SID:TOKEN")
    return TwilioAccount(sid, token)


def _meta_account(value: str) -> MetaAccount:
    parts = value.split(":")
    if not 3 <= len(parts) <= 5 or not all(parts):
        raise argparse.ArgumentTypeError(
            "expected PHONE_NUMBER_ID:ACCESS_TOKEN:APP_SECRET[:WABA_ID[:DISPLAY_PHONE]]"
        )
    waba = parts[3] if len(parts) > 3 else DEFAULT_META_WABA
    display = parts[4] if len(parts) > 4 else DEFAULT_META_DISPLAY
    return MetaAccount(parts[0], parts[1], parts[2], waba, display)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900, help="0 picks a free port")
    parser.add_argument(
        "--twilio-account", action="append", type=_twilio_account, metavar="SID:TOKEN"
    )
    parser.add_argument(
        "--meta-account",
        action="append",
        type=_meta_account,
        metavar="PHONE_NUMBER_ID:ACCESS_TOKEN:APP_SECRET[:WABA_ID[:DISPLAY]]",
    )
    parser.add_argument("--meta-webhook-url", help="where Meta status/inbound webhooks go")
    parser.add_argument("--twilio-inbound-url", help="where simulated Twilio inbound goes")
    parser.add_argument(
        "--callback-delay",
        type=float,
        default=0.3,
        help="seconds before `sent`; later statuses at 2x, 3x",
    )
    parser.add_argument("--receipts-file", help="append every send receipt here as JSON lines")
    parser.add_argument("--log-requests", action="store_true", help="print an access log")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state = SandboxState(
        twilio_accounts=args.twilio_account,
        meta_accounts=args.meta_account,
        callback_delay=args.callback_delay,
        meta_webhook_url=args.meta_webhook_url,
        twilio_inbound_url=args.twilio_inbound_url,
        receipts_file=args.receipts_file,
    )
    server = serve(state, args.host, args.port, log_requests=args.log_requests)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"sandbox listening on http://{args.host}:{server.port}", flush=True)
    try:
        done.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
