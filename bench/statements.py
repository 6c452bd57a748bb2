"""SQL round trips of one `POST /v1/messages` and of one delivery (provider stubbed),
counted in-process with SQLAlchemy engine events (and models.fast's statements, which
run past them), to say how far the hot paths are
from "one transaction, few statements". The pool's pre-ping is not seen by these
events. BENCH_SHOW_SQL=1 prints each statement. Prints; asserts nothing.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
    REDIS_URL=redis://127.0.0.1:6379/0 python -m bench.statements
"""

from __future__ import annotations

import collections
import os
import tempfile
import uuid
from typing import Any

from cryptography.fernet import Fernet


def main() -> None:
    run = uuid.uuid4().hex[:8]
    base = os.environ.get("DATABASE_URL", "")
    schema = ""
    if base.startswith("postgresql"):
        import psycopg

        schema = f"bench_stmt_{run}"
        with psycopg.connect("postgresql://" + base.split("://", 1)[1], autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in base else "?"
        os.environ["DATABASE_URL"] = f"{base}{sep}options=-csearch_path%3D{schema}"
    os.environ.update(
        HERALD_HOME=tempfile.mkdtemp(prefix="herald-stmt-"),
        HERALD_SECRET_KEY=Fernet.generate_key().decode(),
        HERALD_QUEUE_PREFIX=f"bench-stmt-{run}:",
        HERALD_DEFAULT_HOURLY_LIMIT="0",
        HERALD_DEFAULT_DAILY_LIMIT="0",
        TWILIO_API_BASE="http://127.0.0.1:9",  # never reached: the provider is stubbed below
    )
    try:
        _count()
    finally:
        if schema:
            import psycopg

            with psycopg.connect("postgresql://" + base.split("://", 1)[1], autocommit=True) as c:
                c.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _count() -> None:
    from sqlalchemy import event

    from api import create_app
    from herald import migrate
    from herald.stack import add_sandbox_twilio_account
    from models import get_engine, session_scope
    from services.messages import delivery
    from services.messages.dispatch import set_dispatcher
    from services.tenancy.tenants import create_api_key, create_tenant

    migrate.upgrade()
    with session_scope() as session:
        tenant = create_tenant(session, "stmt")
        add_sandbox_twilio_account(session, tenant.id, mps=1000)
        key = create_api_key(session, tenant.id)
    queued: list[str] = []
    set_dispatcher(lambda task, ids, queue: queued.extend(ids))
    counts: collections.Counter[str] = collections.Counter()

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split()
        verb = words[0].upper() if words else "?"
        counts["ping" if statement.strip() == "SELECT 1" else verb] += 1
        if os.environ.get("BENCH_SHOW_SQL"):
            print("   ", " ".join(words)[:160])

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", on_execute)
    # models.fast statements run on the driver's cursor, past the engine's events.
    from models import fast

    run_fast = fast.Statement._run

    def counted(self: Any, session: Any, params: Any, factory: Any) -> Any:
        on_execute(None, None, self.sql)
        return run_fast(self, session, params, factory)

    fast.Statement._run = counted  # type: ignore[method-assign]
    event.listen(engine, "commit", lambda conn: counts.update(["COMMIT"]))
    client = create_app({"TESTING": True}).test_client()
    headers = {"Authorization": f"Bearer {key}"}
    for i in range(3):  # warm caches; the last request is the one reported
        counts.clear()
        resp = client.post(
            "/v1/messages",
            json={"to": f"+1202555{i:04d}", "channel": "sms", "body": "hi"},
            headers=headers,
        )
        assert resp.status_code == 202, resp.get_data(as_text=True)
    print(f"POST /v1/messages: {sum(counts.values())} round trips {dict(counts)}")

    class Stub:
        name = "twilio"

        def send(self, account: Any, message: Any) -> Any:
            from providers import SendResult

            return SendResult(provider_message_id="SM" + uuid.uuid4().hex, native_status="queued")

    delivery.get_provider = lambda name: Stub()  # type: ignore[assignment]
    counts.clear()
    outcome = delivery.deliver(queued[-1])
    print(f"deliver (provider stubbed): {sum(counts.values())} round trips {dict(counts)}")
    print(f"  outcome {outcome}")
    queued.clear()
    for i in range(50):
        client.post(
            "/v1/messages",
            json={"to": f"+1202556{i:04d}", "channel": "sms", "body": "hi"},
            headers=headers,
        )
    counts.clear()
    outcomes = delivery.deliver_many(list(queued))
    print(
        f"deliver_many, a batch of {len(queued)} (provider stubbed): "
        f"{sum(counts.values())} round trips {dict(counts)}; "
        f"{sum(o.action == 'sent' for o in outcomes)} sent"
    )


if __name__ == "__main__":
    main()
