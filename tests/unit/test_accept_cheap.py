"""What the single-message accept path no longer pays for: Celery's repr of a batch's
ids on each publish."""

from __future__ import annotations

from typing import Any

from services.messages import dispatch


def test_a_batch_publish_names_its_ids_without_celerys_repr(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import core.queue

    sent: list[dict[str, Any]] = []

    def send_task(name, args=None, queue=None, **options):  # type: ignore[no-untyped-def]
        sent.append({"name": name, "args": args, "queue": queue, **options})

    monkeypatch.setattr(core.queue.app, "send_task", send_task)
    ids = [f"msg_{i:03d}" for i in range(12)]
    assert dispatch._celery_dispatch(dispatch.BATCH_TASK, ids, "herald.send") is None
    assert len(sent) == 1 and sent[0]["args"] == [ids] and sent[0]["ignore_result"]
    assert sent[0]["argsrepr"] == "[['msg_000', ... 'msg_011']] (12 ids)"
    assert sent[0]["kwargsrepr"] == "{}"
    dispatch._celery_dispatch("herald.deliver_events", ["msg_a"], "herald.events")
    assert sent[1]["args"] == ["msg_a"] and sent[1]["argsrepr"] == "['msg_a']"


# ---------------------------------------------------------------- api/fastpath.py

TO = "+12025550143"


def _flask_only(app):  # type: ignore[no-untyped-def]
    """A test client for the app as Flask serves it, without api/fastpath.py in front."""
    from flask.testing import FlaskClient

    from api.fastpath import flask_of

    flask_wsgi = flask_of(app)
    assert flask_wsgi is not app.wsgi_app

    class Inner(FlaskClient):
        def run_wsgi_app(self, environ, buffered=False):  # type: ignore[no-untyped-def]
            from werkzeug.test import run_wsgi_app

            return run_wsgi_app(flask_wsgi, environ, buffered=buffered)

    return Inner(app, app.response_class, use_cookies=True)


def test_a_plain_json_post_is_served_without_flasks_dispatch(  # type: ignore[no-untyped-def]
    app, client, auth, dispatched, monkeypatch
) -> None:
    import flask

    dispatched_by_flask: list[str] = []
    real = flask.Flask.full_dispatch_request

    def counting(self):  # type: ignore[no-untyped-def]
        # Only this route: another test's live server may still be taking webhooks.
        if flask.request.path == "/v1/messages":
            dispatched_by_flask.append(flask.request.path)
        return real(self)

    monkeypatch.setattr(flask.Flask, "full_dispatch_request", counting)
    resp = client.post(
        "/v1/messages", json={"to": TO, "channel": "sms", "body": "hi"}, headers=auth
    )
    assert resp.status_code == 202 and resp.headers["Content-Type"] == "application/json"
    assert dispatched_by_flask == []
    # What it does not serve goes to Flask: a query string, another method or path.
    client.post("/v1/messages?x=1", json={"to": TO, "body": "hi"}, headers=auth)
    client.get("/v1/messages", headers=auth)
    assert dispatched_by_flask == ["/v1/messages", "/v1/messages"]


def _same(fast, slow, *, created: bool = False) -> None:  # type: ignore[no-untyped-def]
    assert fast.status_code == slow.status_code, (fast.get_data(), slow.get_data())
    assert fast.headers.get("Content-Type") == slow.headers.get("Content-Type")
    assert fast.headers.get("Retry-After") == slow.headers.get("Retry-After")
    assert fast.get_data().endswith(b"\n") and slow.get_data().endswith(b"\n")
    a, b = fast.get_json(), slow.get_json()
    if created:  # two messages: the same answer but for their ids and times
        for body in (a, b):
            for name in ("id", "created_at", "updated_at"):
                body.pop(name)
            body["events"][0].pop("at")
        assert a == b
    else:
        assert fast.get_data() == slow.get_data()


def test_the_fast_path_answers_every_case_as_the_view_does(app, client, tenant, dispatched) -> None:  # type: ignore[no-untyped-def]
    import json

    slow_client = _flask_only(app)
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    sms = {"to": TO, "channel": "sms", "body": "hello"}

    def both(data=None, headers=None, raw=None, content_type="application/json"):  # type: ignore[no-untyped-def]
        kwargs = {"headers": {**auth, **(headers or {})}, "content_type": content_type}
        kwargs["data"] = raw if raw is not None else json.dumps(data)
        return (
            client.post("/v1/messages", **kwargs),
            slow_client.post("/v1/messages", **kwargs),
        )

    _same(*both(sms), created=True)
    _same(*both({**sms, "to": "+15005550011", "channel": "whatsapp"}), created=True)
    for case in (
        {"headers": {"Authorization": "Bearer hk_nope"}, "data": sms},
        {"headers": {"Authorization": ""}, "data": sms},
        {"raw": b""},
        {"raw": b"{not json"},
        {"raw": b'{"to": NaN}'},
        {"raw": b"[1, 2]"},
        {"data": {**sms, "nope": 1}},
        {"data": {**sms, "to": "12345"}},
        {"data": {"to": TO, "channel": "sms"}},
        {"data": {"to": "+12025550199", "body": "window closed"}},  # 422 on WhatsApp
        {"data": sms, "headers": {"Idempotency-Key": "x" * 300}},
    ):
        fast, slow = both(case.get("data"), case.get("headers"), case.get("raw"))
        assert 400 <= fast.status_code < 500
        _same(fast, slow)
    # The key's first message, then its replays and a conflict, either way.
    first, _ = both(sms, {"Idempotency-Key": "fast-1"})
    assert first.status_code == 202
    fast, slow = both(sms, {"Idempotency-Key": "fast-1"})
    assert fast.status_code == 200 and fast.get_json()["id"] == first.get_json()["id"]
    _same(fast, slow)
    _same(*both({**sms, "body": "other"}, {"Idempotency-Key": "fast-1"}))
    # Left to Flask, so the same by construction: too large, a form, charset given.
    big = {**sms, "body": "x" * (app.config["MAX_CONTENT_LENGTH"] + 1)}
    assert both(big)[0].status_code == 413
    form = both(raw=b"to=1", content_type="application/x-www-form-urlencoded")
    assert form[0].status_code == 415  # not JSON
    _same(*both(sms, content_type="application/json; charset=utf-8"), created=True)


def test_a_number_seen_before_is_not_parsed_again(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import phonenumbers
    import pytest

    from services.content import phones

    parsed: list[str] = []
    real = phonenumbers.parse

    def counting(text, region=None):  # type: ignore[no-untyped-def]
        parsed.append(text)
        return real(text, region)

    monkeypatch.setattr(phonenumbers, "parse", counting)
    assert phones.parse_e164(" +1 (202) 555-0177 ") == "+12025550177"
    assert phones.parse_e164(" +1 (202) 555-0177 ") == "+12025550177"
    assert parsed == ["+1 (202) 555-0177"]
    for _ in range(2):  # a refusal is the same each time, never cached as a number
        with pytest.raises(ValueError, match="Too short"):
            phones.parse_e164("+1 202 555 01")
    assert len(parsed) == 3
