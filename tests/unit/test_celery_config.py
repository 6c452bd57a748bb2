"""Celery wiring: one task lands in exactly one queue."""

from __future__ import annotations

from kombu import Connection


def test_each_queue_has_its_own_exchange_and_key() -> None:
    import celeryconfig

    seen = set()
    for queue in celeryconfig.task_queues:
        assert queue.exchange.name == queue.name and queue.routing_key == queue.name
        seen.add((queue.exchange.name, queue.routing_key))
    assert len(seen) == len(celeryconfig.task_queues)


def test_a_task_published_by_exchange_and_key_lands_in_one_queue() -> None:
    # kombu's in-memory transport routes like its Redis one (the same virtual
    # exchange table), so this shows what Redis would hold.
    from workers.celery_app import app

    with Connection("memory://") as conn:
        channel = conn.default_channel
        queues = list(app.amqp.queues.values())  # what a worker declares, defaults applied
        for queue in queues:
            queue(channel).declare()
            channel.queue_purge(queue.name)
        app.send_task(
            "herald.deliver",
            args=["msg_x"],
            exchange="herald.send",
            routing_key="herald.send",
            connection=conn,
        )
        depth = {q.name: channel._size(q.name) for q in queues}
    assert depth == {
        "herald": 0,
        "herald.send": 1,
        "herald.bulk": 0,
        "herald.events": 0,
        "herald.periodic": 0,
    }
