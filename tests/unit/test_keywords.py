"""Opt-out keywords as carriers define them, a tenant's own words in other languages,
and answers where the provider gives none (WhatsApp; a tenant's own SMS words)."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import select, update

from models import Contact, Message, Tenant, session_scope
from services.policy.keywords import DEFAULT_REPLIES, HELP, START, STOP, keyword_of
from tests.conftest import META_SECRET, META_TOKEN, TWILIO_SID, TWILIO_TOKEN, make_tenant
from tests.unit.test_webhooks import meta_post, twilio_post


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("stop", STOP),
        ("  Stop  All ", STOP),
        ("REVOKE", STOP),
        ("optout", STOP),
        ("Unsubscribe", STOP),
        ("unstop", START),
        ("yes", START),
        ("info", HELP),
        ("please stop texting me", None),
        ("", None),
    ],
)
def test_the_standard_words_match_the_whole_text(text: str, kind: str | None) -> None:
    found = keyword_of(text)
    assert (found[0] if found else None) == kind


def test_a_tenants_own_words_extend_never_replace() -> None:
    own = {"stop": ["Arrêt", "parar", "BAJA"], "start": ["ALTA"], "help": ["AYUDA"]}
    assert keyword_of("arrêt", own) == (STOP, True)
    assert keyword_of("Baja", own) == (STOP, True)
    assert keyword_of("alta", own) == (START, True)
    assert keyword_of("ayuda", own) == (HELP, True)
    assert keyword_of("STOP", own) == (STOP, False)
    assert keyword_of("arret", None) is None


def _meta_tenant() -> tuple[dict[str, str], str]:
    phone_id = "1" + str(int(uuid.uuid4().hex, 16))[:14]  # this tenant's alone
    tenant = make_tenant(
        "kw",
        meta={"phone_number_id": phone_id, "access_token": META_TOKEN, "app_secret": META_SECRET},
    )
    return tenant, phone_id


def _meta_text(client, phone_id: str, sender: str, text: str):  # type: ignore[no-untyped-def]
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "12025550111", "phone_number_id": phone_id},
        "contacts": [{"profile": {"name": "Luis"}, "wa_id": sender}],
        "messages": [
            {
                "from": sender,
                "id": "wamid.KW" + uuid.uuid4().hex,
                "timestamp": str(int(time.time())),
                "type": "text",
                "text": {"body": text},
            }
        ],
    }
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "W", "changes": [{"field": "messages", "value": value}]}],
    }
    resp = meta_post(client, payload)
    assert resp.status_code == 200, resp.get_json()


def _replies(tenant_id: str, phone: str) -> list[Message]:
    with session_scope() as session:
        rows = session.scalars(
            select(Message)
            .where(
                Message.tenant_id == tenant_id,
                Message.direction == "outbound",
                Message.to_number == phone,
                Message.origin == "keyword",
            )
            .order_by(Message.id)
        ).all()
        session.expunge_all()
        return list(rows)


def _opted_out(tenant_id: str, phone: str) -> bool:
    with session_scope() as session:
        return session.scalars(
            select(Contact.opted_out).where(Contact.tenant_id == tenant_id, Contact.phone == phone)
        ).one()


def test_a_whatsapp_stop_opts_out_and_is_confirmed_once(client, dispatched) -> None:
    tenant, phone_id = _meta_tenant()
    _meta_text(client, phone_id, "12025550161", "Stop")
    assert _opted_out(tenant["tenant_id"], "+12025550161")
    (reply,) = _replies(tenant["tenant_id"], "+12025550161")
    # Queued for sending although the person has opted out: the one message they still get.
    assert (reply.status, reply.provider, reply.body) == ("queued", "meta", DEFAULT_REPLIES[STOP])
    assert reply.meta["keyword"] == STOP
    assert (reply.id, "send") in dispatched or any(i == reply.id for i, _ in dispatched)
    # HELP is answered too; an ordinary text is not.
    _meta_text(client, phone_id, "12025550161", "help")
    _meta_text(client, phone_id, "12025550161", "Is the car still available?")
    replies = _replies(tenant["tenant_id"], "+12025550161")
    assert [r.body for r in replies] == [DEFAULT_REPLIES[STOP], DEFAULT_REPLIES[HELP]]


def test_a_tenants_own_word_opts_out_on_sms_and_herald_answers_it(client, dispatched) -> None:
    tenant = make_tenant(
        "kw-sms",
        twilio={"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "sms_from": "+12025550177"},
    )
    with session_scope() as session:
        session.execute(
            update(Tenant)
            .where(Tenant.id == tenant["tenant_id"])
            .values(
                keywords={"stop": ["ARRET"], "start": ["ALTA"]},
                keyword_replies={"stop": "Vous êtes désinscrit.", "help": ""},
            )
        )

    def sms(text: str) -> None:
        params = {
            "MessageSid": "SM" + uuid.uuid4().hex,
            "AccountSid": TWILIO_SID,
            "From": "+12025550162",
            "To": "+12025550177",
            "Body": text,
        }
        assert twilio_post(client, "/webhooks/twilio/inbound", params).status_code == 200

    sms("STOP")  # Twilio answers its own words on SMS: Herald stays silent
    assert _opted_out(tenant["tenant_id"], "+12025550162")
    assert _replies(tenant["tenant_id"], "+12025550162") == []
    sms("alta")  # its own word, answered with the default
    assert not _opted_out(tenant["tenant_id"], "+12025550162")
    sms("Arret")  # no provider knows it: Herald opts out and answers
    assert _opted_out(tenant["tenant_id"], "+12025550162")
    replies = _replies(tenant["tenant_id"], "+12025550162")
    assert [r.body for r in replies] == [DEFAULT_REPLIES[START], "Vous êtes désinscrit."]
    assert {(r.channel, r.provider) for r in replies} == {("sms", "twilio")}
    # The opt-out holds for everything else.
    refused = client.post(
        "/v1/messages",
        headers={"Authorization": f"Bearer {tenant['api_key']}"},
        json={"to": "+12025550162", "channel": "sms", "body": "Offer!"},
    )
    assert refused.status_code == 422, refused.get_json()


def test_a_reply_set_to_empty_sends_nothing(client, dispatched) -> None:
    tenant, phone_id = _meta_tenant()
    with session_scope() as session:
        session.execute(
            update(Tenant)
            .where(Tenant.id == tenant["tenant_id"])
            .values(keyword_replies={"stop": "", "help": "Call us on 555."})
        )
    _meta_text(client, phone_id, "12025550163", "OPTOUT")
    assert _opted_out(tenant["tenant_id"], "+12025550163")
    assert _replies(tenant["tenant_id"], "+12025550163") == []
    _meta_text(client, phone_id, "12025550163", "INFO")
    assert [r.body for r in _replies(tenant["tenant_id"], "+12025550163")] == ["Call us on 555."]


def test_the_admin_api_validates_keywords(client, admin, tenant) -> None:
    url = f"/admin/v1/tenants/{tenant['tenant_id']}"
    ok = client.patch(
        url,
        headers=admin,
        json={"keywords": {"stop": ["ARRET", "PARAR"]}, "keyword_replies": {"help": ""}},
    )
    assert ok.status_code == 200, ok.get_json()
    assert ok.get_json()["keywords"] == {"stop": ["ARRET", "PARAR"]}
    for bad in (
        {"keywords": {"halt": ["X"]}},
        {"keywords": {"stop": "ARRET"}},
        {"keywords": {"stop": [""]}},
        {"keyword_replies": {"stop": "x" * 1001}},
    ):
        assert client.patch(url, headers=admin, json=bad).status_code == 400, bad


def test_the_cli_sets_keywords_and_replies(capsys, tenant) -> None:
    import json

    from herald.cli import main

    base = ["tenant", "update", tenant["tenant_id"]]
    assert (
        main([*base, "--keywords", '{"stop": ["BAJA"]}', "--keyword-replies", '{"help": ""}']) == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["keywords"] == {"stop": ["BAJA"]} and shown["keyword_replies"] == {"help": ""}
    assert main([*base, "--keywords", '{"stop": "BAJA"}']) == 2
    assert "keywords" in json.loads(capsys.readouterr().err)["error"]["fields"]
    with pytest.raises(SystemExit):
        main([*base, "--keywords", "[1]"])
