"""Provider sandbox: real Twilio client and httpx against it; signed callbacks to a receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from sandbox.app import SandboxServer, serve
from sandbox.state import (
    DEFAULT_META_PHONE_ID,
    DEFAULT_META_SECRET,
    DEFAULT_META_TOKEN,
    DEFAULT_TWILIO_SID,
    DEFAULT_TWILIO_TOKEN,
    SandboxState,
)

ROOT = Path(__file__).resolve().parents[2]
SID_RE = re.compile(r"^SM[0-9a-f]{32}$")
WAMID_RE = re.compile(r"^wamid\.[A-Za-z0-9+/=]{30,70}$")
SMS_FROM = "+15017122661"
WA_FROM = "whatsapp:+14155238886"
CUSTOMER = "+15551234567"


class Receiver:
    """Stands in for Herald's webhook endpoints; records every request it gets."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.fail_next: dict[str, int] = {}
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @Request.application
    def app(self, request: Request) -> Response:
        body = request.get_data()
        form = {}
        if request.mimetype == "application/x-www-form-urlencoded":
            form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        with self.lock:
            failing = self.fail_next.get(request.path, 0)
            if failing:
                self.fail_next[request.path] = failing - 1
            else:
                self.requests.append(
                    {
                        "path": request.path,
                        "url": request.url,
                        "headers": dict(request.headers),
                        "body": body,
                        "form": form,
                    }
                )
        return Response("boom" if failing else "ok", status=500 if failing else 200)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.fail_next.clear()

    def matching(self, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if pred(r)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(fn: Callable[[], Any], timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def meta_statuses(req: dict[str, Any]) -> list[dict[str, Any]]:
    value = json.loads(req["body"])["entry"][0]["changes"][0]["value"]
    return value.get("statuses", [])


def meta_signature_ok(req: dict[str, Any], secret: str = DEFAULT_META_SECRET) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), req["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, req["headers"].get("X-Hub-Signature-256", ""))


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    recv = Receiver()
    yield recv
    recv.stop()


@pytest.fixture(scope="module")
def sandbox(receiver: Receiver) -> Iterator[SandboxServer]:
    state = SandboxState(
        callback_delay=0.05,
        meta_webhook_url=f"{receiver.url}/webhooks/meta",
        twilio_inbound_url=f"{receiver.url}/webhooks/twilio/inbound",
    )
    server = serve(state)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean(request: pytest.FixtureRequest) -> None:
    if "sandbox" in request.fixturenames:
        sb: SandboxServer = request.getfixturevalue("sandbox")
        httpx.post(f"{sb.url}/_sandbox/reset").raise_for_status()
        request.getfixturevalue("receiver").clear()


@pytest.fixture
def twilio(sandbox: SandboxServer) -> Client:
    client = Client(DEFAULT_TWILIO_SID, DEFAULT_TWILIO_TOKEN)
    client.api.base_url = sandbox.url
    return client


def status_url(receiver: Receiver, herald_id: str) -> str:
    return f"{receiver.url}/webhooks/twilio/status?message_id={herald_id}"


def twilio_callbacks(receiver: Receiver, sid: str) -> list[dict[str, Any]]:
    return receiver.matching(
        lambda r: r["form"].get("MessageSid") == sid and r["path"] == "/webhooks/twilio/status"
    )


def meta_send(
    sb: SandboxServer,
    payload: dict[str, Any],
    token: str = DEFAULT_META_TOKEN,
    phone_id: str = DEFAULT_META_PHONE_ID,
) -> httpx.Response:
    return httpx.post(
        f"{sb.url}/v22.0/{phone_id}/messages",
        json=payload,
        headers={"Authorization": f"Bearer {token}"},
    )


def text(to: str = CUSTOMER, body: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "text",
        "text": {"body": body},
        **extra,
    }


def control(sb: SandboxServer, method: str, path: str, **kw: Any) -> Any:
    response = httpx.request(method, f"{sb.url}/_sandbox{path}", **kw)
    response.raise_for_status()
    return response.json()


# -- Twilio ------------------------------------------------------------------------------------


def test_twilio_sms_send_gets_signed_status_callbacks(
    twilio: Client, sandbox: SandboxServer, receiver: Receiver
) -> None:
    url = status_url(receiver, "msg_01JSMS")
    msg = twilio.messages.create(to=CUSTOMER, from_=SMS_FROM, body="hi", status_callback=url)
    assert SID_RE.match(msg.sid)
    assert (msg.status, msg.direction, msg.num_segments, msg.price) == (
        "queued",
        "outbound-api",
        "1",
        None,
    )
    assert msg.account_sid == DEFAULT_TWILIO_SID and msg.date_created is not None

    calls = wait_for(
        lambda: (
            len(twilio_callbacks(receiver, msg.sid)) >= 2 and twilio_callbacks(receiver, msg.sid)
        )
    )
    assert [c["form"]["MessageStatus"] for c in calls] == ["sent", "delivered"]
    validator = RequestValidator(DEFAULT_TWILIO_TOKEN)
    for call in calls:
        assert call["url"] == url
        assert validator.validate(call["url"], call["form"], call["headers"]["X-Twilio-Signature"])
        assert call["form"]["SmsSid"] == msg.sid and call["form"]["From"] == SMS_FROM
        assert "ChannelPrefix" not in call["form"]
    forged = dict(calls[0]["form"], MessageStatus="failed")
    assert not validator.validate(url, forged, calls[0]["headers"]["X-Twilio-Signature"])

    fetched = twilio.messages(msg.sid).fetch()
    assert (fetched.status, fetched.price, fetched.price_unit) == ("delivered", "-0.00790", "USD")
    with pytest.raises(TwilioRestException) as exc:
        twilio.messages("SM" + "0" * 32).fetch()
    assert (exc.value.status, exc.value.code) == (404, 20404)


def test_twilio_whatsapp_send_gets_read_callback(
    twilio: Client, sandbox: SandboxServer, receiver: Receiver
) -> None:
    msg = twilio.messages.create(
        to=f"whatsapp:{CUSTOMER}",
        from_=WA_FROM,
        body="hola",
        status_callback=status_url(receiver, "msg_01JWA"),
    )
    assert SID_RE.match(msg.sid) and msg.to == f"whatsapp:{CUSTOMER}"
    calls = wait_for(
        lambda: (
            len(twilio_callbacks(receiver, msg.sid)) >= 3 and twilio_callbacks(receiver, msg.sid)
        )
    )
    assert [c["form"]["MessageStatus"] for c in calls] == ["sent", "delivered", "read"]
    assert all(c["form"]["ChannelPrefix"] == "whatsapp" for c in calls)
    sends = control(sandbox, "GET", "/sends", params={"herald_id": "msg_01JWA"})["sends"]
    assert len(sends) == 1 and sends[0]["provider_message_id"] == msg.sid
    assert sends[0]["accepted"] is True and sends[0]["channel"] == "whatsapp"


def test_twilio_messaging_service_media_and_list(twilio: Client) -> None:
    mg = "MG" + "1" * 32
    via_service = twilio.messages.create(to=CUSTOMER, messaging_service_sid=mg, body="x")
    assert via_service.status == "accepted" and via_service.num_segments == "0"
    assert via_service.messaging_service_sid == mg and via_service.from_ is None
    mms = twilio.messages.create(
        to=CUSTOMER, from_=SMS_FROM, media_url=["https://example.com/a.jpg"]
    )
    assert re.match(r"^MM[0-9a-f]{32}$", mms.sid) and mms.num_media == "1"
    listed = twilio.messages.list(to=CUSTOMER, limit=10)
    assert [m.sid for m in listed] == [mms.sid, via_service.sid]  # newest first
    paged = twilio.messages.list(to=CUSTOMER, page_size=1, limit=5)
    assert [m.sid for m in paged] == [mms.sid, via_service.sid]  # follows next_page_uri


def test_twilio_auth_failures(sandbox: SandboxServer, twilio: Client) -> None:
    bad = Client(DEFAULT_TWILIO_SID, "wrong-token")
    bad.api.base_url = sandbox.url
    with pytest.raises(TwilioRestException) as exc:
        bad.messages.create(to=CUSTOMER, from_=SMS_FROM, body="x")
    assert (exc.value.status, exc.value.code) == (401, 20003)
    other = "AC" + "0" * 32
    response = httpx.post(
        f"{sandbox.url}/2010-04-01/Accounts/{other}/Messages.json",
        data={"To": CUSTOMER, "From": SMS_FROM, "Body": "x"},
        auth=(DEFAULT_TWILIO_SID, DEFAULT_TWILIO_TOKEN),
    )
    assert response.status_code == 401
    assert response.json() == {
        "code": 20003,
        "message": "Authenticate",
        "detail": response.json()["detail"],
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    rejected = control(sandbox, "GET", "/sends", params={"accepted": "false"})["sends"]
    assert [s["error_code"] for s in rejected] == [20003, 20003]


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"to": CUSTOMER, "from_": SMS_FROM}, 21619),
        ({"to": CUSTOMER, "from_": SMS_FROM, "body": "x" * 1601}, 21617),
        ({"to": f"whatsapp:{CUSTOMER}", "from_": SMS_FROM, "body": "x"}, 21910),
        ({"to": "12345", "from_": SMS_FROM, "body": "x"}, 21211),
        ({"to": CUSTOMER, "from_": SMS_FROM, "content_sid": "HXnope"}, 21655),
    ],
)
def test_twilio_validation_errors(twilio: Client, kwargs: dict[str, Any], code: int) -> None:
    with pytest.raises(TwilioRestException) as exc:
        twilio.messages.create(**kwargs)
    assert (exc.value.status, exc.value.code) == (400, code)
    assert exc.value.uri.endswith("/Messages.json")


@pytest.mark.parametrize(
    ("to", "code"),
    [
        ("+15005550001", 21211),
        ("+15005550003", 21408),
        ("+15005550004", 21610),
        ("whatsapp:+15005550004", 21610),
        ("+15005550009", 21614),
        ("+15005550002", 21612),
    ],
)
def test_twilio_magic_numbers_fail_synchronously(twilio: Client, to: str, code: int) -> None:
    sender = WA_FROM if to.startswith("whatsapp:") else SMS_FROM
    with pytest.raises(TwilioRestException) as exc:
        twilio.messages.create(to=to, from_=sender, body="x")
    assert (exc.value.status, exc.value.code) == (400, code)


def test_twilio_window_closed_allows_templates(twilio: Client) -> None:
    msg = twilio.messages.create(
        to="whatsapp:+12015550116",
        from_=WA_FROM,
        content_sid="HX" + "a" * 32,
        content_variables='{"1": "Ana"}',
    )
    assert msg.status == "queued"


@pytest.mark.parametrize(
    ("to", "statuses", "error_code"),
    [
        ("+12015550106", ["sent", "undelivered"], "30003"),
        ("+12015550107", ["failed"], "30008"),
        ("whatsapp:+12015550116", ["failed"], "63016"),  # free-form outside the window
    ],
)
def test_twilio_magic_numbers_fail_asynchronously(
    twilio: Client, receiver: Receiver, to: str, statuses: list[str], error_code: str
) -> None:
    sender = WA_FROM if to.startswith("whatsapp:") else SMS_FROM
    msg = twilio.messages.create(
        to=to, from_=sender, body="x", status_callback=status_url(receiver, "msg_async")
    )
    assert msg.status == "queued"
    calls = wait_for(
        lambda: (
            len(twilio_callbacks(receiver, msg.sid)) >= len(statuses)
            and twilio_callbacks(receiver, msg.sid)
        )
    )
    assert [c["form"]["MessageStatus"] for c in calls] == statuses
    assert calls[-1]["form"]["ErrorCode"] == error_code and calls[-1]["form"]["ErrorMessage"]
    assert twilio.messages(msg.sid).fetch().error_code == int(error_code)


# -- Meta --------------------------------------------------------------------------------------


def test_meta_text_send_and_signed_status_webhooks(
    sandbox: SandboxServer, receiver: Receiver
) -> None:
    response = meta_send(sandbox, text(biz_opaque_callback_data="msg_01JMETA"))
    assert response.status_code == 200
    data = response.json()
    wamid = data["messages"][0]["id"]
    assert WAMID_RE.match(wamid) and "message_status" not in data["messages"][0]
    assert data["contacts"] == [{"input": CUSTOMER, "wa_id": CUSTOMER[1:]}]

    hooks = wait_for(
        lambda: (
            len(
                got := receiver.matching(
                    lambda r: r["path"] == "/webhooks/meta" and wamid in r["body"].decode()
                )
            )
            >= 3
            and got
        )
    )
    statuses = [meta_statuses(h)[0] for h in hooks]
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    assert all(meta_signature_ok(h) for h in hooks)
    assert all(s["biz_opaque_callback_data"] == "msg_01JMETA" for s in statuses)
    assert statuses[0]["recipient_id"] == CUSTOMER[1:] and statuses[0]["timestamp"].isdigit()
    assert statuses[0]["pricing"]["category"] == "service" and "pricing" not in statuses[2]
    envelope = json.loads(hooks[0]["body"])
    assert envelope["object"] == "whatsapp_business_account"
    change = envelope["entry"][0]["changes"][0]
    assert change["field"] == "messages"
    assert change["value"]["metadata"]["phone_number_id"] == DEFAULT_META_PHONE_ID
    tampered = dict(hooks[0], body=hooks[0]["body"].replace(b"sent", b"read"))
    assert not meta_signature_ok(tampered)


def test_meta_template_image_and_interactive(sandbox: SandboxServer) -> None:
    template = {
        "messaging_product": "whatsapp",
        "to": "15551230000",
        "type": "template",
        "template": {"name": "order_update", "language": {"code": "en_US"}},
    }
    response = meta_send(sandbox, template)
    assert response.status_code == 200
    assert response.json()["messages"][0]["message_status"] == "accepted"
    image = {
        "messaging_product": "whatsapp",
        "to": CUSTOMER,
        "type": "image",
        "image": {"link": "https://example.com/a.png", "caption": "look"},
    }
    interactive = {
        "messaging_product": "whatsapp",
        "to": CUSTOMER,
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": {"text": "Confirm?"},
            "action": {"buttons": [{"type": "reply", "reply": {"id": "yes", "title": "Yes"}}]},
        },
    }
    for payload in (image, interactive):
        assert WAMID_RE.match(meta_send(sandbox, payload).json()["messages"][0]["id"])
    sends = control(sandbox, "GET", "/sends", params={"provider": "meta"})["sends"]
    assert [(s["type"], s["body"]) for s in sends] == [
        ("template", "order_update"),
        ("image", "look"),
        ("interactive", "Confirm?"),
    ]


def test_meta_auth_failures(sandbox: SandboxServer) -> None:
    response = meta_send(sandbox, text(), token="nope")
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (190, "OAuthException") and error["fbtrace_id"]
    unknown = meta_send(sandbox, text(), phone_id="999999999999999")
    assert unknown.status_code == 400
    error = unknown.json()["error"]
    assert (error["code"], error["error_subcode"]) == (100, 33)
    assert "999999999999999" in error["message"]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"to": CUSTOMER, "text": {"body": "x"}}, "messaging_product"),
        (text(body="x" * 4097), "4096"),
        ({**text(), "type": "carousel"}, "type must be one of"),
        (
            {
                "messaging_product": "whatsapp",
                "to": CUSTOMER,
                "type": "template",
                "template": {"name": "t"},
            },
            "language",
        ),
        (
            {"messaging_product": "whatsapp", "to": CUSTOMER, "type": "image", "image": {}},
            "'id' or 'link'",
        ),
        (
            {
                "messaging_product": "whatsapp",
                "to": CUSTOMER,
                "type": "interactive",
                "interactive": {"type": "button"},
            },
            "action",
        ),
        (text(to="12ab"), "Param to"),
    ],
)
def test_meta_validation_errors(
    sandbox: SandboxServer, payload: dict[str, Any], fragment: str
) -> None:
    response = meta_send(sandbox, payload)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 100 and error["message"].startswith("(#100)")
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("to", "code"),
    [("+15005550012", 131047), ("15005550013", 131050), ("+15005550014", 131051)],
)
def test_meta_magic_numbers_fail_synchronously(sandbox: SandboxServer, to: str, code: int) -> None:
    response = meta_send(sandbox, text(to=to))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code and error["message"].startswith(f"(#{code})")
    assert error["error_data"]["messaging_product"] == "whatsapp" and error["error_data"]["details"]


def test_meta_window_closed_allows_templates(sandbox: SandboxServer) -> None:
    template = {
        "messaging_product": "whatsapp",
        "to": "+15005550012",
        "type": "template",
        "template": {"name": "reminder", "language": {"code": "en"}},
    }
    assert meta_send(sandbox, template).status_code == 200


def test_meta_undeliverable_number_fails_asynchronously(
    sandbox: SandboxServer, receiver: Receiver
) -> None:
    response = meta_send(sandbox, text(to="+15005550011", biz_opaque_callback_data="m11"))
    assert response.status_code == 200
    wamid = response.json()["messages"][0]["id"]
    hook = wait_for(lambda: receiver.matching(lambda r: wamid in r["body"].decode()))[0]
    status = meta_statuses(hook)[0]
    assert status["status"] == "failed" and status["errors"][0]["code"] == 131026
    assert "biz_opaque_callback_data" not in status  # Meta returns it on sent/delivered/read
    assert meta_signature_ok(hook)


@pytest.mark.parametrize("code", [131047, 131049, 131050])
def test_meta_errors_that_arrive_by_webhook(
    sandbox: SandboxServer, receiver: Receiver, code: int
) -> None:
    response = meta_send(sandbox, text(to=f"+120155501{code % 100:02d}"))
    assert response.status_code == 200
    wamid = response.json()["messages"][0]["id"]
    hook = wait_for(lambda: receiver.matching(lambda r: wamid in r["body"].decode()))[0]
    (status,) = meta_statuses(hook)
    assert status["status"] == "failed" and status["errors"][0]["code"] == code
    assert status["errors"][0]["error_data"]["details"]


def test_meta_statuses_are_batched_in_one_body(sandbox: SandboxServer, receiver: Receiver) -> None:
    control(sandbox, "POST", "/config", json={"callbacks": {"batch_window": 0.5}})
    wamids = [meta_send(sandbox, text(body=str(i))).json()["messages"][0]["id"] for i in range(4)]
    hooks = wait_for(
        lambda: (
            sum(len(meta_statuses(h)) for h in receiver.requests if h["path"] == "/webhooks/meta")
            >= 8
            and receiver.requests
        ),
        timeout=20,  # a bound, not a figure: a loaded machine delays the callbacks
    )
    bodies = [h for h in hooks if h["path"] == "/webhooks/meta"]
    assert all(meta_signature_ok(h) for h in bodies)
    assert max(len(meta_statuses(h)) for h in bodies) > 1  # several statuses, one body
    seen = {s["id"] for h in bodies for s in meta_statuses(h)}
    assert seen == set(wamids)
    log = control(sandbox, "GET", "/callbacks", params={"message_id": wamids[-1]})["callbacks"]
    assert log and all(wamids[-1] in e["message_ids"] for e in log)


def _skips(sandbox: SandboxServer, receiver: Receiver, n: int) -> list[bool]:
    """For n sends in turn: whether `delivered` was left out before `read`."""
    skipped = []
    for i in range(n):
        wamid = meta_send(sandbox, text(body=f"s{i}")).json()["messages"][0]["id"]
        got = wait_for(
            lambda w=wamid: (
                "read"
                in (
                    sts := [
                        s["status"]
                        for h in receiver.requests
                        for s in meta_statuses(h)
                        if s["id"] == w
                    ]
                )
                and sts
            )
        )
        skipped.append("delivered" not in got)
    return skipped


def test_delivered_is_skipped_at_random_but_repeatably(
    sandbox: SandboxServer, receiver: Receiver
) -> None:
    rate = {"callbacks": {"skip_delivered_rate": 0.5, "seed": 7}}
    control(sandbox, "POST", "/config", json=rate)
    first = _skips(sandbox, receiver, 8)
    assert any(first) and not all(first)  # both paths exercised
    control(sandbox, "POST", "/config", json=rate)  # same seed: the same choices
    assert _skips(sandbox, receiver, 8) == first
    assert control(sandbox, "GET", "/config")["callbacks"]["skip_delivered_rate"] == 0.5


# -- Faults, rate limits, callback modes ------------------------------------------------------


def test_fault_count_two_then_success(sandbox: SandboxServer, twilio: Client) -> None:
    fault = control(sandbox, "POST", "/faults", json={"provider": "twilio", "count": 2})
    for _ in range(2):
        with pytest.raises(TwilioRestException) as exc:
            twilio.messages.create(to=CUSTOMER, from_=SMS_FROM, body="x")
        assert (exc.value.status, exc.value.code) == (500, 20500)
    assert SID_RE.match(twilio.messages.create(to=CUSTOMER, from_=SMS_FROM, body="x").sid)
    assert control(sandbox, "GET", "/faults")["faults"] == []
    sends = control(sandbox, "GET", "/sends")["sends"]
    assert [(s["accepted"], s["fault_id"]) for s in sends] == [
        (False, fault["id"]),
        (False, fault["id"]),
        (True, None),
    ]


def test_an_injected_twilio_code_reads_like_the_real_error(
    sandbox: SandboxServer, twilio: Client
) -> None:
    control(sandbox, "POST", "/faults", json={"provider": "twilio", "status": 400, "code": 21211})
    with pytest.raises(TwilioRestException) as exc:
        twilio.messages.create(to=CUSTOMER, from_=SMS_FROM, body="x")
    assert (exc.value.status, exc.value.code) == (400, 21211)
    assert f"The 'To' number {CUSTOMER} is not a valid phone number." in exc.value.msg


def test_meta_fault_uses_graph_error_shape_and_retry_after(sandbox: SandboxServer) -> None:
    control(
        sandbox,
        "POST",
        "/faults",
        json={"provider": "meta", "status": 503, "retry_after": 2, "message": "down for a bit"},
    )
    response = meta_send(sandbox, text())
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    error = response.json()["error"]
    assert error["code"] == 131016 and error["error_data"]["details"] == "down for a bit"
    assert meta_send(sandbox, text()).status_code == 200  # count defaults to 1


def test_accept_then_error_records_acceptance(
    sandbox: SandboxServer, twilio: Client, receiver: Receiver
) -> None:
    control(
        sandbox,
        "POST",
        "/faults",
        json={"provider": "*", "mode": "accept_then_error", "status": 502, "code": 20500},
    )
    with pytest.raises(TwilioRestException) as exc:
        twilio.messages.create(
            to=CUSTOMER,
            from_=SMS_FROM,
            body="x",
            status_callback=status_url(receiver, "msg_ambiguous"),
        )
    assert exc.value.status == 502
    send = control(sandbox, "GET", "/sends", params={"herald_id": "msg_ambiguous"})["sends"][0]
    assert send["accepted"] is True and send["status_code"] == 502
    assert SID_RE.match(send["provider_message_id"])
    # ...and the message really goes out: its callbacks arrive.
    wait_for(lambda: twilio_callbacks(receiver, send["provider_message_id"]))


@pytest.mark.parametrize(("mode", "accepted"), [("timeout", False), ("accept_then_timeout", True)])
def test_timeout_faults_drop_the_connection(
    sandbox: SandboxServer, mode: str, accepted: bool
) -> None:
    control(sandbox, "POST", "/faults", json={"provider": "meta", "mode": mode, "latency_ms": 50})
    with pytest.raises(httpx.RemoteProtocolError):
        meta_send(sandbox, text())
    send = control(sandbox, "GET", "/sends")["sends"][0]
    assert (send["accepted"], send["answered"], send["status_code"]) == (accepted, False, None)
    assert (send["provider_message_id"] is not None) is accepted


def test_rate_limiting_per_provider(sandbox: SandboxServer, twilio: Client) -> None:
    config = control(sandbox, "POST", "/config", json={"rate_limit_mps": {"twilio": 1, "meta": 1}})
    assert config["rate_limit_mps"] == {"twilio": 1, "meta": 1}
    twilio.messages.create(to=CUSTOMER, from_=SMS_FROM, body="1")
    raw = httpx.post(
        f"{sandbox.url}/2010-04-01/Accounts/{DEFAULT_TWILIO_SID}/Messages.json",
        data={"To": CUSTOMER, "From": SMS_FROM, "Body": "2"},
        auth=(DEFAULT_TWILIO_SID, DEFAULT_TWILIO_TOKEN),
    )
    assert raw.status_code == 429 and raw.json()["code"] == 20429
    assert int(raw.headers["Retry-After"]) >= 1
    # Another sender has its own bucket.
    assert twilio.messages.create(to=CUSTOMER, from_="+15017122662", body="3").sid
    assert meta_send(sandbox, text()).status_code == 200
    limited = meta_send(sandbox, text())
    assert limited.status_code == 400 and limited.json()["error"]["code"] == 130429


def _meta_status_order(sandbox: SandboxServer, receiver: Receiver, expect: int) -> list[str]:
    wamid = meta_send(sandbox, text()).json()["messages"][0]["id"]

    def statuses() -> list[str]:
        hooks = receiver.matching(lambda r: wamid in r["body"].decode())
        return [s["status"] for h in hooks for s in meta_statuses(h) if s["id"] == wamid]

    wait_for(lambda: len(statuses()) >= expect)
    time.sleep(0.2)  # nothing more should arrive
    return statuses()


def test_callbacks_reverse_order(sandbox: SandboxServer, receiver: Receiver) -> None:
    no_skip = {"order": "reverse", "skip_delivered_rate": 0}
    control(sandbox, "POST", "/config", json={"callbacks": no_skip})
    assert _meta_status_order(sandbox, receiver, 3) == ["read", "delivered", "sent"]


def test_callbacks_skip_delivered(sandbox: SandboxServer, receiver: Receiver) -> None:
    control(sandbox, "POST", "/config", json={"callbacks": {"skip_delivered": True}})
    assert _meta_status_order(sandbox, receiver, 2) == ["sent", "read"]


def test_callbacks_duplicate(sandbox: SandboxServer, twilio: Client, receiver: Receiver) -> None:
    control(sandbox, "POST", "/config", json={"callbacks": {"duplicate": True}})
    msg = twilio.messages.create(
        to=CUSTOMER, from_=SMS_FROM, body="x", status_callback=status_url(receiver, "msg_dup")
    )
    calls = wait_for(
        lambda: (
            len(twilio_callbacks(receiver, msg.sid)) >= 4 and twilio_callbacks(receiver, msg.sid)
        )
    )
    assert sorted(c["form"]["MessageStatus"] for c in calls) == [
        "delivered",
        "delivered",
        "sent",
        "sent",
    ]


def test_callbacks_disabled(sandbox: SandboxServer, twilio: Client, receiver: Receiver) -> None:
    control(sandbox, "POST", "/config", json={"callbacks": {"enabled": False}})
    msg = twilio.messages.create(
        to=CUSTOMER, from_=SMS_FROM, body="x", status_callback=status_url(receiver, "msg_off")
    )
    time.sleep(0.3)
    assert twilio_callbacks(receiver, msg.sid) == []
    assert twilio.messages(msg.sid).fetch().status == "delivered"  # the message still moves on


def test_twilio_does_not_retry_a_callback_answered_with_5xx(
    sandbox: SandboxServer, twilio: Client, receiver: Receiver
) -> None:
    control(sandbox, "POST", "/config", json={"callbacks": {"retry_backoff": 0.05}})
    receiver.fail_next["/webhooks/twilio/status"] = 1
    msg = twilio.messages.create(
        to=CUSTOMER, from_=SMS_FROM, body="x", status_callback=status_url(receiver, "msg_retry")
    )
    wait_for(lambda: twilio_callbacks(receiver, msg.sid))
    time.sleep(0.4)  # a retry, were there one, would have landed
    assert [c["form"]["MessageStatus"] for c in twilio_callbacks(receiver, msg.sid)] == [
        "delivered"
    ]
    log = control(sandbox, "GET", "/callbacks", params={"message_id": msg.sid})["callbacks"]
    sent = [e for e in log if e["event"] == "sent"]
    assert [(e["attempt"], e["status_code"], e["ok"]) for e in sent] == [(1, 500, False)]
    assert sent[0]["herald_id"] == "msg_retry" and sent[0]["provider"] == "twilio"


def test_twilio_retries_once_when_the_connection_fails(
    sandbox: SandboxServer, twilio: Client
) -> None:
    from herald.stack import free_port

    control(sandbox, "POST", "/config", json={"callbacks": {"retry_backoff": 0.05}})
    url = f"http://127.0.0.1:{free_port()}/webhooks/twilio/status?message_id=m"
    msg = twilio.messages.create(to=CUSTOMER, from_=SMS_FROM, body="x", status_callback=url)

    def attempts() -> list[dict[str, Any]]:
        log = control(sandbox, "GET", "/callbacks", params={"message_id": msg.sid})
        return [e for e in log["callbacks"] if e["event"] == "sent"]

    wait_for(lambda: len(attempts()) >= 2)
    time.sleep(0.3)
    assert [(e["attempt"], e["status_code"]) for e in attempts()] == [(1, None), (2, None)]
    assert all(e["error"] for e in attempts())


def test_meta_retries_a_webhook_answered_with_5xx(
    sandbox: SandboxServer, receiver: Receiver
) -> None:
    control(sandbox, "POST", "/config", json={"callbacks": {"retry_backoff": 0.05}})
    receiver.fail_next["/webhooks/meta"] = 2
    wamid = meta_send(sandbox, text()).json()["messages"][0]["id"]

    def log() -> list[dict[str, Any]]:
        return control(sandbox, "GET", "/callbacks", params={"message_id": wamid})["callbacks"]

    # Until a retry got through: the two refused callbacks may be two different ones
    # (sent, delivered), and a later callback's first attempt can succeed before either
    # retry does, so "two succeeded" alone may come before any retry.
    wait_for(lambda: any(e["attempt"] > 1 and e["ok"] for e in log()))
    failed = [e for e in log() if e["status_code"] == 500]
    assert len(failed) == 2


def test_twilio_test_senders_agree_with_twilio(twilio: Client) -> None:
    for sender, code in (("+15005550008", 21611), ("+15005550007", 21606)):
        with pytest.raises(TwilioRestException) as exc:
            twilio.messages.create(to=CUSTOMER, from_=sender, body="x")
        assert exc.value.code == code
    assert twilio.messages.create(to=CUSTOMER, from_="+15005550006", body="x").sid


def test_twilio_fault_in_problem_details_shape(sandbox: SandboxServer, twilio: Client) -> None:
    from twilio.base.exceptions import TwilioServiceException

    fault = {"provider": "twilio", "status": 429, "code": 20429, "problem": True}
    control(sandbox, "POST", "/faults", json=fault)
    with pytest.raises(TwilioServiceException) as exc:
        twilio.messages.create(to=CUSTOMER, from_=SMS_FROM, body="x")
    assert (exc.value.status, exc.value.code) == (429, 20429) and exc.value.title


# -- Inbound, sends log, control API ----------------------------------------------------------


def test_inbound_twilio_whatsapp(sandbox: SandboxServer, receiver: Receiver) -> None:
    result = control(
        sandbox,
        "POST",
        "/inbound",
        json={
            "provider": "twilio",
            "from": CUSTOMER,
            "to": WA_FROM,
            "body": "STOP",
            "profile_name": "Ana",
            "interactive": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}},
        },
    )
    assert result["status_code"] == 200 and result["ok"] is True
    req = receiver.matching(lambda r: r["path"] == "/webhooks/twilio/inbound")[0]
    form = req["form"]
    assert RequestValidator(DEFAULT_TWILIO_TOKEN).validate(
        req["url"], form, req["headers"]["X-Twilio-Signature"]
    )
    assert (form["From"], form["To"], form["Body"]) == (f"whatsapp:{CUSTOMER}", WA_FROM, "STOP")
    assert (form["WaId"], form["ProfileName"], form["ButtonPayload"]) == (
        CUSTOMER[1:],
        "Ana",
        "yes",
    )
    assert SID_RE.match(form["MessageSid"]) and form["AccountSid"] == DEFAULT_TWILIO_SID
    assert "MessagingServiceSid" not in form


def test_inbound_twilio_through_a_messaging_service(
    sandbox: SandboxServer, receiver: Receiver
) -> None:
    service = "MG" + "ab" * 16
    result = control(
        sandbox,
        "POST",
        "/inbound",
        json={
            "provider": "twilio",
            "from": CUSTOMER,
            "to": "+12025550100",
            "body": "STOP",
            "messaging_service_sid": service,
        },
    )
    assert result["status_code"] == 200
    req = receiver.matching(lambda r: r["path"] == "/webhooks/twilio/inbound")[-1]
    assert req["form"]["MessagingServiceSid"] == service
    assert RequestValidator(DEFAULT_TWILIO_TOKEN).validate(
        req["url"], req["form"], req["headers"]["X-Twilio-Signature"]
    )


def test_inbound_meta_media_and_interactive(sandbox: SandboxServer, receiver: Receiver) -> None:
    control(
        sandbox,
        "POST",
        "/inbound",
        json={
            "provider": "meta",
            "from": CUSTOMER,
            "body": "pic",
            "profile_name": "Ana",
            "media_url": "https://example.com/x.jpg",
            "media_type": "image/jpeg",
        },
    )
    control(
        sandbox,
        "POST",
        "/inbound",
        json={
            "provider": "meta",
            "from": CUSTOMER,
            "to": DEFAULT_META_PHONE_ID,
            "interactive": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}},
        },
    )
    hooks = receiver.matching(lambda r: r["path"] == "/webhooks/meta")
    assert len(hooks) == 2 and all(meta_signature_ok(h) for h in hooks)
    values = [json.loads(h["body"])["entry"][0]["changes"][0]["value"] for h in hooks]
    (contact,) = values[0]["contacts"]  # the BSUID too, as every Meta webhook since 2026
    assert {k: v for k, v in contact.items() if k != "user_id"} == {
        "profile": {"name": "Ana"},
        "wa_id": CUSTOMER[1:],
    }
    assert re.fullmatch(r"US\.\d{20}", contact["user_id"])
    assert values[0]["messages"][0]["from_user_id"] == contact["user_id"]
    image, button = values[0]["messages"][0], values[1]["messages"][0]
    assert image["type"] == "image" and image["image"]["mime_type"] == "image/jpeg"
    assert image["image"]["caption"] == "pic" and WAMID_RE.match(image["id"])
    assert button["type"] == "interactive"
    assert button["interactive"]["button_reply"]["id"] == "yes"


def test_inbound_without_url_is_rejected(sandbox: SandboxServer) -> None:
    control(sandbox, "POST", "/config", json={"meta_webhook_url": None})
    response = httpx.post(
        f"{sandbox.url}/_sandbox/inbound", json={"provider": "meta", "from": CUSTOMER, "body": "hi"}
    )
    assert response.status_code == 400 and "no inbound URL" in response.json()["error"]


def test_sends_log_filters_summary_and_duplicates(
    sandbox: SandboxServer, twilio: Client, receiver: Receiver
) -> None:
    url = status_url(receiver, "msg_twice")
    first = twilio.messages.create(to=CUSTOMER, from_=SMS_FROM, body="a", status_callback=url)
    twilio.messages.create(to=CUSTOMER, from_=SMS_FROM, body="a", status_callback=url)
    meta_send(sandbox, text(to="+15559876543", biz_opaque_callback_data="msg_once"))
    meta_send(sandbox, text(), token="bad")

    sends = control(sandbox, "GET", "/sends")["sends"]
    assert [s["seq"] for s in sends] == sorted(s["seq"] for s in sends)
    assert sends[0]["provider_message_id"] == first.sid
    assert sends[0]["request"]["Body"] == "a" and isinstance(sends[0]["received_at"], float)
    by_to = control(sandbox, "GET", "/sends", params={"to": "15559876543"})["sends"]
    assert [s["herald_id"] for s in by_to] == ["msg_once"]
    rejected = control(sandbox, "GET", "/sends", params={"provider": "meta", "accepted": "0"})
    assert [s["error_code"] for s in rejected["sends"]] == [190]

    summary = control(sandbox, "GET", "/sends/summary")
    assert summary["by_provider"]["twilio"] == {"received": 2, "accepted": 2, "rejected": 0}
    assert summary["by_provider"]["meta"] == {"received": 2, "accepted": 1, "rejected": 1}
    assert summary["duplicates"] == {"msg_twice": 2}


def test_receipts_file_gets_one_json_line_per_send(tmp_path: Path) -> None:
    receipts = tmp_path / "receipts.jsonl"
    with SandboxServer(SandboxState(receipts_file=str(receipts))) as sb:
        meta_send(sb, text(biz_opaque_callback_data="msg_file"))
        meta_send(sb, text(), token="bad")
        lines = [json.loads(line) for line in receipts.read_text().splitlines()]
    assert [(r["seq"], r["accepted"], r["herald_id"]) for r in lines] == [
        (1, True, "msg_file"),
        (2, False, None),
    ]


def test_control_config_faults_accounts_and_reset(sandbox: SandboxServer) -> None:
    assert control(sandbox, "GET", "/health") == {"ok": True}
    bad = httpx.post(f"{sandbox.url}/_sandbox/config", json={"callbacks": {"orderr": "x"}})
    assert bad.status_code == 400 and "orderr" in bad.json()["error"]
    bad = httpx.post(f"{sandbox.url}/_sandbox/faults", json={"mode": "explode"})
    assert bad.status_code == 400
    control(sandbox, "POST", "/config", json={"latency_ms": {"meta": 5}, "callback_delay": 0.1})
    assert control(sandbox, "GET", "/config")["latency_ms"] == {"twilio": 0, "meta": 5}

    sid, token = "AC" + "b" * 32, "second-token"
    control(
        sandbox,
        "POST",
        "/accounts",
        json={"provider": "twilio", "account_sid": sid, "auth_token": token},
    )
    second = Client(sid, token)
    second.api.base_url = sandbox.url
    assert second.messages.create(to=CUSTOMER, from_=SMS_FROM, body="x").account_sid == sid
    control(
        sandbox,
        "POST",
        "/accounts",
        json={
            "provider": "meta",
            "phone_number_id": "100000000000002",
            "access_token": "t2",
            "app_secret": "s2",
        },
    )
    assert meta_send(sandbox, text(), token="t2", phone_id="100000000000002").status_code == 200
    assert meta_send(sandbox, text(), token="t2").status_code == 400  # not that number's token

    # A rate fault is not used up: it fires on every matching send until deleted.
    fault = control(sandbox, "POST", "/faults", json={"provider": "meta", "rate": 1.0})
    assert [meta_send(sandbox, text()).status_code for _ in range(2)] == [500, 500]
    assert control(sandbox, "GET", "/faults")["faults"][0]["fired"] == 2
    assert fault["remaining"] is None
    control(sandbox, "DELETE", "/faults")
    assert meta_send(sandbox, text()).status_code == 200

    control(sandbox, "POST", "/reset")
    assert control(sandbox, "GET", "/config")["callback_delay"] == 0.05
    assert control(sandbox, "GET", "/faults")["faults"] == []
    assert control(sandbox, "GET", "/sends")["sends"] == []
    assert sid in {a["account_sid"] for a in control(sandbox, "GET", "/accounts")["twilio"]}


def test_cli_prints_url_serves_and_exits_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox",
            "--port",
            "0",
            "--twilio-account",
            f"{'AC' + 'c' * 32}:cli-token",
            "--meta-account",
            "123456789012345:cli-meta:cli-secret:300000000000003",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        match = re.fullmatch(r"sandbox listening on (http://127\.0\.0\.1:(\d+))", line)
        assert match and match.group(2) != "0"
        accounts = httpx.get(f"{match.group(1)}/_sandbox/accounts").json()
        assert accounts["twilio"] == [{"account_sid": "AC" + "c" * 32, "auth_token": "cli-token"}]
        assert accounts["meta"][0]["waba_id"] == "300000000000003"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
