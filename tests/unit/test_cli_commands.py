"""`herald send`, `status`, `tail` (over HTTP, here to the in-process app) and
`herald tenant list` / `update` (on the database)."""

from __future__ import annotations

import json

import httpx
import pytest

from herald import cli_commands
from herald.cli import main
from models import Tenant, session_scope


@pytest.fixture
def over_wsgi(app, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cli_commands, "transport", httpx.WSGITransport(app=app))


def _run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = main(list(argv))
    out, err = capsys.readouterr()
    # stderr may also hold log lines; the command's own answer is its last line.
    return code, out, (err.strip().splitlines() or [""])[-1]


def test_send_then_status(capsys, over_wsgi, tenant, dispatched) -> None:
    key = ("--key", tenant["api_key"], "--url", "http://herald.test")
    code, out, _ = _run(
        capsys, "send", *key, "--to", "+12025550143", "--channel", "sms", "--body", "hello"
    )
    assert code == 0
    sent = json.loads(out)
    assert (sent["status"], sent["channel"], sent["body"]) == ("queued", "sms", "hello")
    code, out, _ = _run(capsys, "status", *key, sent["id"])
    assert code == 0 and json.loads(out)["events"][0]["status"] == "queued"


def test_send_reports_the_api_error_and_fails(capsys, over_wsgi, tenant) -> None:
    code, out, err = _run(
        capsys, "send", "--key", tenant["api_key"], "--to", "+1555", "--body", "x"
    )
    assert code == 2 and out == ""
    assert json.loads(err)["error"]["code"] == "invalid_fields"


def test_status_of_another_tenants_message_is_not_found(capsys, over_wsgi, tenant, dispatched):  # type: ignore[no-untyped-def]
    from tests.conftest import make_tenant

    other = make_tenant("other")
    code, out, _ = _run(
        capsys, "send", "--key", other["api_key"], "--to", "+12025550143", "--body", "x"
    )
    theirs = json.loads(out)["id"]
    code, _, err = _run(capsys, "status", "--key", tenant["api_key"], theirs)
    assert code == 2 and json.loads(err)["error"]["code"] == "not_found"


def test_send_needs_a_key(capsys, monkeypatch) -> None:
    monkeypatch.delenv("HERALD_API_KEY", raising=False)
    code, out, err = _run(capsys, "send", "--to", "+12025550143", "--body", "x")
    assert code == 2 and out == "" and "HERALD_API_KEY" in err


def test_tail_prints_new_messages_and_status_changes(
    capsys, over_wsgi, tenant, dispatched, monkeypatch
) -> None:
    from services.messages.status import apply_status

    key = ("--key", tenant["api_key"])
    _run(capsys, "send", *key, "--to", "+12025550143", "--channel", "sms", "--body", "one")
    polls = []

    def step(_seconds: float) -> None:  # between polls: a new message, then a status change
        polls.append(1)
        if len(polls) == 1:
            main(["send", *key, "--to", "+12025550143", "--channel", "sms", "--body", "two"])
        else:
            with session_scope() as session:
                from models import Message

                newest = session.query(Message).order_by(Message.id.desc()).first()
                apply_status(session, newest.id, "sending", source="worker")
                apply_status(session, newest.id, "sent", source="worker")

    monkeypatch.setattr(cli_commands.time, "sleep", step)
    code = main(["tail", *key, "--json", "--polls", "3"])
    out = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in out if line.startswith('{"at"')]
    assert code == 0
    assert [e["status"] for e in events] == ["queued", "queued", "sent"]
    assert events[1]["id"] == events[2]["id"] != events[0]["id"]


def test_tenant_list_and_update(capsys, tenant) -> None:
    code, out, _ = _run(capsys, "tenant", "list")
    assert code == 0
    listed = json.loads(out)
    assert tenant["tenant_id"] in [t["id"] for t in listed]
    assert "webhook_secret" not in out and "secrets" not in out
    code, out, _ = _run(
        capsys,
        "tenant",
        "update",
        tenant["tenant_id"],
        "--hourly-limit",
        "7",
        "--daily-limit",
        "default",
        "--callback-url",
        "https://acme.example/events",
        "--disable",
    )
    assert code == 0
    shown = json.loads(out)
    assert (shown["hourly_limit"], shown["daily_limit"], shown["disabled"]) == (7, None, True)
    with session_scope() as session:
        row = session.get(Tenant, tenant["tenant_id"])
        assert row.callback_url == "https://acme.example/events" and row.disabled_at
    code, out, _ = _run(capsys, "tenant", "update", tenant["tenant_id"], "--enable")
    assert json.loads(out)["disabled"] is False


def test_tenant_update_refuses_what_the_admin_api_refuses(capsys, tenant) -> None:
    code, _, err = _run(
        capsys, "tenant", "update", tenant["tenant_id"], "--callback-url", "ftp://nope"
    )
    assert code == 2 and "callback_url" in json.loads(err)["error"]["fields"]
    code, _, err = _run(capsys, "tenant", "update", "ten_missing", "--name", "x")
    assert code == 2 and json.loads(err)["error"]["code"] == "not_found"
    with pytest.raises(SystemExit):
        main(["tenant", "update", tenant["tenant_id"], "--hourly-limit", "-3"])
