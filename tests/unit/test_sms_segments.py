"""SMS segments and encoding, before the money is spent: every SMS accept says what it
will be billed as; smart encoding (per tenant, on by default) swaps look-alike
characters so one curly quote does not double a bill; a tenant may cap segments."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from models import Message, Tenant, session_scope
from services.content.segments import GSM7, UCS2, measure, smart_encode

TO = "+12025550143"
CURLY = "\u201cYour order\u201d is ready \u2014 it\u2019s at the counter\u2026"  # 5 look-alikes
PLAIN = '"Your order" is ready - it\'s at the counter...'


@pytest.mark.parametrize(
    ("body", "encoding", "segments"),
    [
        ("a" * 160, GSM7, 1),
        ("a" * 161, GSM7, 2),
        ("a" * 306, GSM7, 2),
        ("a" * 307, GSM7, 3),
        ("[" * 80, GSM7, 1),  # an extension character takes two septets
        ("[" * 81, GSM7, 2),
        ("é" * 160, GSM7, 1),  # in the GSM alphabet, though not ASCII
        ("`" * 10, UCS2, 1),  # ASCII, though not in the GSM alphabet
        ("ж" * 70, UCS2, 1),
        ("ж" * 71, UCS2, 2),
        ("ж" * 134, UCS2, 2),
        ("ж" * 135, UCS2, 3),
        ("😀" * 35, UCS2, 1),  # an emoji is two UTF-16 units
        ("😀" * 36, UCS2, 2),
    ],
)
def test_a_body_is_measured_as_carriers_bill_it(body: str, encoding: str, segments: int) -> None:
    size = measure(body)
    assert (size.encoding, size.segments) == (encoding, segments)


def test_smart_encoding_swaps_look_alikes_only_when_that_makes_the_body_gsm() -> None:
    assert smart_encode(CURLY) == (PLAIN, 5)
    assert smart_encode("a\u00a0b\u200bc") == ("a bc", 2)
    # An emoji stays UCS-2 whatever is swapped: the body goes as written.
    assert smart_encode(CURLY + " 😀") == (CURLY + " 😀", 0)
    assert smart_encode("plain") == ("plain", 0)


def _settings(tenant_id: str, **values: object) -> None:
    with session_scope() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant_id).values(**values))


def _count(tenant_id: str) -> int:
    with session_scope() as session:
        return session.scalar(
            select(func.count()).select_from(Message).where(Message.tenant_id == tenant_id)
        )


def test_an_sms_accept_says_its_segments_and_smart_encodes_by_default(client, auth) -> None:
    resp = client.post(
        "/v1/messages", headers=auth, json={"to": TO, "channel": "sms", "body": CURLY}
    )
    assert resp.status_code == 202, resp.get_json()
    answer = resp.get_json()
    assert answer["body"] == PLAIN
    assert (answer["encoding"], answer["segments"], answer["smart_encoded"]) == (GSM7, 1, 5)
    shown = client.get(f"/v1/messages/{answer['id']}", headers=auth).get_json()
    assert (shown["body"], shown["encoding"], shown["segments"]) == (PLAIN, GSM7, 1)
    assert shown["smart_encoded"] == 5
    long = client.post(
        "/v1/messages", headers=auth, json={"to": TO, "channel": "sms", "body": "ж" * 71}
    ).get_json()
    assert (long["encoding"], long["segments"]) == (UCS2, 2) and "smart_encoded" not in long
    whatsapp = client.post(
        "/v1/messages", headers=auth, json={"to": TO, "provider": "meta", "body": CURLY}
    ).get_json()
    assert "segments" not in whatsapp and whatsapp["body"] == CURLY  # WhatsApp is not SMS


def test_the_batch_answers_segments_too(client, auth) -> None:
    resp = client.post(
        "/v1/messages/batch",
        headers=auth,
        json={"messages": [{"to": TO, "channel": "sms", "body": CURLY}]},
    )
    (entry,) = resp.get_json()["data"]
    answer = entry["message"]
    assert (answer["body"], answer["segments"], answer["encoding"]) == (PLAIN, 1, GSM7)


def test_a_tenant_may_turn_smart_encoding_off(client, auth, tenant) -> None:
    _settings(tenant["tenant_id"], smart_encoding=False)
    answer = client.post(
        "/v1/messages", headers=auth, json={"to": TO, "channel": "sms", "body": CURLY}
    ).get_json()
    assert (answer["body"], answer["encoding"]) == (CURLY, UCS2)
    assert "smart_encoded" not in answer


def test_a_body_over_the_tenants_segment_cap_is_refused_and_stores_nothing(
    client, auth, tenant
) -> None:
    _settings(tenant["tenant_id"], sms_max_segments=1)
    before = _count(tenant["tenant_id"])
    for path, payload in (
        ("/v1/messages", {"to": TO, "channel": "sms", "body": "a" * 161}),
        ("/v1/messages", {"to": TO, "channel": "sms", "body": "ж" * 71}),
    ):
        resp = client.post(path, headers=auth, json=payload)
        assert resp.status_code == 422, resp.get_json()
        assert resp.get_json()["error"]["code"] == "too_many_segments"
    batch = client.post(
        "/v1/messages/batch",
        headers=auth,
        json={"messages": [{"to": TO, "channel": "sms", "body": "a" * 161}]},
    ).get_json()
    assert batch["data"][0]["error"]["code"] == "too_many_segments"
    campaign = client.post(
        "/v1/campaigns",
        headers=auth,
        json={"name": "long", "channel": "sms", "body": "a" * 161, "recipients": [{"to": TO}]},
    )
    assert (
        campaign.status_code == 422 and campaign.get_json()["error"]["code"] == "too_many_segments"
    )
    assert _count(tenant["tenant_id"]) == before
    # Smart encoding counts first: curly quotes that would make it UCS-2 (2 segments)
    # fit in one once swapped.
    fits = "“" + "a" * 150 + "”"
    assert measure(fits).segments == 3
    ok = client.post("/v1/messages", headers=auth, json={"to": TO, "channel": "sms", "body": fits})
    assert ok.status_code == 202 and ok.get_json()["segments"] == 1


def test_an_sms_campaign_states_its_segments_at_creation(client, auth) -> None:
    resp = client.post(
        "/v1/campaigns",
        headers=auth,
        json={
            "name": "offer",
            "channel": "sms",
            "body": CURLY + " " + "a" * 120,
            "recipients": [{"to": TO}, {"to": "+12025550144"}, {"to": "+12025550145"}],
        },
    )
    assert resp.status_code == 201, resp.get_json()
    campaign = resp.get_json()
    assert (campaign["encoding"], campaign["segments"], campaign["smart_encoded"]) == (GSM7, 2, 5)
    assert campaign["segments_total"] == 6


def test_the_admin_api_sets_and_checks_the_sms_settings(client, admin, tenant) -> None:
    url = f"/admin/v1/tenants/{tenant['tenant_id']}"
    shown = client.get(url, headers=admin).get_json()
    assert (shown["smart_encoding"], shown["sms_max_segments"]) == (True, None)
    changed = client.patch(
        url, headers=admin, json={"smart_encoding": False, "sms_max_segments": 3}
    )
    assert changed.status_code == 200, changed.get_json()
    assert (changed.get_json()["smart_encoding"], changed.get_json()["sms_max_segments"]) == (
        False,
        3,
    )
    for bad in ({"sms_max_segments": 0}, {"sms_max_segments": "3"}, {"smart_encoding": "no"}):
        resp = client.patch(url, headers=admin, json=bad)
        assert resp.status_code == 400, bad
    assert client.get(url, headers=admin).get_json()["sms_max_segments"] == 3


# ---------------------------------------------------------------- the SMS pumping guard

LONDON = "+442079460123"
TOKYO = "+81312345678"


def test_a_tenant_texts_only_its_own_numbers_countries_by_default(client, auth, tenant) -> None:
    before = _count(tenant["tenant_id"])
    resp = client.post(
        "/v1/messages", headers=auth, json={"to": LONDON, "channel": "sms", "body": "x"}
    )
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"]["code"] == "country_not_allowed"
    batch = client.post(
        "/v1/messages/batch",
        headers=auth,
        json={
            "messages": [
                {"to": LONDON, "channel": "sms", "body": "x"},
                {"to": TO, "channel": "sms", "body": "x"},
            ]
        },
    ).get_json()["data"]
    assert batch[0]["error"]["code"] == "country_not_allowed" and batch[1]["status"] == 202
    campaign = client.post(
        "/v1/campaigns",
        headers=auth,
        json={
            "name": "abroad",
            "channel": "sms",
            "body": "x",
            "recipients": [{"to": LONDON}, {"to": TO}],
        },
    ).get_json()
    assert campaign["total"] == 1 and campaign["invalid"] == 1
    assert campaign["invalid_rows"][0]["error"].startswith("country_not_allowed")
    assert _count(tenant["tenant_id"]) == before + 2  # the batch's and the campaign's US rows
    # WhatsApp is not SMS: not checked.
    whatsapp = client.post(
        "/v1/messages",
        headers=auth,
        json={
            "to": LONDON,
            "provider": "meta",
            "template": {"name": "order_update", "language": "en_US"},
        },
    )
    assert whatsapp.status_code == 202, whatsapp.get_json()


def test_countries_the_operator_adds_count_against_the_international_cap(
    client, auth, tenant
) -> None:
    _settings(tenant["tenant_id"], sms_countries=["US", "GB", "JP"], international_daily_limit=2)
    answers = [
        client.post("/v1/messages", headers=auth, json={"to": to, "channel": "sms", "body": "x"})
        for to in (LONDON, TO, TOKYO, TO)
    ]
    assert [a.status_code for a in answers] == [202, 202, 202, 202]  # 2 abroad, 2 at home
    over = client.post(
        "/v1/messages", headers=auth, json={"to": LONDON, "channel": "sms", "body": "x"}
    )
    assert over.status_code == 429 and over.get_json()["error"]["code"] == "international_limit"
    assert int(over.headers["Retry-After"]) > 0
    home = client.post("/v1/messages", headers=auth, json={"to": TO, "channel": "sms", "body": "x"})
    assert home.status_code == 202  # the home country is not capped by it
    before = _count(tenant["tenant_id"])
    campaign = client.post(
        "/v1/campaigns",
        headers=auth,
        json={"name": "abroad", "channel": "sms", "body": "x", "recipients": [{"to": TOKYO}]},
    )
    assert (
        campaign.status_code == 429
        and campaign.get_json()["error"]["code"] == "international_limit"
    )
    assert _count(tenant["tenant_id"]) == before  # the whole campaign refused


def test_the_admin_api_validates_the_guards_settings(client, admin, tenant) -> None:
    url = f"/admin/v1/tenants/{tenant['tenant_id']}"
    shown = client.get(url, headers=admin).get_json()
    assert (shown["sms_countries"], shown["international_daily_limit"]) == (None, None)
    ok = client.patch(
        url,
        headers=admin,
        json={"sms_countries": ["US", "BR"], "international_daily_limit": 10},
    )
    assert ok.status_code == 200 and ok.get_json()["sms_countries"] == ["US", "BR"]
    for bad in (
        {"sms_countries": ["XX"]},
        {"sms_countries": []},
        {"sms_countries": "US"},
        {"international_daily_limit": -1},
    ):
        assert client.patch(url, headers=admin, json=bad).status_code == 400, bad


def test_the_cli_sets_the_sms_settings(capsys, tenant) -> None:
    import json

    from herald.cli import main

    args = ["tenant", "update", tenant["tenant_id"], "--sms-countries", "us, gb"]
    args += ["--international-daily-limit", "5", "--sms-max-segments", "2", "--no-smart-encoding"]
    assert main(args) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sms_countries"] == ["US", "GB"] and shown["international_daily_limit"] == 5
    assert (shown["sms_max_segments"], shown["smart_encoding"]) == (2, False)
    assert main(["tenant", "update", tenant["tenant_id"], "--sms-countries", "XX"]) == 2
    assert "sms_countries" in json.loads(capsys.readouterr().err)["error"]["fields"]
    back = ["tenant", "update", tenant["tenant_id"], "--sms-countries", "default"]
    assert main([*back, "--sms-max-segments", "none", "--smart-encoding"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["sms_countries"], shown["sms_max_segments"], shown["smart_encoding"]) == (
        None,
        None,
        True,
    )


def test_a_numbers_region_is_found_whether_or_not_this_process_validated_it() -> None:
    from services.content import phones

    assert phones.parse_e164("+1 876 555 0123") == "+18765550123"
    assert phones.region_of("+18765550123") == "JM"  # kept from the validation
    phones._REGIONS.clear()  # forgotten (the parse itself stays cached)
    assert phones.region_of("+18765550123") == "JM"
    assert phones.region_of("+12025550143") == "US"
    assert phones.region_of("+1202") is None and phones.region_of("x") is None
