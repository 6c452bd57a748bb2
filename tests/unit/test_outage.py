"""The database or the broker unreachable: a clear 503 (never a 500, never a hang), and
publishing gives up at once so accepting a message stays fast."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator

import pytest

from herald.stack import free_port


@pytest.fixture
def database_down(monkeypatch) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Point the process at a PostgreSQL port nobody listens on, then restore it."""
    from core.config import get_settings
    from models import reset_engine

    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://herald@127.0.0.1:{free_port()}/x")
    get_settings.cache_clear()
    reset_engine()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()
    reset_engine()


def assert_unavailable(resp) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == 503, resp.get_data(as_text=True)
    assert int(resp.headers["Retry-After"]) > 0
    error = resp.get_json()["error"]
    assert error["code"] == "unavailable" and error["message"]


def test_api_routes_answer_503_with_retry_after(client, auth, database_down) -> None:
    send = {"to": "+12025550143", "channel": "sms", "body": "hi"}
    for resp in (
        client.post("/v1/messages", json=send, headers=auth),
        client.get("/v1/messages", headers=auth),
        client.get("/v1/messages/msg_x", headers=auth),
        client.post("/v1/messages/msg_x/cancel", headers=auth),
        client.post("/v1/contacts", json={"phone": "+12025550143"}, headers=auth),
        client.get("/v1/campaigns/cmp_x", headers=auth),
    ):
        assert_unavailable(resp)


def test_seed_routes_answer_503_in_their_own_shapes(client, monkeypatch, database_down) -> None:
    from core.config import get_settings

    # A deployment replacing a seed: its clients send no key, the tenant is configured.
    monkeypatch.setenv("HERALD_LEGACY_TENANT", "ten_legacy")
    get_settings.cache_clear()
    for path, body in (
        ("/api/twilio/message", {"to": "+12025550143", "message": "hola"}),
        ("/api/whatsapp/send", {"toPhoneNumber": "+12025550143", "messageBody": "hola"}),
    ):
        resp = client.post(path, json=body)
        assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0
        assert set(resp.get_json()) == {"error"} and isinstance(resp.get_json()["error"], str)
    resp = client.get("/api/whatsapp/status/msg_x")
    assert resp.status_code == 503 and set(resp.get_json()) == {"error"}
    for path, body in (
        ("/api/v1/whatsapp/send-message", {"to": "+12025550143", "text": "hola"}),
        ("/api/v1/whatsapp/send-template", {"to": "+12025550143", "templateName": "t"}),
    ):
        resp = client.post(path, json=body)
        assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0
        envelope = resp.get_json()
        assert envelope["type"] == "3" and envelope["data"] is None and envelope["message"]


def test_provider_webhooks_answer_503_so_the_provider_retries(client, database_down) -> None:
    from twilio.request_validator import RequestValidator

    from tests.conftest import META_PHONE_ID, META_SECRET, TWILIO_TOKEN

    params = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"}
    for path in ("/webhooks/twilio/status", "/webhooks/twilio/inbound"):
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(
            "http://herald.test" + path, params
        )
        resp = client.post(path, data=params, headers={"X-Twilio-Signature": signature})
        assert_unavailable(resp)
    change = {"field": "messages", "value": {"metadata": {"phone_number_id": META_PHONE_ID}}}
    payload = {"object": "whatsapp_business_account", "entry": [{"changes": [change]}]}
    raw = json.dumps(payload).encode()
    signature = hmac.new(META_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    resp = client.post(
        "/webhooks/meta",
        data=raw,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}"},
    )
    assert_unavailable(resp)
    resp = client.get("/webhooks/meta?hub.mode=subscribe&hub.verify_token=v&hub.challenge=1")
    assert_unavailable(resp)


def test_readyz_names_the_database(client, database_down) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0
    body = resp.get_json()
    assert body["ready"] is False and "database" in body["down"]
    assert body["checks"]["database"] is False and body["error"]["code"] == "unavailable"


def test_the_engine_fails_fast_on_a_dead_database() -> None:
    """A request must not hang on a dead database: bounded connect, pool wait and
    unanswered-packet times (asserted as configuration, not timed)."""
    from sqlalchemy import event, text

    from models.db import _make_engine

    engine = _make_engine("postgresql+psycopg://herald@127.0.0.1:1/x")
    seen: dict = {}

    @event.listens_for(engine, "do_connect")
    def _capture(_dialect, _rec, _cargs, cparams):  # type: ignore[no-untyped-def]
        seen.update(cparams)
        raise ConnectionRefusedError("not connecting in this test")

    with pytest.raises(ConnectionRefusedError), engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    engine.dispose()
    assert engine.pool.timeout() <= 5
    assert 0 < int(seen["connect_timeout"]) <= 3
    assert 0 < int(seen["tcp_user_timeout"]) <= 15_000


def test_other_database_errors_are_still_500() -> None:
    """Only an unreachable database is a 503: a constraint violation is a bug, not a blip."""
    from sqlalchemy import exc

    from core.errors import database_unavailable

    assert not database_unavailable(exc.IntegrityError("INSERT", {}, Exception("dup")))
    assert database_unavailable(exc.OperationalError("SELECT 1", {}, Exception("refused")))
    assert database_unavailable(exc.TimeoutError("QueuePool limit reached"))


# ---------------------------------------------------------------- the broker unreachable


@pytest.fixture
def broker_down(monkeypatch):  # type: ignore[no-untyped-def]
    """A Celery app configured like Herald's, whose Redis (broker and results) is a
    port nobody listens on; the result backend records any subscription."""
    from celery import Celery

    import celeryconfig
    import core.queue

    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = Celery("herald-broker-down")
    app.config_from_object(celeryconfig)
    app.conf.broker_url = app.conf.result_backend = dead
    subscribed: list[str] = []
    monkeypatch.setattr(app.backend, "on_task_call", lambda _p, task_id: subscribed.append(task_id))
    monkeypatch.setattr(core.queue, "app", app)
    yield subscribed
    app.close()


def test_publishing_to_a_dead_broker_gives_up_without_waiting_on_results(broker_down) -> None:
    """The API's doorbell never subscribes to the result backend: on a dead Redis that
    subscription alone retried for 20 s inside the request."""
    from services.messages.dispatch import dispatch_now

    assert dispatch_now(["msg_x"], "herald.send") is False
    assert dispatch_now(["msg_a", "msg_b"], "herald.bulk", "herald.deliver_batch") is False
    assert broker_down == []


def test_publish_retry_budget_is_well_under_a_second() -> None:
    """Worst case for one publish to an unreachable Redis (connection attempts times the
    connect timeout, plus the waits between them), from the settings themselves."""
    import celeryconfig

    policy = celeryconfig.task_publish_retry_policy
    attempts = policy["max_retries"] + 1
    waits = sum(
        min(policy["interval_start"] + i * policy["interval_step"], policy["interval_max"])
        for i in range(policy["max_retries"])
    )
    connect = celeryconfig.broker_transport_options["socket_connect_timeout"]
    assert celeryconfig.task_publish_retry is True
    assert attempts * connect + waits < 1.0


def test_a_worker_survives_its_broker_connection_closing_under_it() -> None:
    """kombu restores a channel's unacked tasks when it closes; after Redis went away the
    transport is already gone and that raised an AttributeError that killed the worker."""
    import os

    import redis
    from kombu import Connection

    import core.queue  # noqa: F401  (installs the guard)

    url = os.environ.get("REDIS_URL")
    if not url:  # the embedded Redis the tests run on (tests/conftest.py), by its socket
        from services.policy.limits import get_redis

        url = f"redis+socket://{get_redis().socket_file}"
    with Connection(url, transport_options={"global_keyprefix": "herald-test-guard:"}) as conn:
        channel = conn.channel()
        channel.qos._delivered["tag"] = object()
        channel.connection.client = None  # what a connection lost mid-read leaves behind
        channel.qos.restore_unacked()  # raised AttributeError: 'NoneType' … 'hostname'
        assert not channel.qos._delivered
        # Acking a finished task there is a connection error, which kombu's callers log.
        with pytest.raises(redis.exceptions.ConnectionError):
            channel.qos.ack("tag")
