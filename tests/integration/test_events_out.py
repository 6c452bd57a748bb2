"""Events out: status changes POSTed to the callback URL, signed,
retried with backoff, in order per message."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from models import EventDelivery, Tenant, session_scope, utcnow
from services.messages.delivery import deliver
from services.reporting.events import deliver_pending_events, webhook_secret
from tests.integration.conftest import wait_for


class Receiver:
    """A tenant's endpoint: records events, fails the first `fail` requests."""

    def __init__(self) -> None:
        self.events: list[tuple[dict, str, bytes]] = []
        self.attempts: list[str] = []  # the event id of every request, answered or refused
        self.fail = 0
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/herald-events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @Request.application
    def app(self, request: Request) -> Response:
        self.attempts.append(json.loads(request.get_data()).get("id", ""))
        if self.fail > 0:
            self.fail -= 1
            return Response("down", status=503)
        self.events.append(
            (
                json.loads(request.get_data()),
                request.headers["X-Herald-Signature"],
                request.get_data(),
            )
        )
        return Response("ok")


@pytest.fixture
def receiver():  # type: ignore[no-untyped-def]
    r = Receiver()
    yield r
    r.server.shutdown()


def secret_of(tenant_id: str) -> str:
    with session_scope() as session:
        return webhook_secret(session.get(Tenant, tenant_id))


def test_status_changes_are_posted_signed_and_in_order(
    live, client, auth, tenant, receiver, dispatched
) -> None:
    resp = client.post(
        "/v1/messages",
        headers=auth,
        json={"to": "+12025550143", "body": "Your order is ready", "callback_url": receiver.url},
    )
    mid = resp.get_json()["id"]
    live.config(callback_delay=0.3)  # statuses far enough apart to arrive in order, mostly
    assert deliver(mid).action == "sent"
    wait_for(
        lambda: client.get(f"/v1/messages/{mid}", headers=auth).get_json()["status"] == "read",
        what="read",
    )
    deliver_pending_events(mid)
    statuses = [e["message"]["status"] for e, _sig, _raw in receiver.events]
    # The sandbox's `delivered` and `read` callbacks race each other (as real ones can):
    # when `read` lands first, `delivered` is a step back and owes no event.
    assert statuses in (["sending", "sent", "delivered", "read"], ["sending", "sent", "read"])
    secret = secret_of(tenant["tenant_id"])
    for event, signature, raw in receiver.events:
        assert event["type"] == "message.status" and event["message"]["id"] == mid
        parts = dict(p.split("=", 1) for p in signature.split(","))
        expected = hmac.new(
            secret.encode(), f"{parts['t']}.".encode() + raw, hashlib.sha256
        ).hexdigest()
        assert hmac.compare_digest(parts["v1"], expected)
    assert set(dispatched.events) == {mid}


def test_failed_event_is_retried_and_holds_back_later_ones(
    live, client, auth, receiver, dispatched
) -> None:
    resp = client.post(
        "/v1/messages",
        headers=auth,
        json={"to": "+12025550143", "body": "x", "channel": "sms", "callback_url": receiver.url},
    )
    mid = resp.get_json()["id"]
    receiver.fail = 1
    assert deliver(mid).action == "sent"  # sending + sent owed
    retry_in = deliver_pending_events(mid)
    assert retry_in is not None and retry_in > 0
    assert receiver.events == []  # the second event waits for the first
    with session_scope() as session:
        first = session.scalars(
            select(EventDelivery).where(EventDelivery.message_id == mid).order_by(EventDelivery.id)
        ).first()
        assert (first.status, first.attempts, first.last_error) == ("pending", 1, "HTTP 503")
        session.execute(
            update(EventDelivery)
            .where(EventDelivery.message_id == mid)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
    assert deliver_pending_events(mid) is None
    assert [e["message"]["status"] for e, _s, _r in receiver.events][:2] == ["sending", "sent"]


def test_tenant_callback_url_is_used_without_a_message_one(
    live, client, auth, tenant, receiver, dispatched
) -> None:
    with session_scope() as session:
        session.execute(
            update(Tenant).where(Tenant.id == tenant["tenant_id"]).values(callback_url=receiver.url)
        )
    mid = client.post(
        "/v1/messages", headers=auth, json={"to": "+12025550143", "body": "x", "channel": "sms"}
    ).get_json()["id"]
    deliver(mid)
    deliver_pending_events(mid)
    assert receiver.events and receiver.events[0][0]["message"]["id"] == mid


def test_no_callback_url_means_no_events(live, client, auth, dispatched) -> None:
    mid = client.post(
        "/v1/messages", headers=auth, json={"to": "+12025550143", "body": "x", "channel": "sms"}
    ).get_json()["id"]
    deliver(mid)
    with session_scope() as session:
        assert (
            session.scalars(select(EventDelivery).where(EventDelivery.message_id == mid)).all()
            == []
        )


def test_a_batch_owes_events_only_for_messages_someone_listens_to(
    live, client, auth, receiver, dispatched
) -> None:
    """The batch path asks once who listens; each answer must still land on its message."""
    from services.messages.delivery import deliver_many

    heard = client.post(
        "/v1/messages",
        headers=auth,
        json={"to": "+12025550143", "body": "a", "channel": "sms", "callback_url": receiver.url},
    ).get_json()["id"]
    unheard = client.post(
        "/v1/messages", headers=auth, json={"to": "+12025550143", "body": "b", "channel": "sms"}
    ).get_json()["id"]
    assert [o.action for o in deliver_many([unheard, heard])] == ["sent", "sent"]
    with session_scope() as session:
        owed = session.scalars(
            select(EventDelivery)
            .where(EventDelivery.message_id.in_([heard, unheard]))
            .order_by(EventDelivery.id)
        ).all()
    assert [(e.message_id, e.payload["message"]["status"]) for e in owed][:2] == [
        (heard, "sending"),
        (heard, "sent"),
    ]
    assert unheard not in {e.message_id for e in owed}
    assert owed[1].payload["message"]["provider_message_id"].startswith("SM")


def test_database_is_free_while_an_event_is_posted(live, client, auth, tenant, dispatched) -> None:
    # The tenant's endpoint is slow and, meanwhile, the system must keep writing (a
    # transaction held across the POST would hold its row locks for the whole timeout).
    from models import Contact

    wrote: list[bool] = []

    class Slow(Receiver):
        @Request.application
        def app(self, request: Request) -> Response:
            with session_scope() as session:
                phone = f"+1202555{len(wrote):04d}"  # one new row per event
                session.add(Contact(tenant_id=tenant["tenant_id"], phone=phone))
            wrote.append(True)
            return Response("ok")

    slow = Slow()
    try:
        mid = client.post(
            "/v1/messages",
            headers=auth,
            json={"to": "+12025550143", "body": "x", "channel": "sms", "callback_url": slow.url},
        ).get_json()["id"]
        deliver(mid)
        # The sandbox's callbacks arrive on their own time: every status first, then events.
        wait_for(
            lambda: (
                client.get(f"/v1/messages/{mid}", headers=auth).get_json()["status"] == "delivered"
            ),
            what="delivered",
        )
        assert deliver_pending_events(mid) is None
        assert wrote and all(wrote)
        with session_scope() as session:
            states = session.scalars(
                select(EventDelivery.status).where(EventDelivery.message_id == mid)
            ).all()
        assert states and set(states) == {"delivered"}
    finally:
        slow.server.shutdown()


def test_callbacks_to_private_addresses_are_refused(
    live, client, auth, receiver, dispatched, monkeypatch
) -> None:
    from core.config import get_settings
    from services.reporting.events import refusal

    monkeypatch.setenv("HERALD_ALLOW_PRIVATE_CALLBACKS", "0")
    get_settings.cache_clear()
    try:
        for url in (
            receiver.url,
            "http://10.0.0.8/x",
            "http://169.254.169.254/latest",
            "http://[::1]:80/x",
            "ftp://example.com/x",
        ):
            assert refusal(url), url
        assert refusal("https://93.184.216.34/herald-events") is None  # a public address
        mid = client.post(
            "/v1/messages",
            headers=auth,
            json={
                "to": "+12025550143",
                "body": "x",
                "channel": "sms",
                "callback_url": receiver.url,
            },
        ).get_json()["id"]
        deliver(mid)
        # The sandbox's callbacks owe events too: let them land before the events go out.
        wait_for(
            lambda: (
                client.get(f"/v1/messages/{mid}", headers=auth).get_json()["status"] == "delivered"
            ),
            what="the delivered callback",
        )
        assert deliver_pending_events(mid) is None
        assert receiver.events == []
        with session_scope() as session:
            rows = session.scalars(
                select(EventDelivery).where(EventDelivery.message_id == mid)
            ).all()
        assert rows and all(
            r.status == "failed" and r.last_error.startswith("refused") for r in rows
        )
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


# ---------------------------------------------------------------- one tenant's receiver


@pytest.fixture
def events_settings(monkeypatch):  # type: ignore[no-untyped-def]
    """Event settings for one test, and no cap or breaker left over from another."""
    from core.config import get_settings
    from services.policy.limits import get_redis, key

    def clear() -> None:
        client = get_redis()
        if client is not None:
            for name in client.scan_iter(match=key("events", "*")):
                client.delete(name)

    def apply(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    clear()
    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()
    clear()


def _owed(client, auth, url: str) -> str:  # type: ignore[no-untyped-def]
    """A message sent with events owed to `url` (sending, sent)."""
    mid = client.post(
        "/v1/messages",
        headers=auth,
        json={"to": "+12025550143", "body": "x", "channel": "sms", "callback_url": url},
    ).get_json()["id"]
    assert deliver(mid).action == "sent"
    return mid


def _rows(mid: str) -> list[EventDelivery]:
    with session_scope() as session:
        rows = session.scalars(
            select(EventDelivery).where(EventDelivery.message_id == mid).order_by(EventDelivery.id)
        ).all()
        session.expunge_all()
        return list(rows)


def _in_thread(fn):  # type: ignore[no-untyped-def]
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(value=fn()), daemon=True)
    thread.start()
    return thread, box


def test_a_hanging_receiver_takes_only_its_tenants_share(
    live, client, auth, receiver, dispatched, events_settings
) -> None:
    """While one delivery of tenant A hangs on a trickling receiver, A's next delivery is
    deferred (not attempted, not counted) and tenant B's goes at once; the hanging one
    ends at the deadline."""
    from bench.trickle import TrickleReceiver
    from tests.conftest import make_tenant

    events_settings(HERALD_EVENTS_PER_TENANT="1", HERALD_EVENTS_DEADLINE_SECONDS="8")
    trickle = TrickleReceiver(interval=0.5)
    try:
        first, second = _owed(client, auth, trickle.url), _owed(client, auth, trickle.url)
        hanging, outcome = _in_thread(lambda: deliver_pending_events(first))
        wait_for(lambda: trickle.open_connections(), what="the first delivery to hang")
        wait = deliver_pending_events(second)  # same tenant, while the first hangs
        assert wait is not None and wait > 0
        assert len(trickle.snapshot()) == 1  # never connected
        row = _rows(second)[0]
        assert (row.status, row.attempts) == ("pending", 0)
        assert row.next_attempt_at > utcnow()  # the sweeper waits too

        other = make_tenant("other")
        other_auth = {"Authorization": f"Bearer {other['api_key']}"}
        theirs = _owed(client, other_auth, receiver.url)
        assert deliver_pending_events(theirs) is None  # B is not behind A
        assert trickle.open_connections()  # and A's delivery was still hanging meanwhile
        assert {r.status for r in _rows(theirs)} == {"delivered"}

        hanging.join(30)
        assert not hanging.is_alive(), "the hanging delivery outlived its deadline"
        assert outcome["value"] is not None  # retried later
        row = _rows(first)[0]
        assert (row.status, row.attempts, row.last_error) == ("pending", 1, "DeadlineExceeded")
    finally:
        trickle.stop()


def test_a_host_whose_breaker_is_open_is_not_attempted(
    live, client, auth, dispatched, events_settings
) -> None:
    from bench.trickle import TrickleReceiver
    from services.reporting import fairness

    events_settings(
        HERALD_EVENTS_BREAKER_FAILURES="1",
        HERALD_EVENTS_BREAKER_SECONDS="600",
        HERALD_EVENTS_DEADLINE_SECONDS="1",
    )
    trickle = TrickleReceiver(interval=0.2)
    try:
        first, second = _owed(client, auth, trickle.url), _owed(client, auth, trickle.url)
        assert deliver_pending_events(first) is not None  # cut at the deadline: one failure
        assert _rows(first)[0].last_error == "DeadlineExceeded"
        assert fairness.breaker_wait(trickle.url) > 0
        wait = deliver_pending_events(second)
        assert wait is not None and wait > 500  # the cool-down, not a quick retry
        assert len(trickle.snapshot()) == 1  # the second was never attempted
        assert _rows(second)[0].attempts == 0
    finally:
        trickle.stop()


def _make_due(message_id: str) -> None:
    """The retry's time has come: the row is moved, not the clock waited for."""
    with session_scope() as session:
        session.execute(
            update(EventDelivery)
            .where(EventDelivery.message_id == message_id, EventDelivery.status == "pending")
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


def test_an_event_is_given_up_after_its_last_attempt_and_never_tried_again(
    live, client, auth, receiver, dispatched, monkeypatch, caplog
) -> None:
    """A receiver that always fails: each event gets exactly MAX_ATTEMPTS POSTs, in
    order, is then `failed` with its last error, holds back no later event, and no
    task, retry or sweep POSTs it again."""
    from core.config import get_settings
    from services.reporting import events, fairness

    # The host breaker would defer (not attempt) after 5 failures; this test counts
    # attempts, so it stays closed.
    monkeypatch.setenv("HERALD_EVENTS_BREAKER_FAILURES", "1000")
    get_settings.cache_clear()
    fairness.record(receiver.url, ok=True)
    receiver.fail = 10**9  # every request answered 503
    body = {"to": "+12025550143", "body": "x", "channel": "sms", "callback_url": receiver.url}
    try:
        mid = client.post("/v1/messages", headers=auth, json=body).get_json()["id"]
        assert deliver(mid).action == "sent"
        wait_for(  # every status owes its event before the events are driven
            lambda: (
                client.get(f"/v1/messages/{mid}", headers=auth).get_json()["status"] == "delivered"
            ),
            what="delivered",
        )
        with session_scope() as session:
            owed = session.scalars(
                select(EventDelivery.id)
                .where(EventDelivery.message_id == mid)
                .order_by(EventDelivery.id)
            ).all()
        assert len(owed) >= 2
        for _ in range(len(owed) * events.MAX_ATTEMPTS):  # one attempt per call while failing
            if events.deliver_pending_events(mid) is None:
                break
            _make_due(mid)
        assert events.deliver_pending_events(mid) is None  # nothing left to try
        given_up = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
        assert given_up == [  # what the events worker's log says, one line per event
            f"event {i} given up after {events.MAX_ATTEMPTS} attempts: HTTP 503" for i in owed
        ]
        expected = [f"evt_{i}" for i in owed for _ in range(events.MAX_ATTEMPTS)]
        assert receiver.attempts == expected  # each exactly MAX_ATTEMPTS times, in order
        with session_scope() as session:
            rows = session.scalars(
                select(EventDelivery)
                .where(EventDelivery.message_id == mid)
                .order_by(EventDelivery.id)
            ).all()
        assert [(r.status, r.attempts, r.last_error) for r in rows] == [
            ("failed", events.MAX_ATTEMPTS, "HTTP 503")
        ] * len(owed)
        # Given up is final: neither a late task nor the sweeper tries again.
        _make_due(mid)
        with session_scope() as session:
            session.execute(
                update(EventDelivery)
                .where(EventDelivery.message_id == mid)
                .values(next_attempt_at=utcnow() - timedelta(hours=1))
            )
        assert mid not in events.overdue_event_messages(limit=100_000)
        assert events.deliver_pending_events(mid) is None
        assert len(receiver.attempts) == len(expected)
    finally:
        monkeypatch.delenv("HERALD_EVENTS_BREAKER_FAILURES")
        get_settings.cache_clear()
