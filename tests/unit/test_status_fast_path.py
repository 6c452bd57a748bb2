"""`POST /webhooks/twilio/status` answered in front of Flask (api/fastpath.py): a plain
signed callback skips Flask's per-request pipeline and gets the view's answer, byte for
byte; what the fast path does not take is answered by Flask as before."""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from flask import Flask, request, request_started
from twilio.request_validator import RequestValidator

from core.config import get_settings
from tests.conftest import TWILIO_SID, TWILIO_TOKEN
from tests.unit.test_webhooks import events_of, get, new_message

PATH = "/webhooks/twilio/status"


def _seen_by_flask(app: Flask) -> list[str]:
    """The status callbacks Flask dispatched (its `request_started` signal, sent before
    the before-request hooks run)."""
    seen: list[str] = []

    def note(sender: Flask, **_: object) -> None:
        if request.path == PATH:
            seen.append(request.path)

    request_started.connect(note, app, weak=False)
    return seen


def _signed(message_id: str, sid: str, status: str, **extra: str) -> tuple[str, bytes, dict]:
    path = f"{PATH}?message_id={message_id}"
    params = {"MessageSid": sid, "MessageStatus": status, "AccountSid": TWILIO_SID, **extra}
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        get_settings().public_url + path, params
    )
    return path, urlencode(params).encode(), {"X-Twilio-Signature": signature}


def _answer(resp) -> tuple[int, list[tuple[str, str]], bytes]:  # type: ignore[no-untyped-def]
    return resp.status_code, sorted(resp.headers.items()), resp.get_data()


def test_a_plain_status_callback_skips_flask_and_the_rest_is_answered_as_before(
    app, client, auth, dispatched
) -> None:
    seen = _seen_by_flask(app)
    mid = new_message(client, auth, channel="sms")
    sid = "SM" + uuid.uuid4().hex
    form = "application/x-www-form-urlencoded"
    path, body, headers = _signed(mid, sid, "sent")
    fast = client.post(path, data=body, headers=headers, content_type=form)
    assert seen == []  # no request context, no hooks: the fast path answered
    assert get(client, auth, mid)["status"] == "sent"
    # The same route through Flask (a cookie sends it there): the same answer.
    path, body, headers = _signed(mid, sid, "delivered")
    client.set_cookie("console", "x")
    slow = client.post(path, data=body, headers=headers, content_type=form)
    assert seen[-1] == PATH
    no_content = [("X-Content-Type-Options", "nosniff")]  # a 204 declares no type
    assert _answer(fast) == _answer(slow) == (204, no_content, b"")
    assert get(client, auth, mid)["status"] == "delivered"
    assert [e[:2] for e in events_of(mid)][-2:] == [("sent", "sent"), ("delivered", "delivered")]
    client.delete_cookie("console")
    # What the fast path does not take, Flask answers as before. A body over the
    # limit: Flask's 413, in the JSON error shape.
    limit = app.config["MAX_CONTENT_LENGTH"]
    resp = client.post(PATH, data=b"a=" + b"x" * limit, content_type=form)
    assert resp.status_code == 413
    assert resp.get_json()["error"]["code"] == "body_too_large"
    # Not a form: Flask reads no fields, so no signature matches.
    path, _, headers = _signed(mid, "SM" + uuid.uuid4().hex, "failed")
    resp = client.post(path, json={"MessageStatus": "sent"}, headers=headers)
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "forbidden"
    # A NUL in a field: the input check's 400.
    resp = client.post(PATH, data=b"AccountSid=AC%00&MessageSid=SM1", content_type=form)
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "invalid_form"
    # A body that is not UTF-8: werkzeug's form is empty, so no signature matches.
    resp = client.post(PATH, data=b"AccountSid=\xff", content_type=form, headers=headers)
    assert resp.status_code == 403
    assert seen == [PATH] * 5  # each answered by Flask's pipeline
    assert get(client, auth, mid)["status"] == "delivered"


def test_errors_raised_on_the_fast_path_are_flasks_answers(app, client, auth, dispatched) -> None:
    seen = _seen_by_flask(app)
    mid = new_message(client, auth, channel="sms")
    form = "application/x-www-form-urlencoded"
    path, body, _ = _signed(mid, "SM" + uuid.uuid4().hex, "sent")
    # Unsigned: 403 in the JSON error shape, nothing stored.
    resp = client.post(path, data=body, content_type=form, headers={"X-Twilio-Signature": "x"})
    assert resp.status_code == 403
    assert resp.get_json() == {
        "error": {"code": "forbidden", "message": "Invalid or missing X-Twilio-Signature."}
    }
    # Signed, but no MessageSid Twilio would send: 400.
    path, body, headers = _signed(mid, "SM" + "9" * 200, "sent")
    resp = client.post(path, data=body, content_type=form, headers=headers)
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "invalid_request"
    assert seen == []  # raised on the fast path, answered by Flask's error handlers only
    assert get(client, auth, mid)["status"] == "queued"
