"""What the single-message accept path no longer pays for: Celery's repr of a batch's
ids on each publish."""

from __future__ import annotations

from typing import Any

from services import dispatch


def test_a_batch_publish_names_its_ids_without_celerys_repr(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import workers.celery_app

    sent: list[dict[str, Any]] = []

    def send_task(name, args=None, queue=None, **options):  # type: ignore[no-untyped-def]
        sent.append({"name": name, "args": args, "queue": queue, **options})

    monkeypatch.setattr(workers.celery_app.app, "send_task", send_task)
    ids = [f"msg_{i:03d}" for i in range(12)]
    assert dispatch._celery_dispatch(dispatch.BATCH_TASK, ids, "herald.send") is None
    assert len(sent) == 1 and sent[0]["args"] == [ids] and sent[0]["ignore_result"]
    assert sent[0]["argsrepr"] == "[['msg_000', ... 'msg_011']] (12 ids)"
    assert sent[0]["kwargsrepr"] == "{}"
    dispatch._celery_dispatch("herald.deliver_events", ["msg_a"], "herald.events")
    assert sent[1]["args"] == ["msg_a"] and sent[1]["argsrepr"] == "['msg_a']"
