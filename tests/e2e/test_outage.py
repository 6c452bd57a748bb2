"""PostgreSQL or Redis unreachable for a few seconds under the real stack (`herald run`):
a 503 with Retry-After while the database is gone, quick 202s while the broker is, and
everything delivered exactly once afterwards, with no process restarted.

The outage is a TCP proxy between Herald and the machine's servers that the test cuts
(bench/tcpproxy.py): the servers themselves keep running for everyone else.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from bench.tcpproxy import TcpProxy, proxy_to
from herald.stack import free_port, redis_server_argv, wait_until
from tests.conftest import free_number
from tests.e2e.stack import RunningStack

pytestmark = pytest.mark.e2e

FINAL = {"delivered", "read", "failed", "undelivered", "canceled"}


class Outage:
    def __init__(self, stack: RunningStack, database: TcpProxy, redis: TcpProxy) -> None:
        self.stack, self.database, self.redis = stack, database, redis
        # A client that would notice a hung request: generous for a loaded machine, yet
        # well below the 19 s a publish used to spend on a dead Redis.
        self.api = httpx.Client(
            base_url=stack.info["api"],
            timeout=10,
            headers={"Authorization": f"Bearer {stack.info['api_key']}"},
        )


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    url = make_url(os.environ["DATABASE_URL"])
    if not url.drivername.startswith("postgresql"):
        pytest.skip("the database outage is simulated in front of a PostgreSQL server")
    home = tmp_path_factory.mktemp("outage-home")
    redis_server = None
    if os.environ.get("REDIS_URL"):
        redis_url = make_url(os.environ["REDIS_URL"])
        redis_target = (redis_url.host or "127.0.0.1", redis_url.port or 6379)
    else:
        port = free_port()
        redis_server = subprocess.Popen(redis_server_argv(port, home), stdout=subprocess.DEVNULL)
        redis_target = ("127.0.0.1", port)
    database, proxied = proxy_to(os.environ["DATABASE_URL"])
    redis = TcpProxy(*redis_target).start()
    stack = RunningStack(
        home,
        {
            "DATABASE_URL": proxied,
            "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
            "HERALD_SWEEP_INTERVAL": "1",
            "HERALD_SWEEP_AFTER_SECONDS": "3",
            "HERALD_SEND_LEASE_SECONDS": "5",
        },
    )
    try:
        stack.wait_ready()
        yield Outage(stack, database, redis)
    finally:
        database.restore() if not database.up else None
        redis.restore() if not redis.up else None
        stack.stop()
        database.close()
        redis.close()
        if redis_server is not None:
            redis_server.terminate()
            redis_server.wait()


def send(outage: Outage, key: str, i: int) -> httpx.Response:
    body = {"to": "+12025550143", "channel": "sms", "body": f"outage {key} {i}"}
    return outage.api.post("/v1/messages", json=body, headers={"Idempotency-Key": f"{key}-{i}"})


def wait_final(outage: Outage, ids: list[str], timeout: float = 90) -> dict[str, str]:
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for mid in ids:
            if statuses.get(mid) not in FINAL:
                resp = outage.api.get(f"/v1/messages/{mid}")
                if resp.status_code == 200:
                    statuses[mid] = resp.json()["status"]
        if all(statuses.get(mid) in FINAL for mid in ids):
            return statuses
        time.sleep(0.3)
    raise AssertionError(f"not final after {timeout}s: {statuses}\n{outage.stack.log_tail()}")


def sends_of(outage: Outage, ids: list[str]) -> dict[str, int]:
    sends = httpx.get(
        f"{outage.stack.info['sandbox']}/_sandbox/sends", params={"accepted": "true"}
    ).json()["sends"]
    return {mid: sum(1 for s in sends if s["herald_id"] == mid) for mid in ids}


def no_restarts(outage: Outage) -> None:
    restarts = [
        line for line in outage.stack.lines if line.startswith("herald: ") and "restarting" in line
    ]
    assert not restarts, outage.stack.log_tail(150)


def test_database_outage_is_503_then_everything_is_delivered_once(outage: Outage) -> None:
    key = uuid.uuid4().hex[:8]
    before = [send(outage, key, i).json()["id"] for i in range(3)]  # some still in flight
    outage.database.cut()
    try:
        refused = send(outage, key, 100)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.json()["error"]["code"] == "unavailable"
        got = outage.api.get(f"/v1/messages/{before[0]}")
        assert got.status_code == 503 and got.json()["error"]["code"] == "unavailable"
        seed = outage.api.post(
            "/api/whatsapp/send", json={"toPhoneNumber": "+12025550143", "messageBody": "hola"}
        )
        assert seed.status_code == 503 and isinstance(seed.json()["error"], str)
        assert int(seed.headers["Retry-After"]) > 0
        for provider, to in (("meta", outage.stack.info["meta_phone_number_id"]),):
            inbound = httpx.post(
                f"{outage.stack.info['sandbox']}/_sandbox/inbound",
                json={"provider": provider, "from": "+12025550199", "to": to, "body": "hi"},
            )
            assert inbound.json()["status_code"] == 503, inbound.text  # the provider retries
        ready = outage.api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["down"] == ["database"], ready.text
        time.sleep(3)  # workers and beat meet the outage too
    finally:
        outage.database.restore()
    wait_until(lambda: outage.api.get("/readyz").status_code == 200, "readyz after the outage")
    accepted = send(outage, key, 100)  # the client's retry, same Idempotency-Key
    # 202: a new message. The refused request stored nothing (a 200 here would be its
    # row, kept although the client was told 503).
    assert accepted.status_code == 202, accepted.text
    ids = [*before, accepted.json()["id"]]
    statuses = wait_final(outage, ids)
    assert set(statuses.values()) <= {"delivered", "read"}, statuses
    assert sends_of(outage, ids) == dict.fromkeys(ids, 1)  # none lost, none sent twice
    no_restarts(outage)


def test_broker_outage_accepts_at_once_and_delivers_when_redis_is_back(outage: Outage) -> None:
    key = uuid.uuid4().hex[:8]
    outage.redis.cut()
    try:
        ids = []
        for i in range(3):
            resp = send(outage, key, i)  # would time out if the publish hung
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
        assert outage.api.get(f"/v1/messages/{ids[0]}").json()["status"] == "queued"
        ready = outage.api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["down"] == ["redis"], ready.text
        time.sleep(3)
    finally:
        outage.redis.restore()
    statuses = wait_final(outage, ids)
    assert set(statuses.values()) <= {"delivered", "read"}, statuses
    assert sends_of(outage, ids) == dict.fromkeys(ids, 1)
    no_restarts(outage)


def twilio_callbacks(outage: Outage, ids: list[str]) -> list[dict]:
    rows = httpx.get(
        f"{outage.stack.info['sandbox']}/_sandbox/callbacks", params={"provider": "twilio"}
    ).json()["callbacks"]
    return [row for row in rows if row.get("herald_id") in ids]


def _add_sms_sender(tenant_id: str, number: str) -> None:
    """A Twilio SMS sender `number` on the tenant's account (the run's shared schema)."""
    from models import session_scope
    from services.tenancy.sender_admin import add_sender

    with session_scope() as session:
        add_sender(
            session, tenant_id, {"provider": "twilio", "address": number, "channels": ["sms"]}
        )


def test_twilio_callbacks_during_a_database_outage_are_applied_when_it_is_back(
    outage: Outage,
) -> None:
    """Twilio never sends a status callback again after a 5xx: those that arrive while
    PostgreSQL is away are spooled (2xx) and applied once it is back, long before the
    reconcile pass (HERALD_RECONCILE_AFTER_MINUTES) would ask Twilio."""
    sandbox = outage.stack.info["sandbox"]
    before = httpx.get(f"{sandbox}/_sandbox/config").json()["callback_delay"]
    key = uuid.uuid4().hex[:8]
    # A number of this stack's tenant alone: every stack and test tenant of a run shares
    # the sandbox account's own number, whose inbound is rightly no one's (unrouted).
    own_number = free_number()
    _add_sms_sender(outage.stack.info["tenant_id"], own_number)
    httpx.post(f"{sandbox}/_sandbox/config", json={"callback_delay": 2.0}).raise_for_status()
    try:
        ids = [send(outage, key, i).json()["id"] for i in range(5)]

        def recorded() -> bool:
            found = [outage.api.get(f"/v1/messages/{mid}").json() for mid in ids]
            return all(m.get("provider_message_id") for m in found)

        wait_until(recorded, "the sends recorded")
        outage.database.cut()
        try:
            # `sent` comes 2 s after each send, `delivered` 4 s after: in the outage.
            def delivered_callbacks_answered() -> bool:
                rows = twilio_callbacks(outage, ids)
                return {r["herald_id"] for r in rows if r["event"] == "delivered"} == set(ids)

            wait_until(delivered_callbacks_answered, "the delivered callbacks", timeout=60)
            inbound = httpx.post(
                f"{sandbox}/_sandbox/inbound",
                json={"provider": "twilio", "from": "+12025550188", "to": own_number},
            ).json()
            assert inbound["status_code"] == 200, inbound  # kept: Twilio would not retry
        finally:
            outage.database.restore()
    finally:
        httpx.post(f"{sandbox}/_sandbox/config", json={"callback_delay": before})
    answers = [(r["event"], r["status_code"]) for r in twilio_callbacks(outage, ids)]
    assert answers and all(200 <= code < 300 for _, code in answers), answers
    statuses = wait_final(outage, ids, timeout=120)
    assert set(statuses.values()) == {"delivered"}, statuses
    for mid in ids:
        events = outage.api.get(f"/v1/messages/{mid}").json()["events"]
        assert [e["status"] for e in events].count("delivered") == 1, events
    assert sends_of(outage, ids) == dict.fromkeys(ids, 1)  # none sent twice

    def inbound_stored() -> bool:
        page = outage.api.get("/v1/messages", params={"limit": 100}).json()["data"]
        return any(m["provider_message_id"] == inbound["message_id"] for m in page)

    wait_until(inbound_stored, "the inbound message stored", timeout=60)
    no_restarts(outage)
