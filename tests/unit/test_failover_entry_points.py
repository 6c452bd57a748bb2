"""`failover` is taken wherever a message is: the batch and the `herald.send_message`
task validate it as `POST /v1/messages` does (services/content/schemas.py)."""

from __future__ import annotations

from models import Message, session_scope

TO = "+12025550143"


def test_the_task_takes_failover(tenant, dispatched) -> None:
    from workers.tasks import send_message

    result = send_message.apply(
        kwargs={
            "tenant_id": tenant["tenant_id"],
            "to": TO,
            "body": "code 1",
            "failover": {"after_seconds": 120},
        }
    ).get()
    assert result["status"] == "queued", result
    with session_scope() as session:
        row = session.get(Message, result["id"])
        assert row.failover_pending and row.failover_at is not None
        assert row.options["failover"] == {"channel": "sms", "after_seconds": 120}
    bad = send_message.apply(
        kwargs={
            "tenant_id": tenant["tenant_id"],
            "to": TO,
            "channel": "sms",
            "body": "x",
            "failover": {},
        }
    ).get()
    assert "failover" in bad["error"]["fields"]


def test_each_batch_entry_takes_failover(client, auth, dispatched) -> None:
    entries = [
        {"to": TO, "body": "a", "failover": {"body": "a by SMS"}},
        {"to": TO, "channel": "sms", "body": "b", "failover": {}},
    ]
    resp = client.post("/v1/messages/batch", json={"messages": entries}, headers=auth)
    assert resp.status_code in (200, 202, 207), resp.get_json()
    first, second = resp.get_json()["data"]
    assert first["message"]["failover"] == {"channel": "sms", "body": "a by SMS"}
    assert "failover" in second["error"]["fields"]
