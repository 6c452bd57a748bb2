"""CPU of one Twilio status callback in one process, without gunicorn: the request
(`app(environ, start_response)`, the applier off) and its applying (`applier.apply_all`)
measured apart, in ms of process time per callback.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
    python -m bench.ingest_micro --messages 2000

Uses a schema of its own on DATABASE_URL (dropped at the end). Requests run one at a
time (each its own group commit), so the figures are for comparing versions of the
code, not the CPU a loaded server spends. Asserts nothing but that every answer is 204.
"""

from __future__ import annotations

import argparse
import io
import os
import time
import uuid
from typing import Any
from urllib.parse import urlencode

from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

SID = "AC" + "b2" * 16
TOKEN = "micro-twilio-token"
PUBLIC = "http://herald.micro"


def _setup(base_url: str) -> str:
    schema = f"herald_micro_{uuid.uuid4().hex[:8]}"
    engine = create_engine(base_url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in base_url else "?"
    os.environ.update(
        {
            "DATABASE_URL": f"{base_url}{sep}options=-csearch_path%3D{schema}",
            "HERALD_SECRET_KEY": Fernet.generate_key().decode(),
            "HERALD_PUBLIC_URL": PUBLIC,
            "HERALD_LOG_LEVEL": "WARNING",
        }
    )
    return schema


def _messages(count: int) -> tuple[list[tuple[str, str]], str]:
    """`count` sent-looking messages of one tenant: (herald id, Twilio sid)."""
    from models import Message, session_scope
    from services.tenancy.tenants import add_provider_account, create_tenant

    out = []
    with session_scope() as session:
        tenant = create_tenant(session, f"micro-{uuid.uuid4().hex[:6]}")
        account = add_provider_account(
            session, tenant.id, "twilio", account_sid=SID, auth_token=TOKEN, sms_from="+12025550100"
        )
        session.flush()
        for i in range(count):
            sid = "SM" + uuid.uuid4().hex
            m = Message(
                tenant_id=tenant.id,
                channel="sms",
                provider="twilio",
                provider_account_id=account.id,
                to_number=f"+1202555{i:04d}",
                from_number="+12025550100",
                body="hi",
                status="sending",
                provider_message_id=sid,
            )
            session.add(m)
            session.flush()
            out.append((m.id, sid))
        tenant_id = tenant.id
    return out, tenant_id


def _environ(path: str, query: str, body: bytes, signature: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "TwilioProxy/1.1",
        "HTTP_X_TWILIO_SIGNATURE": signature,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _callbacks(messages: list[tuple[str, str]]) -> list[tuple[str, str, bytes, str]]:
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(TOKEN)
    out = []
    for status in ("sent", "delivered"):
        for herald_id, sid in messages:
            params = {
                "SmsSid": sid,
                "SmsStatus": status,
                "MessageStatus": status,
                "To": "+12025550123",
                "MessageSid": sid,
                "AccountSid": SID,
                "From": "+12025550100",
                "ApiVersion": "2010-04-01",
            }
            path, query = "/webhooks/twilio/status", f"message_id={herald_id}"
            signature = validator.compute_signature(f"{PUBLIC}{path}?{query}", params)
            out.append((path, query, urlencode(params).encode(), signature))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--batch", type=int, default=25, help="rows per applier batch")
    args = parser.parse_args()
    base_url = os.environ["DATABASE_URL"]
    schema = _setup(base_url)
    try:
        from herald import migrate

        migrate.upgrade()
        from api import create_app
        from services.callbacks import applier

        app = create_app()
        messages, _ = _messages(args.messages + args.warmup)
        calls = _callbacks(messages)
        warm = [c for i, c in enumerate(calls) if i % len(messages) < args.warmup]
        timed = [c for i, c in enumerate(calls) if i % len(messages) >= args.warmup]
        applier.set_applier(lambda: None)
        statuses: dict[str, int] = {}

        def start_response(status: str, headers: list, exc_info: Any = None) -> None:
            statuses[status] = statuses.get(status, 0) + 1

        def run(batch: list[tuple[str, str, bytes, str]]) -> float:
            environs = [_environ(*c) for c in batch]
            t0 = time.process_time()
            for environ in environs:
                result = app(environ, start_response)
                for _ in result:
                    pass
                close = getattr(result, "close", None)
                if close:
                    close()
            return time.process_time() - t0

        run(warm)
        applier.apply_all()
        statuses.clear()
        request_s = run(timed)
        t0 = time.process_time()
        applied = 0
        while True:
            taken = applier.apply_pending(args.batch)
            applied += taken
            if not taken:
                break
        apply_s = time.process_time() - t0
        n = len(timed)
        print(f"answers: {statuses}; applied {applied}")
        print(
            f"request {request_s / n * 1000:.3f} ms/callback, "
            f"apply {apply_s / n * 1000:.3f} ms/callback (process time, one thread)"
        )
    finally:
        from models import reset_engine

        reset_engine()
        engine = create_engine(base_url)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


if __name__ == "__main__":
    main()
