"""Serving inbound media: time and peak memory to stream a large file through Herald.

An inbound Meta message whose media (50 MB of made-up bytes by default) is held by an
in-process sandbox is downloaded through `GET /v1/messages/<id>/media/0` on a real
socket. The file is streamed in 64 KB chunks, so the peak memory traced while it flows
(sandbox, Herald and client together, the file already stored) should stay far below its
size. Prints figures; asserts nothing.

    python -m bench.media_stream [megabytes]     # embedded PostgreSQL in a temporary HERALD_HOME
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from cryptography.fernet import Fernet


def main() -> None:
    size = int(sys.argv[1]) * 1024 * 1024 if len(sys.argv) > 1 else 50 * 1024 * 1024
    home = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    os.environ.setdefault("HERALD_HOME", str(home))
    os.environ.setdefault("HERALD_SECRET_KEY", Fernet.generate_key().decode())
    if os.environ.get("DATABASE_URL"):
        _measure(size)
        return
    from herald.postgres import embedded

    with embedded(home, delete=True) as url:
        os.environ["DATABASE_URL"] = url
        _measure(size)
        from models import reset_engine

        reset_engine()


def _measure(size: int) -> None:
    import httpx
    from werkzeug.serving import make_server

    from sandbox.app import SandboxServer
    from sandbox.state import MetaAccount, SandboxState

    phone, token = "100000000000077", "bench-token"
    sandbox = SandboxServer(SandboxState(meta_accounts=[MetaAccount(phone, token, "s")])).start()
    os.environ["META_GRAPH_BASE"] = sandbox.url
    os.environ["HERALD_MEDIA_MAX_BYTES"] = str(size + 1)

    from api import create_app
    from core.config import get_settings
    from herald import migrate
    from models import Message, session_scope, utcnow
    from services.tenancy.tenants import add_provider_account, create_api_key, create_tenant

    get_settings.cache_clear()
    migrate.upgrade()
    with session_scope() as session:
        tenant = create_tenant(session, "bench-media")
        account = add_provider_account(
            session, tenant.id, "meta", phone_number_id=phone, access_token=token
        )
        key = create_api_key(session, tenant.id)
        stored = httpx.post(
            f"{sandbox.url}/_sandbox/media",
            json={
                "provider": "meta",
                "account": phone,
                "media_type": "video/mp4",
                "media_size": size,
            },
        ).json()
        message = Message(
            tenant_id=tenant.id,
            direction="inbound",
            channel="whatsapp",
            provider="meta",
            provider_account_id=account.id,
            to_number=phone,
            from_number="+12025550143",
            media_urls=[f"meta-media:{stored['id']}"],
            status="received",
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        session.add(message)
        session.flush()
        mid = message.id

    server = make_server("127.0.0.1", 0, create_app(), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1/messages/{mid}/media/0"
    tracemalloc.start()
    started = time.perf_counter()
    received = 0
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as r:
        r.raise_for_status()
        for chunk in r.iter_raw(64 * 1024):
            received += len(chunk)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    server.shutdown()
    sandbox.stop()
    print(
        f"served {received / 1024 / 1024:.0f} MB in {elapsed:.2f} s "
        f"({received / 1024 / 1024 / elapsed:.0f} MB/s); "
        f"peak memory traced while streaming {peak / 1024 / 1024:.1f} MB"
    )


if __name__ == "__main__":
    main()
