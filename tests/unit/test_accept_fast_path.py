"""The accept path's round trips and its per-process cache of key → tenant → accounts:
a change made in this process is seen at once, one made elsewhere within the TTL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import func, text, update

from models import ApiKey, get_engine, session_scope
from services.tenancy import tenants
from services.tenancy.tenants import add_provider_account, hash_key, revoke_api_key
from tests.conftest import make_tenant

TO = "+12025550143"


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every SQL statement this thread sends while the block runs (a webhook that an
    earlier test's sandbox posts to this process's live API runs on another thread).
    Read at psycopg's cursor, where SQLAlchemy's statements and models/fast.py's
    alike go through; the pool's pre-ping is left out."""
    seen: list[str] = []
    me = threading.get_ident()
    execute = psycopg.Cursor.execute

    def record(cursor, query, *args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.get_ident() == me and str(query) not in _PINGS:
            seen.append(" ".join(str(query).split()))
        return execute(cursor, query, *args, **kwargs)

    psycopg.Cursor.execute = record  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]


_PINGS = {"SELECT 1", ";"}


def test_post_is_two_statements_once_the_key_is_known(
    client, auth, dispatched, monkeypatch
) -> None:
    # The first request reads the key, the tenant and the account; later ones do not
    # (a long TTL here: a loaded machine may take seconds between the two requests).
    monkeypatch.setattr(tenants, "CACHE_SECONDS", 300.0)
    assert client.post("/v1/messages", json={"to": TO, "body": "warm"}, headers=auth).status_code
    with statements() as seen:
        resp = client.post("/v1/messages", json={"to": TO, "body": "hi"}, headers=auth)
    assert resp.status_code == 202
    body = resp.get_json()
    # The answer carries the event of the new message without reading it back.
    assert [e["status"] for e in body["events"]] == ["queued"]
    # The opt-out/window check, then the message with its event in one statement; no
    # savepoint.
    assert len(seen) == 2, seen
    assert seen[0].startswith("SELECT") and "contacts" in seen[0]
    assert "INSERT INTO messages" in seen[1] and "INSERT INTO message_events" in seen[1]
    # What the answer said is what was stored.
    stored = client.get(f"/v1/messages/{body['id']}", headers=auth).get_json()
    assert stored == body


def test_a_key_revoked_in_this_process_is_refused_at_once(client, dispatched) -> None:
    tenant = make_tenant("revoke-cached")
    hdr = {"Authorization": f"Bearer {tenant['api_key']}"}
    assert client.post("/v1/messages", json={"to": TO, "body": "1"}, headers=hdr).status_code == 202
    with session_scope() as session:  # a bulk UPDATE, not the ORM attribute
        session.execute(
            update(ApiKey)
            .where(ApiKey.key_hash == hash_key(tenant["api_key"]))
            .values(revoked_at=func.now())
        )
    assert client.post("/v1/messages", json={"to": TO, "body": "2"}, headers=hdr).status_code == 401


def test_revoke_api_key_clears_the_cache(client, dispatched) -> None:
    tenant = make_tenant("revoke-fn")
    hdr = {"Authorization": f"Bearer {tenant['api_key']}"}
    assert client.get("/v1/messages", headers=hdr).status_code == 200
    with session_scope() as session:
        key = session.query(ApiKey).filter_by(key_hash=hash_key(tenant["api_key"])).one()
        assert revoke_api_key(session, key.id)
    assert client.get("/v1/messages", headers=hdr).status_code == 401


def test_an_account_added_in_this_process_is_used_at_once(client, dispatched) -> None:
    tenant = make_tenant("no-twilio", twilio={})
    hdr = {"Authorization": f"Bearer {tenant['api_key']}"}
    sms = {"to": TO, "body": "b", "channel": "sms", "provider": "twilio"}
    resp = client.post("/v1/messages", json=sms, headers=hdr)  # "no account" is cached too
    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "provider_not_configured"
    with session_scope() as session:
        add_provider_account(
            session,
            tenant["tenant_id"],
            "twilio",
            account_sid="AC" + "e5" * 16,
            auth_token="tok",
            sms_from="+12025550100",
        )
    assert client.post("/v1/messages", json=sms, headers=hdr).status_code == 202


def test_a_change_made_elsewhere_is_seen_within_the_ttl(client, dispatched, monkeypatch) -> None:
    """Another process's revoke does not pass through this one: the cache serves the
    key until its entry expires (CACHE_SECONDS, the documented maximum delay)."""
    tenant = make_tenant("revoke-elsewhere")
    hdr = {"Authorization": f"Bearer {tenant['api_key']}"}
    assert client.get("/v1/messages", headers=hdr).status_code == 200
    with get_engine().begin() as conn:  # no Session: as another process would
        conn.execute(
            text("UPDATE api_keys SET revoked_at = created_at WHERE key_hash = :h"),
            {"h": hash_key(tenant["api_key"])},
        )
    assert client.get("/v1/messages", headers=hdr).status_code == 200
    monkeypatch.setattr(tenants.time, "monotonic", lambda: 1e12)  # the TTL has passed
    assert client.get("/v1/messages", headers=hdr).status_code == 401


def test_policy_reads_unflushed_contacts_and_gives_aware_times() -> None:
    """The contacts SELECT runs on psycopg, outside SQLAlchemy's autoflush: a contact
    added in the caller's session still counts (an opt-out is never missed), and its
    times come back aware, as the models give them."""
    from core.errors import PolicyRefused
    from models import Contact, Tenant, new_session, utcnow
    from services.messages.accept import accept
    from services.policy.consent import policy_contacts

    made = make_tenant("policy-flush")
    opted, fresh = "+12025550161", "+12025550162"
    session = new_session()
    try:
        tenant = session.get(Tenant, made["tenant_id"])
        session.add(Contact(tenant_id=tenant.id, phone=opted, opted_out=True))
        session.add(Contact(tenant_id=tenant.id, phone=fresh, last_inbound_at=utcnow()))
        found = policy_contacts(session, [(tenant.id, opted), (tenant.id, fresh)])
        assert found[(tenant.id, opted)].opted_out is True
        seen = found[(tenant.id, fresh)].last_inbound_at
        assert seen is not None and seen.utcoffset() == timedelta(0)
        session.add(Contact(tenant_id=tenant.id, phone="+12025550163", opted_out=True))
        with pytest.raises(PolicyRefused) as refused:
            accept(session, tenant, {"to": "+12025550163", "channel": "sms", "body": "x"})
        assert refused.value.code == "opted_out"
    finally:
        session.rollback()
        session.close()


def test_an_api_request_without_cookies_builds_no_session_signer(
    app, client, auth, dispatched, monkeypatch
) -> None:
    """The console's signed-cookie session costs a signer per request; a request that
    sends no cookie (every API call) gets Flask's empty session without one."""
    interface = app.session_interface
    built: list[int] = []
    real = type(interface).get_signing_serializer

    def counting(self, app_):  # type: ignore[no-untyped-def]
        built.append(1)
        return real(self, app_)

    monkeypatch.setattr(type(interface), "get_signing_serializer", counting)
    resp = client.post("/v1/messages", json={"to": TO, "body": "hi"}, headers=auth)
    assert resp.status_code == 202 and "Set-Cookie" not in resp.headers
    assert built == []
    # A request with a cookie still opens the signed session (the console's login).
    client.set_cookie("herald_console", "not-signed", path="/console")
    assert client.get("/console/login").status_code == 200
    assert built


def test_a_json_body_skips_form_parsing(client, auth, dispatched, monkeypatch) -> None:
    """`request.data` parses a form first; a JSON body is read as it is. A form body
    is a 415 (the URL and form check of api/inputs.py still reads a form)."""
    import flask.wrappers

    parsed: list[int] = []
    real = flask.wrappers.Request._load_form_data

    def counting(self):  # type: ignore[no-untyped-def]
        parsed.append(1)
        return real(self)

    monkeypatch.setattr(flask.wrappers.Request, "_load_form_data", counting)
    resp = client.post("/v1/messages", json={"to": TO, "body": "hi"}, headers=auth)
    assert resp.status_code == 202
    assert parsed == []
    resp = client.post(
        "/v1/messages",
        data={"to": TO, "body": "hi"},  # application/x-www-form-urlencoded
        headers=auth,
    )
    assert resp.status_code == 415  # not JSON: refused before any parsing
    assert resp.get_json()["error"]["code"] == "unsupported_media_type"


def test_a_warm_post_makes_no_session(client, auth, dispatched, monkeypatch) -> None:
    """With the key, tenant and account cached the request reads nothing: its session
    is never made (making and closing one was a cost on every POST)."""
    import api.auth
    from models import new_session

    monkeypatch.setattr(tenants, "CACHE_SECONDS", 300.0)
    assert client.post("/v1/messages", json={"to": TO, "body": "warm"}, headers=auth).status_code
    closes: list[bool] = []
    made_sessions: list[object] = []

    def session():  # type: ignore[no-untyped-def]
        made = new_session()
        made_sessions.append(made)
        real = made.close

        def close() -> None:
            closes.append(made.in_transaction())
            real()

        made.close = close  # type: ignore[method-assign]
        return made

    monkeypatch.setattr(api.auth, "new_session", session)
    resp = client.post("/v1/messages", json={"to": TO, "body": "hi"}, headers=auth)
    assert resp.status_code == 202
    assert made_sessions == [] and closes == []
    # A cold request reads the database: its session is closed before the group commit.
    tenants.forget_cached()
    closes.clear()
    resp = client.post("/v1/messages", json={"to": TO, "body": "cold"}, headers=auth)
    assert resp.status_code == 202
    assert closes[0] is True and len(closes) == 2


def test_the_rows_document_stores_every_value_as_given(dispatched) -> None:
    """The messages go in as one JSON document (json_to_recordset): text with quotes,
    backslashes and characters beyond the BMP, nested JSON (kept as the same text),
    times to the microsecond (whatever their offset) and NULLs all come back exactly."""
    from datetime import datetime, timezone

    from models import Message, Tenant, new_session
    from services.messages.accept import prepare
    from services.messages.group_commit import GroupCommit

    made = make_tenant("rows-doc")
    session = new_session()
    tenant = session.get(Tenant, made["tenant_id"])
    session.expunge(tenant)
    body = 'Quote " back\\slash \u00e9 \u4e2d \U0001f600 tab\t end'
    send_at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    data = {
        "to": TO,
        "channel": "sms",
        "body": body,
        "media_url": ["https://example.com/a.png", "https://example.com/b\u00e9.png"],
        "metadata": {"order": {"id": 7, "tags": ["x", "\U0001f600"]}, "empty": None},
        "callback_url": "https://example.com/cb?a=1&b=\u00e9",
        "send_at": send_at,
    }
    items = [prepare(session, tenant, data), prepare(session, tenant, {"to": TO, "body": "b"})]
    items[1].data["channel"] = "sms"
    session.close()
    GroupCommit().submit(items)
    assert [i.status for i in items] == [202, 202]
    with new_session() as check:
        stored = check.get(Message, items[0].values["id"])
        assert stored.body == body
        assert stored.media_urls == data["media_url"]
        assert stored.meta == data["metadata"]
        assert stored.callback_url == data["callback_url"]
        assert stored.send_at == send_at and stored.status == "scheduled"
        assert stored.template is None and stored.contact_id is None
        raw = check.execute(
            text("SELECT metadata::text, media_urls::text FROM messages WHERE id = :i"),
            {"i": stored.id},
        ).one()
        assert raw == (json.dumps(data["metadata"]), json.dumps(data["media_url"]))
        other = check.get(Message, items[1].values["id"])
        assert other.body == "b" and other.send_at is None and other.meta == {}
