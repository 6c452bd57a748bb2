"""Erasure end to end: a person's traffic through the sandbox (outbound SMS and WhatsApp,
inbound texts with a name, status callbacks, STOP, events out to a callback URL), then
an erasure, then the WHOLE database (every table of the test schema) and the test's
Redis keys and values searched for the number in every form and for the texts."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text, update

from models import Tenant, new_session, session_scope
from services.messages.delivery import deliver
from services.policy.limits import get_redis, key, take_pair_slot
from services.reporting.events import deliver_pending_events
from tests.conftest import META_SECRET, META_TOKEN, TWILIO_SID, TWILIO_TOKEN
from tests.conftest import make_tenant as _make_tenant
from tests.integration.conftest import wait_for
from tests.integration.test_events_out import Receiver


def make_tenant(*args, **kwargs) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A test tenant the operator lets text Brazil too (the SMS pumping guard,
    services/policy/destinations.py): the people erased here have Brazilian numbers."""
    from sqlalchemy import update as _update

    from models import Tenant as _Tenant
    from models import session_scope as _scope

    made = _make_tenant(*args, **kwargs)
    with _scope() as session:
        session.execute(
            _update(_Tenant)
            .where(_Tenant.id == made["tenant_id"])
            .values(sms_countries=["US", "BR"])
        )
    return made


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


TEMPLATE = {"name": "order_update", "language": "es", "variables": ["{var}"]}


def _mobile() -> str:
    """A Brazilian mobile of this test alone; its WhatsApp id has no ninth digit."""
    return "+55119" + str(random.randint(6, 9)) + "".join(random.choices("0123456789", k=7))


def _wa_id(number: str) -> str:
    return number[:5] + number[6:]


def _business(live: Any) -> dict[str, Any]:
    """A tenant with a Meta phone number id and a Twilio number of its own (inbound to
    either reaches it alone)."""
    phone_id = "1" + str(uuid.uuid4().int)[:14]
    sms_from = "+1415523" + str(uuid.uuid4().int)[:4]
    meta = {"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": META_SECRET}
    live.control.post("/_sandbox/accounts", json={"provider": "meta", **meta}).raise_for_status()
    twilio = {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "sms_from": sms_from}
    made = make_tenant("erasure", windows=(), twilio=twilio, meta=meta)
    with session_scope() as session:  # no STOP confirmation: usage must not move meanwhile
        session.execute(
            update(Tenant)
            .where(Tenant.id == made["tenant_id"])
            .values(keyword_replies={"stop": ""})
        )
    return {
        **made,
        "phone_id": phone_id,
        "sms_from": sms_from,
        "auth": {"Authorization": f"Bearer {made['api_key']}"},
    }


class Person:
    """Someone who writes to the business and is written to: every text unique."""

    def __init__(self, label: str) -> None:
        self.number = _mobile()
        self.tag = f"{label}{uuid.uuid4().hex[:10]}"
        self.name = f"Name{self.tag}"

    def text(self, what: str) -> str:
        return f"{what} {self.tag}"

    def needles(self) -> list[str]:
        wa = _wa_id(self.number)
        return [self.number, self.number.lstrip("+"), wa, wa.lstrip("+"), self.tag]


def _inbound(live: Any, provider: str, sender: str, to: str, body: str, name: str) -> None:
    answer = live.control.post(
        "/_sandbox/inbound",
        json={"provider": provider, "from": sender, "to": to, "body": body, "profile_name": name},
    ).json()
    assert answer["status_code"] == 200 and answer["ok"], answer


def _traffic(live: Any, client: Any, shop: dict[str, Any], who: Person, receiver: Any) -> list:
    """Inbound on both providers, outbound WhatsApp (free form and template) and SMS
    delivered with their status callbacks and events out; returns the message ids."""
    auth = shop["auth"]
    assert client.post(
        "/v1/contacts", json={"phone": who.number, "name": who.name, "id": who.tag}, headers=auth
    ).status_code in (200, 201)
    # Meta writes from the WhatsApp id form, with the profile name.
    _inbound(live, "meta", who.number, shop["phone_id"], who.text("hello from meta"), who.name)
    _inbound(live, "twilio", who.number, shop["sms_from"], who.text("hello by sms"), who.name)
    sends = [
        {"body": who.text("free form reply"), "metadata": {"order": who.tag}},
        {
            "template": {**TEMPLATE, "variables": [who.text("variable")]},
            "metadata": {"crm": who.tag},
        },
        {"body": who.text("an sms"), "channel": "sms"},
    ]
    ids = []
    for fields in sends:
        resp = client.post(
            "/v1/messages",
            json={"to": who.number, "callback_url": receiver.url, **fields},
            headers=auth,
        )
        assert resp.status_code == 202, resp.get_json()
        ids.append(resp.get_json()["id"])
        assert deliver(ids[-1]).action == "sent"
    for mid in ids:
        wait_for(
            lambda mid=mid: (
                client.get(f"/v1/messages/{mid}", headers=auth).get_json()["status"]
                in ("delivered", "read")
            ),
            what="a final status",
        )
        deliver_pending_events(mid)
    return ids


def _dump() -> list[str]:
    """Every row of every table of the test schema, as JSON text."""
    session = new_session()
    try:
        tables = session.scalars(
            text(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            )
        ).all()
        assert {"messages", "contacts", "webhook_events", "suppressions"} <= set(tables)
        rows = []
        for table in tables:
            rows += [
                f"{table}: {row}"
                for row in session.scalars(text(f'SELECT row_to_json(t)::text FROM "{table}" t'))
            ]
        return rows
    finally:
        session.close()


def _redis_dump() -> list[str]:
    """The test's Redis keys (its prefix) and their values."""
    client = get_redis()
    assert client is not None
    found = []
    for name in client.scan_iter(match=key() + "*", count=1000):
        kind = client.type(name)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        value: Any = None
        if kind == "string":
            value = client.get(name)
        elif kind == "hash":
            value = client.hgetall(name)
        elif kind == "list":
            value = client.lrange(name, 0, -1)
        elif kind in ("set", "zset"):
            value = client.zrange(name, 0, -1) if kind == "zset" else client.smembers(name)
        found.append(f"{name!r} = {value!r}")
    return found


def _found(rows: list[str], needles: list[str]) -> list[str]:
    return [row for row in rows if any(n in row for n in needles)]


def _usage(client: Any, auth: dict[str, str]) -> dict[str, Any]:
    resp = client.get("/v1/usage?group_by=channel,provider,status", headers=auth)
    assert resp.status_code == 200, resp.get_json()
    return {k: resp.get_json()[k] for k in ("data", "totals")}  # not the period: it moves


def test_erasure_leaves_the_number_and_texts_nowhere(live, client, receiver) -> None:
    shop, other_shop = _business(live), _business(live)
    erased, kept = Person("erased"), Person("kept")
    _traffic(live, client, shop, erased, receiver)
    _traffic(live, client, shop, kept, receiver)
    _traffic(live, client, other_shop, erased, receiver)  # the same person, another tenant
    # STOP from the person to the first business (Meta, from the WhatsApp id form).
    _inbound(live, "meta", erased.number, shop["phone_id"], "STOP", erased.name)
    # WhatsApp pair pacing left a key naming each recipient in Redis.
    take_pair_slot("meta", shop["phone_id"], erased.number, 60.0)
    take_pair_slot("meta", shop["phone_id"], kept.number, 60.0)
    assert len(receiver.events) >= 9 and _found(_dump(), erased.needles())
    assert _found(_redis_dump(), [erased.number])
    usage = _usage(client, shop["auth"])

    resp = client.post("/v1/erasures", json={"phone": erased.number}, headers=shop["auth"])
    assert resp.status_code == 200, resp.get_json()
    done = resp.get_json()
    assert done["tenants"] == [shop["tenant_id"]]
    assert done["erased"]["contacts"] == 1
    assert done["erased"]["messages"] == 6  # 3 out, 2 in, STOP
    assert done["erased"]["webhook_events"] >= 6 and done["erased"]["event_deliveries"] >= 3
    # The number's two WhatsApp forms and the BSUID Meta named the person by.
    assert done["suppressions"] == 3 and done["redis_keys"] == 1
    # Counts and billing survive: the rows stay, only what names the person goes.
    assert _usage(client, shop["auth"]) == usage

    # The other tenant's rows about the same person are untouched by this tenant's erasure.
    with session_scope() as session:
        theirs = session.execute(
            text(
                "SELECT count(*) FROM messages WHERE tenant_id = :t"
                " AND (to_number = ANY(:forms) OR from_number = ANY(:forms))"
            ),
            {"t": other_shop["tenant_id"], "forms": [erased.number, _wa_id(erased.number)]},
        ).scalar()
        contact = session.execute(
            text("SELECT name FROM contacts WHERE tenant_id = :t"), {"t": other_shop["tenant_id"]}
        ).scalar()
    assert (theirs, contact) == (5, erased.name)

    # The opted-out, erased number is refused on the next send, in either form.
    for to in (erased.number, _wa_id(erased.number)):
        refused = client.post(
            "/v1/messages",
            json={"to": to, "template": {**TEMPLATE, "variables": ["1"]}},
            headers=shop["auth"],
        )
        # (the WhatsApp id form may not be a valid number to dial: then a 400)
        code = refused.get_json()["error"]["code"]
        assert (refused.status_code, code) == (422, "opted_out") or (
            to != erased.number and (refused.status_code, code) == (400, "invalid_fields")
        ), refused.get_json()
    # Twice is fine: nothing left, zeros.
    again = client.post(
        "/v1/erasures", json={"wa_id": erased.number.lstrip("+")}, headers=shop["auth"]
    )
    assert again.status_code == 200 and set(again.get_json()["erased"].values()) == {0}

    # An operator erases the person everywhere (the CLI's and admin API's rule).
    from services.privacy.erasure import erase_number

    with session_scope() as session:
        everywhere = erase_number(session, erased.number, None)
    assert everywhere.tenants == [other_shop["tenant_id"]]

    rows, keys = _dump(), _redis_dump()
    assert _found(rows, erased.needles()) == []
    assert _found(keys, erased.needles()) == []
    # Another person's data is untouched: number, WhatsApp id, texts, name, Redis key.
    still = _found(rows, [kept.tag])
    assert any(kept.text("hello from meta") in row for row in still)
    assert any(kept.text("free form reply") in row for row in still)
    assert any(kept.name in row and row.startswith("contacts") for row in still)
    assert _found(rows, [kept.number]) and _found(keys, [kept.number])


def test_erasure_racing_sends_never_fails_and_ends_clean(live) -> None:
    shop = _business(live)
    who = Person("race")
    auth = shop["auth"]
    answers: list[int] = []
    body = {"to": who.number, "body": who.text("race"), "channel": "sms"}

    def send() -> None:
        with httpx.Client(base_url=live.api_url, timeout=30, headers=auth) as http:
            for _ in range(15):
                answers.append(http.post("/v1/messages", json=body).status_code)

    def erase() -> None:
        with httpx.Client(base_url=live.api_url, timeout=30, headers=auth) as http:
            for _ in range(5):
                answers.append(http.post("/v1/erasures", json={"phone": who.number}).status_code)

    threads = [threading.Thread(target=f) for f in (send, send, erase, erase)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 40 and set(answers) <= {200, 202}, sorted(set(answers))
    with httpx.Client(base_url=live.api_url, timeout=30, headers=auth) as http:
        assert http.post("/v1/erasures", json={"phone": who.number}).status_code == 200
    assert _found(_dump(), who.needles()) == []
