"""Events out cannot be held by one tenant's receiver: a wall-clock deadline per delivery,
caps per tenant and per host, a breaker per host, tasks that retry as long as the rows
say, and an SSRF guard that connects to the address it judged."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from bench.trickle import TrickleReceiver


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set HERALD_* variables for one test; the cached settings follow."""
    from core.config import get_settings

    def apply(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_event_state() -> Iterator[None]:
    """Caps and breakers live in Redis: no test sees another's."""

    def clear() -> None:
        from services.policy.limits import get_redis, key

        client = get_redis()
        if client is not None:
            for name in client.scan_iter(match=key("events", "*")):
                client.delete(name)

    clear()
    yield
    clear()


def post(url: str) -> str | None:
    from services.reporting.events import _post

    return _post(1, url, {"type": "message.status", "message": {"id": "msg_x"}}, "whsec_x")


def run_with_limit(fn: Any, limit: float = 30.0) -> Any:
    """Run `fn` in a thread and wait for it at most `limit` s: a delivery that never
    ends must fail the test, not hang it."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(value=fn()), daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still running after {limit:.0f}s"
    return box.get("value")


# ------------------------------------------------------------------ the deadline


def test_a_trickling_receiver_is_cut_at_the_deadline(settings: Any) -> None:
    settings(HERALD_EVENTS_DEADLINE_SECONDS="1.5")
    receiver = TrickleReceiver(interval=0.1)  # each byte well inside any read timeout
    try:
        error = run_with_limit(lambda: post(receiver.url))
        assert error == "DeadlineExceeded"
        (conn,) = receiver.snapshot()
        # The receiver was still trickling when Herald hung up on it.
        assert conn.trickled > 0 and conn.request.startswith(b"POST /herald-events")

        def hung_up() -> bool:
            return conn.hung_up_by_client

        run_with_limit(lambda: _wait(hung_up), 10)
    finally:
        receiver.stop()


def test_a_tls_handshake_that_never_ends_is_cut_at_the_deadline(settings: Any) -> None:
    settings(HERALD_EVENTS_DEADLINE_SECONDS="1.5")
    receiver = TrickleReceiver(interval=0.1, tls_stall=True)
    try:
        assert run_with_limit(lambda: post(receiver.url)) == "DeadlineExceeded"
        assert receiver.snapshot()[0].trickled > 0
    finally:
        receiver.stop()


def _wait(check: Any, timeout: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not true within {timeout}s"
        time.sleep(0.02)
    return True


def test_the_deadline_setting_is_checked() -> None:
    from core.config import ConfigError, load_settings

    assert load_settings({"HERALD_EVENTS_DEADLINE_SECONDS": "5"}).events_deadline_seconds == 5
    for bad in ("0", "-1", "31", "soon"):
        with pytest.raises(ConfigError, match="HERALD_EVENTS_DEADLINE_SECONDS"):
            load_settings({"HERALD_EVENTS_DEADLINE_SECONDS": bad})
    with pytest.raises(ConfigError, match="HERALD_EVENTS_PER_TENANT"):
        load_settings({"HERALD_EVENTS_PER_TENANT": "0"})


# ------------------------------------------------------------------ caps and breaker


def test_caps_per_tenant_and_per_host(settings: Any) -> None:
    from services.reporting import fairness

    settings(HERALD_EVENTS_PER_TENANT="2", HERALD_EVENTS_PER_HOST="3")
    a1 = fairness.admit("ten_a", "https://a.example/1")
    a2 = fairness.admit("ten_a", "https://b.example/2")
    assert a1.wait is None and a2.wait is None
    third = fairness.admit("ten_a", "https://c.example/3")
    assert third.wait is not None and third.wait > 0 and third.reason == "tenant cap"
    assert fairness.admit("ten_b", "https://c.example/3").wait is None  # another tenant goes
    # a.example now has one delivery (ten_a's); two more tenants fill it to its cap.
    assert fairness.admit("ten_c", "https://a.example/x").wait is None
    assert fairness.admit("ten_d", "https://a.example/y").wait is None
    full = fairness.admit("ten_e", "https://A.example:443/z")
    assert full.wait is not None and full.reason == "host cap"
    assert a1.slot is not None
    a1.slot.release()
    assert fairness.admit("ten_a", "https://c.example/3").wait is None  # a slot freed


def test_a_slot_a_crashed_worker_never_released_lapses(settings: Any, monkeypatch: Any) -> None:
    from services.reporting import fairness

    settings(HERALD_EVENTS_PER_TENANT="1", HERALD_EVENTS_DEADLINE_SECONDS="0.2")
    monkeypatch.setattr(fairness, "SLOT_MARGIN_SECONDS", 0.1)
    taken = fairness.admit("ten_a", "https://a.example/1")
    assert taken.wait is None  # and never released: the worker died
    assert fairness.admit("ten_a", "https://a.example/1").reason == "tenant cap"
    url = "https://a.example/1"
    run_with_limit(lambda: _wait(lambda: fairness.admit("ten_a", url).wait is None))


def test_breaker_defers_a_failing_host_then_lets_one_probe_through(settings: Any) -> None:
    from services.reporting import fairness

    settings(HERALD_EVENTS_BREAKER_FAILURES="3", HERALD_EVENTS_BREAKER_SECONDS="1")
    url = "https://dead.example/hook"

    def goes(tenant: str, target: str = url) -> bool:
        admission = fairness.admit(tenant, target)
        if admission.slot is not None:
            admission.slot.release()  # only the breaker is under test here
        return admission.wait is None

    for _ in range(2):
        fairness.record(url, ok=False)
    assert goes("ten_a")  # two failures: still closed
    fairness.record(url, ok=False)
    deferred = fairness.admit("ten_a", url)
    assert deferred.wait is not None and deferred.reason == "breaker"
    assert goes("ten_b", "https://alive.example/hook")  # other hosts go
    run_with_limit(lambda: _wait(lambda: fairness.breaker_wait(url) == 0))
    assert goes("ten_a")  # the cool-down is over: one probe
    assert fairness.admit("ten_b", url).reason == "breaker"  # and only one
    fairness.record(url, ok=False)  # the probe failed: open again
    assert fairness.breaker_wait(url) > 0
    run_with_limit(lambda: _wait(lambda: fairness.breaker_wait(url) == 0))
    assert goes("ten_a")
    fairness.record(url, ok=True)  # the probe succeeded: closed for everyone
    assert goes("ten_b") and goes("ten_c")


# ------------------------------------------------------------------ the retry bug


@pytest.mark.parametrize("task_name", ["deliver_events", "deliver_message"])
def test_tasks_retry_as_long_as_the_domain_says(monkeypatch: Any, task_name: str) -> None:
    """Celery took `retry(max_retries=None)` for its default of 3 and failed the task."""
    from services.messages import delivery
    from services.reporting import events
    from workers import tasks

    calls: list[str] = []

    def later(message_id: str) -> float | None:
        calls.append(message_id)
        return 0.01 if len(calls) < 8 else None

    class Outcome:
        def __init__(self, action: str, retry_in: float | None) -> None:
            self.action, self.retry_in = action, retry_in

    def deliver(message_id: str) -> Outcome:
        wait = later(message_id)
        return Outcome("retry" if wait else "sent", wait)

    monkeypatch.setattr(events, "deliver_pending_events", later)
    monkeypatch.setattr(delivery, "deliver", deliver)
    result = getattr(tasks, task_name).apply(args=["msg_x"])
    assert result.state == "SUCCESS", result.result
    assert len(calls) == 8


# ------------------------------------------------------------------ SSRF


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::7f00:1]/x",  # NAT64 of 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/x",  # NAT64 of 169.254.169.254
        "http://[64:ff9b:1::7f00:1]/x",  # local-use NAT64
        "http://[64:ff9b:1:ffff::5db8:d822]/x",  # local-use NAT64, whatever it embeds
        "http://[2002:7f00:1::1]/x",  # 6to4 of 127.0.0.1
        "http://[2002:a00:8::1]/x",  # 6to4 of 10.0.0.8
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/x",  # Teredo, client 127.0.0.1
        "http://[::ffff:127.0.0.1]/x",  # IPv4-mapped
        "http://[::127.0.0.1]/x",  # IPv4-compatible
        "http://[::ffff:10.0.0.1]/x",
        "http://224.0.0.1/x",  # multicast
        "http://[ff02::1]/x",
        "http://0.0.0.0/x",
    ],
)
def test_addresses_that_embed_private_ipv4_are_refused(settings: Any, url: str) -> None:
    from services.reporting.events import refusal

    settings(HERALD_ALLOW_PRIVATE_CALLBACKS="0")
    reason = refusal(url)
    assert reason and reason.startswith("refused"), (url, reason)


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/x",
        "https://[64:ff9b::5db8:d822]/x",  # NAT64 of a public address
        "https://[2002:5db8:d822::1]/x",  # 6to4 of a public address
        "https://[2606:4700::1111]/x",
    ],
)
def test_public_addresses_pass(settings: Any, url: str) -> None:
    from services.reporting.events import refusal

    settings(HERALD_ALLOW_PRIVATE_CALLBACKS="0")
    assert refusal(url) is None


class Loopback:
    """A receiver on 127.0.0.1 that counts what reaches it."""

    def __init__(self) -> None:
        self.hits = 0
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @Request.application
    def app(self, request: Request) -> Response:
        self.hits += 1
        return Response("ok")


def test_a_rebinding_name_never_reaches_loopback(settings: Any, monkeypatch: Any) -> None:
    """The name answers a public address for the check and 127.0.0.1 afterwards: the
    connection must go to the address that was checked (or nowhere)."""
    settings(HERALD_ALLOW_PRIVATE_CALLBACKS="0", HERALD_EVENTS_DEADLINE_SECONDS="3")
    loopback = Loopback()
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.create_connection
    answers: list[str] = []
    connects: list[tuple[str, int]] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        answer = "93.184.216.34" if not answers else "127.0.0.1"
        answers.append(answer)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer, int(port)))]

    def connect(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        connects.append(address)
        if address[0] == "93.184.216.34":  # no traffic leaves this machine in a test
            raise ConnectionRefusedError("not here")
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(socket, "create_connection", connect)
    try:
        error = run_with_limit(lambda: post(f"http://rebind.test:{loopback.port}/herald-events"))
    finally:
        loopback.server.shutdown()
    assert loopback.hits == 0
    assert answers == ["93.184.216.34"]  # resolved once
    assert connects == [("93.184.216.34", loopback.port)]
    assert error == "ConnectError"


def test_every_address_is_judged_not_only_the_first(settings: Any, monkeypatch: Any) -> None:
    settings(HERALD_ALLOW_PRIVATE_CALLBACKS="0")
    real_getaddrinfo = socket.getaddrinfo

    def two(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "two.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", int(port))),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("64:ff9b::7f00:1", int(port), 0, 0)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", two)
    reason = post("https://two.test/x")
    assert reason is not None and reason.startswith("refused")
