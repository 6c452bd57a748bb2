"""Senders: managed by the admin API and the CLI (validated, one owner per address, one
default per provider and channel), named by `from` in the task too, and the rate
bucket and provider request follow the row's sender."""

from __future__ import annotations

import json
import types
import uuid

import pytest

from models import Message, session_scope
from providers.base import AccountCredentials, OutboundMessage
from providers.twilio import TwilioProvider
from services.tenancy.senders import assign, outbound_sender, sender_for
from tests.conftest import free_number


def test_admin_adds_lists_defaults_and_removes_senders(client, admin, tenant) -> None:
    base = f"/admin/v1/tenants/{tenant['tenant_id']}/senders"
    first, second = free_number(), free_number()
    national = f"({first[2:5]}) {first[5:8]}-{first[8:]}"  # normalized to E.164
    resp = client.post(
        base,
        json={"provider": "twilio", "address": "+1 " + national, "is_default": True},
        headers=admin,
    )
    assert resp.status_code == 201, resp.get_json()
    one = resp.get_json()
    assert (one["kind"], one["address"], one["number"]) == ("number", first, first)
    assert one["channels"] == ["sms"] and one["is_default"] and one["id"].startswith("snd_")
    mg = "MG" + uuid.uuid4().hex
    resp = client.post(
        base,
        json={"provider": "twilio", "address": mg, "channels": ["sms", "whatsapp"], "mps": 5},
        headers=admin,
    )
    assert resp.status_code == 201 and resp.get_json()["kind"] == "messaging_service"
    service = resp.get_json()
    two = client.post(
        base, json={"provider": "twilio", "address": second}, headers=admin
    ).get_json()
    listed = client.get(base, headers=admin).get_json()["data"]
    assert [s["id"] for s in listed] == [one["id"], service["id"], two["id"]]

    # A new default for sms takes it from the old one.
    resp = client.patch(f"{base}/{two['id']}", json={"is_default": True}, headers=admin)
    assert resp.status_code == 200 and resp.get_json()["is_default"]
    defaults = {
        s["id"] for s in client.get(base, headers=admin).get_json()["data"] if s["is_default"]
    }
    assert defaults == {two["id"]}

    assert client.delete(f"{base}/{two['id']}", headers=admin).status_code == 204
    assert client.delete(f"{base}/{two['id']}", headers=admin).status_code == 404
    assert len(client.get(base, headers=admin).get_json()["data"]) == 2


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"provider": "twilio", "address": "+1202"}, "address"),
        ({"provider": "twilio", "address": "MG123"}, "address"),
        ({"provider": "twilio", "address": "MG" + "Z" * 32}, "address"),
        ({"provider": "meta", "address": "not-digits"}, "address"),
        ({"provider": "twilio", "address": "+12025550100", "kind": "phone_number_id"}, "kind"),
        ({"provider": "meta", "address": "1234567890", "channels": ["sms"]}, "channels"),
        ({"provider": "sms", "address": "+12025550100"}, "provider"),
        ({"provider": "twilio", "address": "+12025550100", "colour": "red"}, "colour"),
        ({"provider": "twilio", "address": "+12025550100", "mps": -1}, "mps"),
    ],
)
def test_invalid_senders_are_400_naming_the_field(client, admin, tenant, payload, field) -> None:
    resp = client.post(
        f"/admin/v1/tenants/{tenant['tenant_id']}/senders", json=payload, headers=admin
    )
    assert resp.status_code == 400, resp.get_json()
    assert field in resp.get_json()["error"]["fields"]


def test_an_address_has_one_owner_and_tenants_are_isolated(client, admin) -> None:
    from tests.conftest import make_tenant

    mine, theirs = make_tenant("mine"), make_tenant("theirs", meta={})
    address = free_number()
    created = client.post(
        f"/admin/v1/tenants/{mine['tenant_id']}/senders",
        json={"provider": "twilio", "address": address},
        headers=admin,
    )
    assert created.status_code == 201
    again = client.post(
        f"/admin/v1/tenants/{theirs['tenant_id']}/senders",
        json={"provider": "twilio", "address": address},
        headers=admin,
    )
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "sender_exists"
    sender_id = created.get_json()["id"]
    base = f"/admin/v1/tenants/{theirs['tenant_id']}/senders/{sender_id}"
    assert client.delete(base, headers=admin).status_code == 404
    assert client.patch(base, json={"label": "x"}, headers=admin).status_code == 404
    # No Meta account on that tenant: a Meta sender has no account to belong to.
    resp = client.post(
        f"/admin/v1/tenants/{theirs['tenant_id']}/senders",
        json={"provider": "meta", "address": "1098765432100"},
        headers=admin,
    )
    assert resp.status_code == 400 and "account_id" in resp.get_json()["error"]["fields"]


def test_cli_sender_add_list_default_remove(capsys, tenant) -> None:
    from herald.cli import main

    tid = tenant["tenant_id"]
    first, second = free_number(), free_number()
    assert main(["sender", "add", tid, "twilio", first, "--mps", "2", "--label", "main"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert (added["address"], added["mps"], added["label"]) == (first, 2.0, "main")
    assert main(["sender", "add", tid, "twilio", second, "--channel", "sms", "--default"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert main(["sender", "default", tid, added["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["is_default"] is True
    assert main(["sender", "list", tid]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(s["id"], s["is_default"]) for s in listed] == [
        (added["id"], True),
        (other["id"], False),
    ]
    assert main(["sender", "remove", tid, other["id"]]) == 0
    capsys.readouterr()
    assert main(["sender", "add", tid, "twilio", "12345"]) == 2  # not a number
    assert "address" in json.loads(capsys.readouterr().err)["error"]["fields"]


def test_the_task_takes_from_like_the_api(tenant, dispatched) -> None:
    from services.tenancy.sender_admin import add_sender
    from workers.tasks import send_message

    address = free_number()
    with session_scope() as session:
        sender_id = add_sender(
            session, tenant["tenant_id"], {"provider": "twilio", "address": address}
        ).id
    kwargs = {"to": "+12025550143", "body": "x", "channel": "sms", "from": address}
    result = send_message.run(tenant_id=tenant["tenant_id"], **kwargs)
    with session_scope() as session:
        row = session.get(Message, result["id"])
        assert (row.from_number, row.options["sender"]["id"]) == (address, sender_id)
    unknown = send_message.run(tenant_id=tenant["tenant_id"], **{**kwargs, "from": free_number()})
    assert unknown["error"]["code"] == "sender_not_found" and "from" in unknown["error"]["fields"]


def test_rate_bucket_and_request_follow_the_rows_sender() -> None:
    snapshot = {"id": "snd_x", "kind": "messaging_service", "address": "MG" + "a" * 32}
    row = types.SimpleNamespace(options={"sender": {**snapshot, "mps": 4.0}})
    assert sender_for(row) == ("MG" + "a" * 32, 4.0)
    assert sender_for(types.SimpleNamespace(options=None)) is None
    message = types.SimpleNamespace(options={"sender": snapshot})
    outbound = OutboundMessage(herald_id="m", channel="sms", to="+12025550143", body="x")
    account = AccountCredentials(
        "acc", "ten", "twilio", "AC" + "1" * 32, {"sms_from": "+12025550100"}, {}
    )
    assert TwilioProvider.build_params(account, outbound)["from_"] == "+12025550100"
    chosen = OutboundMessage(**{**outbound.__dict__, **outbound_sender(message)})
    params = TwilioProvider.build_params(account, chosen)
    assert params["messaging_service_sid"] == "MG" + "a" * 32 and "from_" not in params


def test_assignment_is_sticky_and_weighted() -> None:
    from services.tenancy.senders import ChosenSender

    def sender(address: str, mps: float) -> ChosenSender:
        return ChosenSender(
            address, "t", "twilio", "acc", "number", address, address, ("sms",), mps, False
        )

    slow, fast = sender("+12025557001", 1), sender("+12025557002", 9)
    people = [f"+1202555{n:04d}" for n in range(1000, 1400)]
    picks = [assign([slow, fast], p, "sms") for p in people]
    assert picks == [assign([fast, slow], p, "sms") for p in people]  # order-free, stable
    share = sum(p is fast for p in picks) / len(people)
    assert 0.8 < share < 0.97
    # A third sender takes people only for itself: nobody moves between the first two.
    third = sender("+12025557003", 5)
    for person, before in zip(people, picks, strict=True):
        after = assign([slow, fast, third], person, "sms")
        assert after is before or after is third


def test_cli_send_from_a_sender(capsys, app, monkeypatch, tenant, dispatched) -> None:
    import httpx

    from herald import cli_commands
    from herald.cli import main
    from services.tenancy.sender_admin import add_sender

    monkeypatch.setattr(cli_commands, "transport", httpx.WSGITransport(app=app))
    address = free_number()
    with session_scope() as session:
        add_sender(session, tenant["tenant_id"], {"provider": "twilio", "address": address})
    argv = ["send", "--key", tenant["api_key"], "--url", "http://herald.test", "--to"]
    code = main([*argv, "+12025550143", "--channel", "sms", "--body", "x", "--from", address])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["from"] == address


def test_a_senders_failover_priority_is_set_shown_and_checked(
    capsys, tenant, client, admin
) -> None:
    from herald.cli import main

    tid = tenant["tenant_id"]
    assert main(["sender", "add", tid, "twilio", free_number(), "--priority", "2"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["priority"] == 2
    path = f"/admin/v1/tenants/{tid}/senders/{added['id']}"
    assert client.patch(path, json={"priority": 0}, headers=admin).status_code == 400
    changed = client.patch(path, json={"priority": None}, headers=admin)
    assert changed.status_code == 200 and changed.get_json()["priority"] is None
