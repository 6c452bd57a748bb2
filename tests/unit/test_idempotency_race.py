"""Two API processes racing on one idempotency key, made deterministic: the first
holds its insert uncommitted while the second's insert waits on the unique index (seen
waiting in pg_stat_activity), then the first commits. Same body: one message, the
second answered with it. Another body: the second is a 409. Never two rows."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select, text

from core.errors import HeraldError
from models import Message, Tenant, session_scope
from services.content.schemas import load_message_request
from services.messages.accept import accept

TO = "+12025550143"


def _waiting_on_a_lock(pid: int) -> bool:
    with session_scope() as session:
        return bool(
            session.scalar(
                text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            )
        )


@pytest.mark.parametrize(("second_body", "outcome"), [("once", "replay"), ("other", "conflict")])
def test_two_processes_racing_on_one_key(tenant, dispatched, second_body, outcome) -> None:
    key = f"race-{outcome}"
    answers: dict[str, Any] = {}

    def second() -> None:
        with session_scope() as session:
            answers["pid"] = session.scalar(text("SELECT pg_backend_pid()"))
            answers["started"] = True
            tenant_row = session.get(Tenant, tenant["tenant_id"])
            payload = {"to": TO, "channel": "sms", "body": second_body}
            try:
                item = accept(
                    session, tenant_row, load_message_request(payload), idempotency_key=key
                )
                answers["second"] = (item.created, item.message().id)
            except HeraldError as exc:
                answers["second"] = exc.code

    with session_scope() as session:  # the first process: inserted, not yet committed
        tenant_row = session.get(Tenant, tenant["tenant_id"])
        payload = {"to": TO, "channel": "sms", "body": "once"}
        first = accept(session, tenant_row, load_message_request(payload), idempotency_key=key)
        first_id = first.message().id
        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 30
        while not (answers.get("pid") and _waiting_on_a_lock(answers["pid"])):
            assert time.monotonic() < deadline, "the second insert never waited on the first"
            assert thread.is_alive(), answers
            time.sleep(0.02)
    thread.join(30)  # the first committed as its block ended
    assert first.created
    if outcome == "replay":
        assert answers["second"] == (False, first_id)
    else:
        assert answers["second"] == "idempotency_conflict"
    with session_scope() as session:
        rows = session.scalar(
            select(func.count()).where(
                Message.tenant_id == tenant["tenant_id"], Message.idempotency_key == key
            )
        )
    assert rows == 1
