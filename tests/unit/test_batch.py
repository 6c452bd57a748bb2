"""POST /v1/messages/batch: one answer per entry, per-entry errors never sink the
others, idempotency per entry, quota, tenant isolation, one INSERT and one COMMIT."""

from __future__ import annotations

from sqlalchemy import select, update

from models import Message, Tenant, session_scope
from services.tenancy import tenants
from tests.conftest import make_tenant
from tests.unit.test_accept_fast_path import statements

TO = "+12025550143"
TO2 = "+15005550011"


def sms(i: int, **extra: object) -> dict:
    return {"to": f"+1202555{i:04d}", "channel": "sms", "body": f"code {i}", **extra}


def post(client, auth, messages, **kwargs):  # type: ignore[no-untyped-def]
    return client.post("/v1/messages/batch", json={"messages": messages}, headers=auth, **kwargs)


def bodies(tenant_id: str) -> list[str]:
    """The tenant's stored bodies, sorted (ids made in one millisecond are not ordered)."""
    with session_scope() as session:
        return sorted(session.scalars(select(Message.body).where(Message.tenant_id == tenant_id)))


def test_mixed_entries_each_get_their_own_answer(client, auth, tenant, dispatched) -> None:
    resp = post(
        client,
        auth,
        [
            sms(1),
            {"to": "not a phone", "channel": "sms", "body": "x"},  # invalid
            {"to": TO, "body": "free-form WhatsApp, window open"},
            {"to": "+12025559999", "body": "free-form WhatsApp, window closed"},  # refused
            "not an object",
            sms(2, nonsense=True),  # unknown field
            sms(3),
        ],
    )
    assert resp.status_code == 200
    answer = resp.get_json()
    statuses = [(e["index"], e["status"]) for e in answer["data"]]
    assert statuses == [(0, 202), (1, 400), (2, 202), (3, 422), (4, 400), (5, 400), (6, 202)]
    assert (answer["accepted"], answer["replayed"], answer["failed"]) == (3, 0, 4)
    data = answer["data"]
    assert data[1]["error"]["code"] == "invalid_fields" and "to" in data[1]["error"]["fields"]
    assert data[3]["error"]["code"] == "window_closed"
    assert "nonsense" in data[5]["error"]["fields"]
    ids = [data[i]["message"]["id"] for i in (0, 2, 6)]
    # Committed before the answer, enqueued once each, in order; the answer is what is stored.
    assert [d[0] for d in dispatched] == ids
    for i in (0, 2, 6):
        stored = client.get(f"/v1/messages/{data[i]['message']['id']}", headers=auth).get_json()
        assert stored == data[i]["message"]
    assert bodies(tenant["tenant_id"]) == ["code 1", "code 3", "free-form WhatsApp, window open"]


def test_a_batch_is_one_insert_of_messages_and_their_events(client, auth, dispatched, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(tenants, "CACHE_SECONDS", 300.0)
    assert post(client, auth, [sms(0)]).status_code == 200  # the key and account cached
    with statements() as seen:
        resp = post(client, auth, [sms(i) for i in range(1, 51)])
    assert [e["status"] for e in resp.get_json()["data"]] == [202] * 50
    inserts = [s for s in seen if "INSERT" in s]
    assert len(inserts) == 1, inserts  # the messages and their events, one statement
    assert "INSERT INTO messages" in inserts[0] and "ON CONFLICT" in inserts[0]
    assert "INSERT INTO message_events" in inserts[0]
    assert len(seen) == 2  # and the contacts, for all 50
    assert len(dispatched) == 51


def test_idempotency_per_entry_within_a_batch_and_across(client, auth, dispatched) -> None:
    first = post(
        client,
        auth,
        [
            sms(1, idempotency_key="k1"),
            sms(1, idempotency_key="k1"),  # the same message twice: one row, a replay
            sms(2, idempotency_key="k1"),  # the key with another message
            sms(3, idempotency_key="k3"),
        ],
    ).get_json()["data"]
    assert [e["status"] for e in first] == [202, 200, 409, 202]
    assert first[1]["message"]["id"] == first[0]["message"]["id"]
    assert first[2]["error"]["code"] == "idempotency_conflict"
    again = post(
        client, auth, [sms(3, idempotency_key="k3"), sms(1, idempotency_key="k1"), sms(4)]
    ).get_json()["data"]
    assert [e["status"] for e in again] == [200, 200, 202]
    assert again[0]["message"]["id"] == first[3]["message"]["id"]
    assert again[1]["message"]["id"] == first[0]["message"]["id"]
    # The single endpoint shares the key space: the header names the same message.
    single = client.post(
        "/v1/messages", json=sms(3), headers={**auth, "Idempotency-Key": "k3"}
    ).get_json()
    assert single["id"] == first[3]["message"]["id"]
    assert len(dispatched) == 3


def test_a_replay_wins_over_a_refusal_as_for_one_message(client, auth, tenant, dispatched):  # type: ignore[no-untyped-def]
    entry = {"to": TO, "body": "hello", "idempotency_key": "w1"}
    created = post(client, auth, [entry]).get_json()["data"][0]
    assert created["status"] == 202
    with session_scope() as session:  # the recipient opts out meanwhile
        from models import Contact

        session.execute(
            update(Contact)
            .where(Contact.tenant_id == tenant["tenant_id"], Contact.phone == TO)
            .values(opted_out=True)
        )
    again = post(client, auth, [entry, {"to": TO, "body": "new"}]).get_json()["data"]
    assert again[0]["status"] == 200 and again[0]["message"]["id"] == created["message"]["id"]
    assert again[1]["status"] == 422 and again[1]["error"]["code"] == "opted_out"


def test_quota_refuses_the_entries_over_it_and_stores_only_the_rest(client, dispatched) -> None:
    tenant = make_tenant("batch-quota")
    with session_scope() as session:
        session.execute(
            update(Tenant).where(Tenant.id == tenant["tenant_id"]).values(hourly_limit=3)
        )
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    data = post(client, auth, [sms(i) for i in range(2)]).get_json()["data"]
    assert [e["status"] for e in data] == [202, 202]
    data = post(
        client, auth, [sms(10), {"to": "bad", "body": "x", "channel": "sms"}, sms(11), sms(12)]
    ).get_json()["data"]
    assert [e["status"] for e in data] == [202, 400, 429, 429]
    assert data[2]["error"]["code"] == "rate_limited" and data[2]["error"]["retry_after"] >= 1
    assert bodies(tenant["tenant_id"]) == ["code 0", "code 1", "code 10"]
    assert len(dispatched) == 3


def test_tenants_are_isolated(client, auth, tenant, dispatched) -> None:
    other = make_tenant("batch-other")
    other_auth = {"Authorization": f"Bearer {other['api_key']}"}
    mine = post(client, auth, [sms(1, idempotency_key="shared")]).get_json()["data"][0]
    theirs = post(client, other_auth, [sms(1, idempotency_key="shared")]).get_json()["data"][0]
    assert mine["status"] == theirs["status"] == 202
    assert mine["message"]["id"] != theirs["message"]["id"]
    assert client.get(f"/v1/messages/{theirs['message']['id']}", headers=auth).status_code == 404
    assert bodies(other["tenant_id"]) == ["code 1"]


def _error(resp, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.get_data(as_text=True)
    return resp.get_json()["error"]


def test_the_envelope_is_refused_as_a_whole(client, auth, tenant, dispatched) -> None:
    too_many = [sms(i % 100) for i in range(1001)]
    assert _error(post(client, auth, too_many), 413)["code"] == "batch_too_large"
    for body in ({"messages": "nope"}, {"messages": []}, {"messages": {"to": TO}}, {}):
        err = _error(client.post("/v1/messages/batch", json=body, headers=auth), 400)
        assert "messages" in err["fields"]
    err = _error(client.post("/v1/messages/batch", json=[sms(1)], headers=auth), 400)
    assert err["code"] == "invalid_request"
    err = _error(
        client.post("/v1/messages/batch", json={"messages": [sms(1)], "x": 1}, headers=auth), 400
    )
    assert "x" in err["fields"]
    header = {**auth, "Idempotency-Key": "k"}
    assert _error(post(client, header, [sms(1)]), 400)["code"] == "invalid_request"
    bad = client.post(
        "/v1/messages/batch", data="{", headers={**auth, "Content-Type": "application/json"}
    )
    assert _error(bad, 400)["code"] == "malformed_json"
    assert client.post("/v1/messages/batch", json={"messages": [sms(1)]}).status_code == 401
    assert bodies(tenant["tenant_id"]) == [] and dispatched == []


def test_a_thousand_messages_in_one_batch(client, dispatched) -> None:
    tenant = make_tenant("batch-1000")
    with session_scope() as session:  # no quota: the test defaults allow fewer an hour
        session.execute(
            update(Tenant)
            .where(Tenant.id == tenant["tenant_id"])
            .values(hourly_limit=0, daily_limit=0)
        )
    auth = {"Authorization": f"Bearer {tenant['api_key']}"}
    answer = post(client, auth, [sms(i) for i in range(1000)]).get_json()
    assert answer["accepted"] == 1000 and answer["failed"] == 0
    assert len(bodies(tenant["tenant_id"])) == 1000 and len(dispatched) == 1000
