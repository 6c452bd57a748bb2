"""Herald's API on a real socket plus the provider sandbox, in this process.

The real `twilio` client and the real httpx code are pointed at the sandbox by
base URL; the sandbox sends signed callbacks back to the live API.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from werkzeug.serving import make_server

from tests.conftest import META_PHONE_ID, META_SECRET, META_TOKEN, TWILIO_SID, TWILIO_TOKEN


class Live:
    def __init__(self, api_url: str, sandbox: Any) -> None:
        self.api_url = api_url
        self.sandbox = sandbox
        self.control = httpx.Client(base_url=sandbox.url, timeout=10)

    def sends(self, **params: str) -> list[dict[str, Any]]:
        return self.control.get("/_sandbox/sends", params=params).json()["sends"]

    def fault(self, **spec: Any) -> None:
        self.control.post("/_sandbox/faults", json=spec).raise_for_status()

    def config(self, **patch: Any) -> None:
        self.control.post("/_sandbox/config", json=patch).raise_for_status()


@pytest.fixture(scope="session")
def live(herald_env: dict[str, str]) -> Iterator[Live]:
    from api import create_app
    from core.config import get_settings
    from providers import reset_providers
    from sandbox.app import SandboxServer
    from sandbox.state import MetaAccount, SandboxState, TwilioAccount

    server = make_server("127.0.0.1", 0, create_app(), threaded=True)
    api_url = f"http://127.0.0.1:{server.server_port}"
    state = SandboxState(
        twilio_accounts=[TwilioAccount(TWILIO_SID, TWILIO_TOKEN)],
        meta_accounts=[MetaAccount(META_PHONE_ID, META_TOKEN, META_SECRET)],
        callback_delay=0.05,
        meta_webhook_url=f"{api_url}/webhooks/meta",
        twilio_inbound_url=f"{api_url}/webhooks/twilio/inbound",
    )
    sandbox = SandboxServer(state).start()
    saved = {
        k: os.environ.get(k) for k in ("HERALD_PUBLIC_URL", "TWILIO_API_BASE", "META_GRAPH_BASE")
    }
    os.environ.update(
        HERALD_PUBLIC_URL=api_url,
        TWILIO_API_BASE=sandbox.url,
        META_GRAPH_BASE=sandbox.url,
        HERALD_SETTLE_SECONDS="1",
    )
    get_settings.cache_clear()
    reset_providers()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Live(api_url, sandbox)
    server.shutdown()
    sandbox.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    os.environ.pop("HERALD_SETTLE_SECONDS", None)
    get_settings.cache_clear()
    reset_providers()


@pytest.fixture(autouse=True)
def _reset_sandbox(live: Live) -> None:
    from services.policy.breaker import clear_holds

    live.control.post("/_sandbox/reset").raise_for_status()
    clear_holds()  # a sender held by one test must not hold the next


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
