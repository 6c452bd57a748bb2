"""Twilio callbacks that arrive while PostgreSQL is unreachable: kept in Redis (Twilio
never sends a callback again after a 5xx), answered 2xx, and stored exactly once when
the database is back (services/callbacks/spool.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import select

from herald.stack import free_port
from models import Message, session_scope
from tests.conftest import TWILIO_SID, TWILIO_TOKEN, make_tenant
from tests.unit.test_webhooks import events_of, get, new_message, twilio_post, twilio_status


@contextmanager
def database_unreachable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process pointed at a PostgreSQL port nobody listens on, then back."""
    from core.config import get_settings
    from models import reset_engine
    from services.tenancy.tenants import forget_cached

    real = get_settings().database_url
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://herald@127.0.0.1:{free_port()}/x")
    get_settings.cache_clear()
    reset_engine()
    forget_cached()  # the outage outlasts the signers' cache (a few seconds)
    try:
        yield
    finally:
        monkeypatch.setenv("DATABASE_URL", real)
        get_settings.cache_clear()
        reset_engine()


@pytest.fixture
def spool(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The spool, drained by the test (no drainer thread), empty before and after."""
    from services.callbacks import spool as module
    from services.policy.limits import get_redis

    monkeypatch.setattr(module, "_wake_drainer", lambda: None)
    get_redis().delete(module.spool_key(), module.dead_key())  # type: ignore[union-attr]
    yield module
    get_redis().delete(module.spool_key(), module.dead_key())  # type: ignore[union-attr]


def test_a_status_callback_during_an_outage_is_spooled_and_applied_once_when_it_is_back(
    client, auth, dispatched, monkeypatch, spool
) -> None:
    mid = new_message(client, auth, channel="sms")
    sid = "SM" + uuid.uuid4().hex
    assert twilio_status(client, mid, "sent", sid).status_code == 204  # signers seen
    with database_unreachable(monkeypatch):
        fast = twilio_status(client, mid, "delivered", sid)
        client.set_cookie("console", "x")  # through Flask: the same answer
        slow = twilio_status(client, mid, "delivered", sid)  # and a duplicate
        client.delete_cookie("console")
        forged = twilio_post(
            client,
            f"/webhooks/twilio/status?message_id={mid}",
            {"MessageSid": sid, "MessageStatus": "failed", "AccountSid": TWILIO_SID},
            token="not-the-token",
        )
        unsigned = client.post(
            f"/webhooks/twilio/status?message_id={mid}",
            data={"MessageSid": sid, "MessageStatus": "failed", "AccountSid": TWILIO_SID},
        )
    for resp in (fast, slow):
        assert resp.status_code == 202, resp.get_data(as_text=True)
    assert sorted(fast.headers.items()) == sorted(slow.headers.items())
    assert fast.get_data() == slow.get_data() == b""
    # Not signed by the token last seen: not kept (503); no signature at all: 403, as ever.
    assert (forged.status_code, unsigned.status_code) == (503, 403)
    assert spool.waiting() == 2
    assert "herald_callbacks_spooled 2.0" in client.get("/metrics").get_data(as_text=True)
    assert get(client, auth, mid)["status"] == "sent"
    assert spool.drain_all() == 2
    assert spool.waiting() == 0
    msg = get(client, auth, mid)
    assert msg["status"] == "delivered" and msg["provider_message_id"] == sid
    assert [e[:2] for e in events_of(mid)].count(("delivered", "delivered")) == 1
    assert spool.drain_all() == 0


def test_an_inbound_message_during_an_outage_is_stored_when_it_is_back(
    client, monkeypatch, spool
) -> None:
    tenant = make_tenant(
        "spooled-inbound",
        twilio={
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "whatsapp_from": "+14155230043",
        },
    )
    sid = "SM" + uuid.uuid4().hex
    params = {
        "MessageSid": sid,
        "AccountSid": TWILIO_SID,
        "From": "whatsapp:+12025550178",
        "To": "whatsapp:+14155230043",
        "Body": "still there?",
    }
    twilio_status(client, "msg_none", "sent")  # this process has seen the signers
    with database_unreachable(monkeypatch):
        resp = twilio_post(client, "/webhooks/twilio/inbound", params)
    assert resp.status_code == 200 and b"<Response" in resp.data
    assert spool.drain_all() == 1
    with session_scope() as session:
        msg = session.scalars(select(Message).where(Message.provider_message_id == sid)).one()
        assert (msg.tenant_id, msg.direction, msg.body) == (
            tenant["tenant_id"],
            "inbound",
            "still there?",
        )


def test_a_process_that_never_saw_the_signers_spools_and_the_drain_checks(
    client, auth, dispatched, monkeypatch, spool
) -> None:
    from services.callbacks import signatures

    mid = new_message(client, auth, channel="sms")
    sid = "SM" + uuid.uuid4().hex
    monkeypatch.setattr(signatures, "_kept_signers", type(signatures._kept_signers)())
    with database_unreachable(monkeypatch):
        signed = twilio_status(client, mid, "delivered", sid)
        forged = twilio_post(
            client,
            f"/webhooks/twilio/status?message_id={mid}",
            {"MessageSid": sid, "MessageStatus": "failed", "AccountSid": TWILIO_SID},
            token="not-the-token",
        )
        no_account = twilio_post(
            client, "/webhooks/twilio/status", {"MessageSid": sid, "MessageStatus": "failed"}
        )
    # Unchecked here (the signers are in the database), so both are kept...
    assert signed.status_code == forged.status_code == 202
    assert no_account.status_code == 503  # ...but never what cannot even name a signer
    assert spool.drain_all() == 2
    # ...and the drain checked them: the forged one changed nothing.
    assert get(client, auth, mid)["status"] == "delivered"
    assert ("failed", "failed") not in [e[:2] for e in events_of(mid)]


def test_redis_unreachable_too_is_a_503(client, auth, dispatched, monkeypatch, spool) -> None:
    import redis

    from services.policy import limits

    mid = new_message(client, auth, channel="sms")
    sid = "SM" + uuid.uuid4().hex
    assert twilio_status(client, mid, "sent", sid).status_code == 204
    dead = redis.Redis(port=free_port(), socket_timeout=0.2, socket_connect_timeout=0.2)
    with monkeypatch.context() as patch, database_unreachable(patch):
        patch.setattr(limits, "_client", dead)
        resp = twilio_status(client, mid, "delivered", sid)
    assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0
