"""POST/GET /v1/messages through the Flask app: auth, validation, persistence,
enqueue-after-commit, idempotency, tenant isolation."""

from __future__ import annotations

import json
import threading
import time

import jwt
from sqlalchemy import func, select

from models import Message, session_scope
from tests.conftest import make_tenant

TO = "+12025550143"


def count_messages(tenant_id: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).where(Message.tenant_id == tenant_id))


def test_accepts_persists_and_enqueues_after_commit(client, auth, tenant, dispatched) -> None:
    resp = client.post(
        "/v1/messages", json={"to": TO, "body": "Your order #123 is ready"}, headers=auth
    )
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["id"].startswith("msg_")
    assert body["status"] == "queued"
    assert body["provider"] == "meta"  # the tenant's WhatsApp default
    assert body["events"][0]["status"] == "queued"
    assert dispatched == [(body["id"], "herald.send")]
    with session_scope() as session:
        row = session.get(Message, body["id"])
        assert row is not None and row.tenant_id == tenant["tenant_id"]


def test_sms_defaults_to_twilio(client, auth, dispatched) -> None:
    resp = client.post(
        "/v1/messages", json={"to": TO, "body": "code 1234", "channel": "sms"}, headers=auth
    )
    assert resp.status_code == 202
    assert resp.get_json()["provider"] == "twilio"


def test_get_returns_message_with_events(client, auth, dispatched) -> None:
    created = client.post("/v1/messages", json={"to": TO, "body": "hi"}, headers=auth).get_json()
    resp = client.get(f"/v1/messages/{created['id']}", headers=auth)
    assert resp.status_code == 200
    assert resp.get_json()["id"] == created["id"]
    assert [e["status"] for e in resp.get_json()["events"]] == ["queued"]


def test_other_tenants_message_is_404(client, auth, dispatched) -> None:
    created = client.post("/v1/messages", json={"to": TO, "body": "hi"}, headers=auth).get_json()
    other = make_tenant("other")
    resp = client.get(
        f"/v1/messages/{created['id']}", headers={"Authorization": f"Bearer {other['api_key']}"}
    )
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"


def test_list_is_newest_first_with_cursor(client, auth, dispatched) -> None:
    ids = [
        client.post("/v1/messages", json={"to": TO, "body": f"m{i}"}, headers=auth).get_json()["id"]
        for i in range(3)
    ]
    page = client.get("/v1/messages?limit=2", headers=auth).get_json()
    assert [m["id"] for m in page["data"]] == [ids[2], ids[1]]
    rest = client.get(f"/v1/messages?limit=2&cursor={page['next_cursor']}", headers=auth).get_json()
    assert [m["id"] for m in rest["data"]] == [ids[0]]
    assert rest["next_cursor"] is None


def test_cancel_queued_then_conflict(client, auth, dispatched) -> None:
    created = client.post("/v1/messages", json={"to": TO, "body": "hi"}, headers=auth).get_json()
    resp = client.post(f"/v1/messages/{created['id']}/cancel", headers=auth)
    assert resp.status_code == 200 and resp.get_json()["status"] == "canceled"
    again = client.post(f"/v1/messages/{created['id']}/cancel", headers=auth)
    assert again.status_code == 409


def test_jwt_with_tenant_claim(client, tenant, dispatched) -> None:
    now = int(time.time())
    claims = {"tenant": tenant["tenant_id"], "iat": now, "exp": now + 300}
    token = jwt.encode(claims, "test-jwt-secret-0123456789abcdef0123", algorithm="HS256")
    resp = client.post(
        "/v1/messages", json={"to": TO, "body": "hi"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 202
    forged = jwt.encode(claims, "wrong-secret-0123456789abcdef0123456", algorithm="HS256")
    resp = client.post(
        "/v1/messages", json={"to": TO, "body": "hi"}, headers={"Authorization": f"Bearer {forged}"}
    )
    assert resp.status_code == 401


# ------------------------------------------------------------------ bad input


def _assert_error(resp, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.is_json
    error = resp.get_json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code
    return error


def test_bad_input_writes_nothing(client, auth, tenant, dispatched) -> None:
    before = count_messages(tenant["tenant_id"])
    post = client.post
    _assert_error(
        post("/v1/messages", data="{nope", headers=auth, content_type="application/json"),
        400,
        "malformed_json",
    )
    _assert_error(post("/v1/messages", data="", headers=auth), 400, "malformed_json")
    _assert_error(post("/v1/messages", json=[1, 2], headers=auth), 400)
    err = _assert_error(
        post("/v1/messages", json={"to": "+15551234567", "body": "x"}, headers=auth),
        400,
        "invalid_fields",
    )
    assert "to" in err["fields"]
    err = _assert_error(
        post("/v1/messages", json={"to": TO, "body": "x", "extra": 1}, headers=auth), 400
    )
    assert "extra" in err["fields"]
    _assert_error(post("/v1/messages", json={"to": TO, "body": "x" * 5000}, headers=auth), 400)
    _assert_error(post("/v1/messages", json={"to": TO, "body": "x"}), 401, "unauthorized")
    _assert_error(
        post(
            "/v1/messages",
            json={"to": TO, "body": "x"},
            headers={"Authorization": "Bearer hk_wrong"},
        ),
        401,
    )
    _assert_error(client.delete("/v1/messages", headers=auth), 405, "method_not_allowed")
    big = json.dumps({"to": TO, "body": "x" * (2 * 1024 * 1024)})
    _assert_error(
        post("/v1/messages", data=big, headers=auth, content_type="application/json"),
        413,
        "body_too_large",
    )
    _assert_error(client.get("/v1/messages/msg_nope", headers=auth), 404)
    _assert_error(client.get("/v1/messages?limit=0", headers=auth), 400)
    assert count_messages(tenant["tenant_id"]) == before
    assert dispatched == []


def test_unknown_contact_is_422(client, auth, dispatched) -> None:
    _assert_error(
        client.post("/v1/messages", json={"contact_id": "6475ce43", "body": "x"}, headers=auth),
        422,
        "contact_not_found",
    )


def test_no_provider_account_is_422(client, dispatched) -> None:
    t = make_tenant("smsonly", meta={})
    resp = client.post(
        "/v1/messages",
        json={"to": TO, "body": "x", "provider": "meta"},
        headers={"Authorization": f"Bearer {t['api_key']}"},
    )
    _assert_error(resp, 422, "provider_not_configured")


# ------------------------------------------------------------------ idempotency


def test_idempotency_key_replays_and_conflicts(client, auth, tenant, dispatched) -> None:
    headers = {**auth, "Idempotency-Key": "order-123"}
    first = client.post("/v1/messages", json={"to": TO, "body": "ready"}, headers=headers)
    again = client.post("/v1/messages", json={"to": TO, "body": "ready"}, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    other = client.post("/v1/messages", json={"to": TO, "body": "different"}, headers=headers)
    _assert_error(other, 409, "idempotency_conflict")
    assert len(dispatched) == 1


def test_concurrent_requests_with_one_key_create_one_message(app, auth, tenant, dispatched) -> None:
    headers = {**auth, "Idempotency-Key": "race-1"}
    results: list[int] = []
    ids: set[str] = set()

    def send() -> None:
        resp = app.test_client().post(
            "/v1/messages", json={"to": TO, "body": "once"}, headers=headers
        )
        results.append(resp.status_code)
        ids.add(resp.get_json()["id"])

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] * 5 + [202]
    assert len(ids) == 1
    with session_scope() as session:
        n = session.scalar(
            select(func.count()).where(
                Message.idempotency_key == "race-1", Message.tenant_id == tenant["tenant_id"]
            )
        )
    assert n == 1


def test_ops_endpoints(client) -> None:
    assert client.get("/healthz").get_json() == {"ok": True}
    assert client.get("/openapi.json").get_json()["openapi"].startswith("3.")
    assert b"python_info" in client.get("/metrics").data


def test_metrics_report_messages_by_status_and_queue_depth(client, auth) -> None:
    """Herald's gauges are read from the database and Redis at scrape time, so every
    API process reports the same numbers, whichever process did the work."""
    import re

    from core.config import get_settings
    from services.policy.limits import get_redis

    def gauge(text: str, name: str) -> float:
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    before = client.get("/metrics").get_data(as_text=True)
    for n in range(2):
        resp = client.post(
            "/v1/messages", json={"to": "+12025550143", "body": f"m{n}"}, headers=auth
        )
        assert resp.status_code == 202
    queue = get_settings().queue_prefix + "herald.bulk"
    get_redis().rpush(queue, b"{}")
    try:
        after = client.get("/metrics").get_data(as_text=True)
    finally:
        get_redis().delete(queue)
    queued = 'herald_messages{status="queued",test="false"}'
    assert gauge(after, queued) == gauge(before, queued) + 2
    assert gauge(after, 'herald_queue_depth{queue="herald.bulk"}') == 1
    assert gauge(after, "herald_queued_wait_seconds") >= 0
    assert "herald_events_pending" in after


def test_openapi_describes_every_route(app, client) -> None:
    """The document is kept in step with what is built: every public route is in it."""
    import re

    def shape(path: str) -> str:  # parameter names do not matter, positions do
        return re.sub(r"\{[^}]+\}", "{}", path)

    documented = {shape(p) for p in client.get("/openapi.json").get_json()["paths"]}
    for rule in app.url_map.iter_rules():
        path = shape(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule))
        if path in ("/metrics", "/openapi.json") or path.startswith("/console"):
            continue  # the console is HTML pages, not part of the JSON API
        assert path in documented, f"{rule.rule} is not in /openapi.json"
