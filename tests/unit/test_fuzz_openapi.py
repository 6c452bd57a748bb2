"""Property-based run against Herald's own /openapi.json: every operation, the admin
API (switched on, with its token), the webhooks and the seeds' routes included,
answered by the Flask app in-process.

Whatever schemathesis generates, Herald must never answer a 5xx, nor a status the
document does not list, nor a body its schema for that status does not describe
(response schemas are closed: additionalProperties false but where free-form). The
run is bounded (a few examples per operation, no shrinking) and derandomized with a
fixed seed, so CI sees the same requests each time; a failure prints the request that
reproduces it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from tests.conftest import make_tenant

pytestmark = pytest.mark.filterwarnings("ignore")

CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 20261128,
        "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
        "generation": {"mode": "all", "deterministic": True},
    }
)


@pytest.fixture(scope="module")
def fuzz_tenant() -> dict[str, str]:
    # No quota: the run must not turn into a string of 429s halfway through.
    from models import Tenant, session_scope

    tenant = make_tenant("fuzz")
    with session_scope() as session:
        row = session.get(Tenant, tenant["tenant_id"])
        row.hourly_limit = row.daily_limit = 0
    return tenant


class _Herald:
    """Herald's Flask app as a WSGI callable, built on first use; the fixture below
    builds it again once conftest has pointed the settings at the test database."""

    app = None

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        if self.app is None:
            from api import create_app

            self.app = create_app({"TESTING": True})
        return self.app(environ, start_response)


HERALD = _Herald()
schema = schemathesis.openapi.from_wsgi("/openapi.json", HERALD, config=CONFIG)


ADMIN_TOKEN = "fuzz-admin-token-0123456789"


@pytest.fixture(scope="module", autouse=True)
def fresh_app() -> Iterator[None]:
    from core.config import get_settings
    from sandbox.app import SandboxServer
    from sandbox.state import MetaAccount, SandboxState
    from tests.conftest import META_PHONE_ID, META_SECRET, META_TOKEN

    # POST /v1/media uploads what it accepts, and POST /v1/templates/sync lists templates:
    # from the sandbox, not from an unreachable Meta or Twilio (whose 502 or timeout is no
    # input's fault).
    state = SandboxState(meta_accounts=[MetaAccount(META_PHONE_ID, META_TOKEN, META_SECRET)])
    with pytest.MonkeyPatch.context() as patch, SandboxServer(state) as sandbox:
        patch.setenv("HERALD_ADMIN_TOKEN", ADMIN_TOKEN)
        patch.setenv("META_GRAPH_BASE", sandbox.url)
        patch.setenv("TWILIO_API_BASE", sandbox.url)
        patch.setenv("TWILIO_CONTENT_BASE", sandbox.url)
        get_settings.cache_clear()
        HERALD.app = None
        yield
    get_settings.cache_clear()


@schema.parametrize()
@settings(
    max_examples=8,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[p for p in __import__("hypothesis").Phase if p.name != "shrink"],
    suppress_health_check=list(HealthCheck),
)
def test_no_input_is_a_server_error_or_an_undocumented_status(
    case, fuzz_tenant, dispatched
) -> None:  # type: ignore[no-untyped-def]
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        response_schema_conformance,
        status_code_conformance,
    )

    token = ADMIN_TOKEN if case.path.startswith("/admin/") else fuzz_tenant["api_key"]
    case.call_and_validate(
        headers={"Authorization": f"Bearer {token}"},
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )
