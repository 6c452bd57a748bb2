"""The spine end to end: real processes (gunicorn API, Celery worker and beat,
Redis, the provider sandbox) over loopback sockets; state read through the
public API only."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.stack import RunningStack

pytestmark = pytest.mark.e2e

FINAL = {"delivered", "read", "failed", "undelivered", "canceled"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(tmp_path_factory.mktemp("stack-home"))
    running.wait_ready()
    yield running
    running.stop()


def api(stack: RunningStack) -> httpx.Client:
    return httpx.Client(
        base_url=stack.info["api"],
        timeout=10,
        headers={"Authorization": f"Bearer {stack.info['api_key']}"},
    )


def wait_status(
    client: httpx.Client, message_id: str, wanted: set[str], timeout: float = 30
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = client.get(f"/v1/messages/{message_id}").json()
        if message["status"] in wanted:
            return message
        time.sleep(0.2)
    raise AssertionError(f"{message_id} stuck in {message['status']}: {message}")


def customer_writes(stack: RunningStack, phone: str, body: str = "Hi!") -> None:
    """A WhatsApp message from `phone` through the sandbox: opens the 24-hour window."""
    sent = httpx.post(
        f"{stack.info['sandbox']}/_sandbox/inbound",
        json={
            "provider": "meta",
            "from": phone,
            "to": stack.info["meta_phone_number_id"],
            "body": body,
        },
    )
    assert sent.json()["status_code"] == 200, sent.text


def test_whatsapp_via_meta_reaches_delivered(stack: RunningStack) -> None:
    client = api(stack)
    closed = client.post("/v1/messages", json={"to": "+12025550143", "body": "Hello"})
    assert closed.status_code == 422 and closed.json()["error"]["code"] == "window_closed"
    customer_writes(stack, "+12025550143")
    resp = client.post(
        "/v1/messages",
        json={
            "to": "+12025550143",
            "channel": "whatsapp",
            "provider": "meta",
            "body": "Your order #123 is ready",
        },
    )
    assert resp.status_code == 202, resp.text
    message = wait_status(client, resp.json()["id"], {"delivered", "read"})
    assert message["provider_message_id"].startswith("wamid.")
    statuses = [e["status"] for e in message["events"] if e["applied"]]
    assert statuses[:3] == ["queued", "sending", "sent"]
    assert "delivered" in statuses
    sends = httpx.get(
        f"{stack.info['sandbox']}/_sandbox/sends", params={"herald_id": message["id"]}
    ).json()["sends"]
    assert len(sends) == 1 and sends[0]["provider"] == "meta"


def test_sms_via_twilio_reaches_delivered(stack: RunningStack) -> None:
    client = api(stack)
    resp = client.post(
        "/v1/messages", json={"to": "+12025550143", "channel": "sms", "body": "Your code is 123456"}
    )
    assert resp.status_code == 202, resp.text
    message = wait_status(client, resp.json()["id"], FINAL)
    assert message["status"] == "delivered"
    assert message["provider"] == "twilio"
    assert message["provider_message_id"].startswith("SM")
    natives = [e["native_status"] for e in message["events"] if e["native_status"]]
    assert "delivered" in natives


def test_bad_input_gets_json_errors_from_the_real_server(stack: RunningStack) -> None:
    client = api(stack)
    bad = client.post(
        "/v1/messages", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "malformed_json"
    anon = httpx.post(f"{stack.info['api']}/v1/messages", json={"to": "+12025550143", "body": "x"})
    assert anon.status_code == 401 and "error" in anon.json()
    assert client.get("/v1/messages/msg_unknown").status_code == 404


def test_ctrl_c_stops_everything_and_a_second_run_reuses_the_data(tmp_path: Path) -> None:
    first = RunningStack(tmp_path / "home")
    info = first.wait_ready()
    client = api(first)
    mid = client.post(
        "/v1/messages", json={"to": "+12025550143", "channel": "sms", "body": "before restart"}
    ).json()["id"]
    wait_status(client, mid, FINAL)
    assert first.stop() == 0, first.log_tail()
    for url in (info["api"], info["sandbox"]):
        host, port = url.removeprefix("http://").split(":")
        with socket.socket() as s:
            assert s.connect_ex((host, int(port))) != 0, f"{url} still listening after stop"

    second = RunningStack(tmp_path / "home")
    try:
        again = second.wait_ready()
        assert again["api_key"] == info["api_key"]
        message = api(second).get(f"/v1/messages/{mid}").json()
        assert message["status"] == "delivered"
    finally:
        assert second.stop() == 0, second.log_tail()


CELERY_ONLY_CLIENT = """
import json, sys
from celery import Celery
broker, prefix, tenant = sys.argv[1:4]
options = {"global_keyprefix": prefix} if prefix else {}
app = Celery(broker=broker, backend=broker)
app.conf.broker_transport_options = options
app.conf.result_backend_transport_options = options
kwargs = {"tenant_id": tenant, "to": "+12025550143", "channel": "sms",
          "body": "New interest in your vehicle", "idempotency_key": "lead-981"}
first = app.send_task("herald.send_message", kwargs=kwargs, queue="herald").get(timeout=30)
again = app.send_task("herald.send_message", kwargs=kwargs, queue="herald").get(timeout=30)
bad = app.send_task("herald.send_message", kwargs={"tenant_id": tenant, "to": "nope"},
                    queue="herald").get(timeout=30)
ours = ("services", "models", "api", "herald", "workers", "providers")
herald_loaded = [m for m in sys.modules if m.split(".")[0] in ours]
print(json.dumps({"first": first, "again": again, "bad": bad, "herald_loaded": herald_loaded}))
"""


def test_celery_task_pushed_by_a_client_without_herald_code(stack: RunningStack) -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CELERY_ONLY_CLIENT,
            stack.info["redis"],
            stack.env.get("HERALD_QUEUE_PREFIX", ""),
            stack.info["tenant_id"],
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["herald_loaded"] == []
    assert result["first"]["id"].startswith("msg_") and result["first"]["status"] == "queued"
    assert result["again"]["id"] == result["first"]["id"]  # idempotency_key
    assert result["bad"]["error"]["code"] == "invalid_fields"
    message = wait_status(api(stack), result["first"]["id"], FINAL)
    assert message["status"] == "delivered"


def test_campaign_released_by_beat_within_its_rate(stack: RunningStack) -> None:
    client = api(stack)
    recipients = [{"to": f"+120255502{n:02d}"} for n in range(15)]
    recipients += [{"to": "+12025550200"}, {"to": "bad"}]  # a duplicate and an invalid row
    resp = client.post(
        "/v1/campaigns",
        json={
            "name": "Appointment reminders",
            "channel": "sms",
            "body": "See you tomorrow",
            "rate": 5,
            "recipients": recipients,
        },
    )
    assert resp.status_code == 201, resp.text
    campaign = resp.json()
    assert (campaign["total"], campaign["duplicates"], campaign["invalid"]) == (15, 1, 1)
    # `completed` once every row has left Herald; the `delivered` callbacks may land later.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        campaign = client.get(f"/v1/campaigns/{campaign['id']}").json()
        if campaign["status"] == "completed" and campaign["counts"].get("delivered") == 15:
            break
        time.sleep(0.5)
    assert campaign["status"] == "completed", campaign
    assert campaign["counts"]["delivered"] == 15 and campaign["progress"] == 1.0
    sends = httpx.get(
        f"{stack.info['sandbox']}/_sandbox/sends", params={"accepted": "true"}
    ).json()["sends"]
    ours = [s for s in sends if s["to"].startswith("+120255502")]
    assert sorted(s["to"] for s in ours) == sorted(r["to"] for r in recipients[:15])
    times = sorted(s["received_at"] for s in ours)
    # 5/s with one second's burst to start: 15 messages need at least ~2 s.
    assert times[-1] - times[0] >= 1.6, times
