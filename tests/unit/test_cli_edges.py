"""`herald` edges a new user tripped on: key ids, listing and updating keys and accounts,
a duplicate account, `tail` through an API blip, a closed pipe, `send --ttl`, and the
Celery task called without its tenant."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from herald import cli_commands
from herald.cli import main
from models import ApiKey, Message, session_scope
from tests.conftest import META_PHONE_ID, TWILIO_SID


def _run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, (err.strip().splitlines() or [""])[-1]


def test_key_create_prints_its_id_list_shows_it_and_the_key_itself_revokes_it(
    capsys, client, tenant
) -> None:
    code, out, _ = _run(capsys, "key", "create", tenant["tenant_id"], "--name", "ci")
    made = json.loads(out)
    assert code == 0 and made["key_id"].startswith("key_") and made["api_key"].startswith("hk_")
    code, out, _ = _run(capsys, "key", "list", tenant["tenant_id"])
    listed = {k["id"]: k for k in json.loads(out)}
    assert code == 0 and listed[made["key_id"]]["name"] == "ci"
    assert made["api_key"] not in out  # ids and prefixes only
    auth = {"Authorization": f"Bearer {made['api_key']}"}
    assert client.get("/v1/messages", headers=auth).status_code == 200
    code, out, _ = _run(capsys, "key", "revoke", made["api_key"])  # the key, not its id
    assert code == 0 and json.loads(out) == {"revoked": True, "key_id": made["key_id"]}
    with session_scope() as session:
        assert session.get(ApiKey, made["key_id"]).revoked_at is not None
    assert client.get("/v1/messages", headers=auth).status_code == 401
    code, out, err = _run(capsys, "key", "revoke", made["api_key"])
    assert code == 2 and out == "" and made["api_key"] not in err  # never echoed


def test_account_add_refuses_an_account_the_tenant_has(capsys, tenant) -> None:
    code, out, err = _run(
        capsys, "account", "add", tenant["tenant_id"], "meta", f"phone_number_id={META_PHONE_ID}"
    )
    assert code == 2 and out == ""
    assert json.loads(err)["error"]["code"] == "account_exists"
    code, out, _ = _run(capsys, "account", "list", tenant["tenant_id"])
    accounts = json.loads(out)
    assert code == 0 and sorted(a["provider"] for a in accounts) == ["meta", "twilio"]
    assert "gAAAA" not in out and "secret" not in json.dumps([a.get("settings") for a in accounts])


def test_account_update_changes_settings_and_rotates_secrets(capsys, tenant, monkeypatch) -> None:
    code, out, _ = _run(capsys, "account", "list", tenant["tenant_id"])
    twilio = next(a for a in json.loads(out) if a["provider"] == "twilio")
    monkeypatch.setenv("NEW_TOKEN", "rotated-token-value")
    code, out, _ = _run(
        capsys, "account", "update", tenant["tenant_id"], twilio["id"],
        "sms_from=+12025550199", "--auth-token-env", "NEW_TOKEN",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads(out)["settings"]["sms_from"] == "+12025550199"
    assert "rotated-token-value" not in out
    from models import ProviderAccount
    from services.tenancy.tenants import credentials

    with session_scope() as session:
        account = credentials(session.get(ProviderAccount, twilio["id"]))
        assert account.secrets["auth_token"] == "rotated-token-value"
    code, _, err = _run(
        capsys, "account", "update", tenant["tenant_id"], twilio["id"], f"account_sid={TWILIO_SID}x"
    )
    assert code == 2 and json.loads(err)["error"]["fields"] == {"account_sid": ["Cannot change."]}
    code, _, err = _run(capsys, "account", "update", tenant["tenant_id"], "acc_missing", "a=b")
    assert code == 2 and "acc_missing" in err


class Flaky(httpx.BaseTransport):
    """The app behind `answers`: each poll of /v1/messages first meets the next blip."""

    def __init__(self, app, blips: list) -> None:  # type: ignore[no-untyped-def]
        self.inner = httpx.WSGITransport(app=app)
        self.blips = blips

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/messages" and request.method == "GET" and self.blips:
            blip = self.blips.pop(0)
            if isinstance(blip, Exception):
                raise blip
            return httpx.Response(blip[0], headers=blip[1], json={"error": {"code": "x"}})
        return self.inner.handle_request(request)


def test_tail_rides_through_resets_and_503_and_429(
    capsys, app, tenant, dispatched, monkeypatch
) -> None:
    key = ("--key", tenant["api_key"])
    monkeypatch.setattr(cli_commands, "transport", httpx.WSGITransport(app=app))
    _run(capsys, "send", *key, "--to", "+12025550143", "--channel", "sms", "--body", "one")
    blips = [
        httpx.ConnectError("refused"),
        httpx.ReadError("connection reset by peer"),
        (503, {"Retry-After": "5"}),
        (429, {"Retry-After": "1"}),
    ]
    monkeypatch.setattr(cli_commands, "transport", Flaky(app, blips))
    waits: list[float] = []
    monkeypatch.setattr(cli_commands.time, "sleep", waits.append)
    code = main(["tail", *key, "--json", "--polls", "2", "--interval", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["queued"]
    assert waits == [2, 4, 5, 1, 2]  # backoff, backoff, Retry-After twice, then the interval
    assert err.count("retrying") == 1 and "answers again after 4 failed polls" in err
    # A refusal that retrying cannot cure still ends it, with the API's error.
    monkeypatch.setattr(cli_commands, "transport", Flaky(app, [(401, {})]))
    code, _, err = _run(capsys, "tail", *key, "--polls", "1")
    assert code == 2 and json.loads(err) == {"error": {"code": "x"}}


def test_a_closed_pipe_ends_a_command_quietly() -> None:
    """`herald tenant list | head -0`: the reader is gone before the first write."""
    from herald.cli import EXIT_PIPE_CLOSED

    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from herald.cli import main; sys.exit(main())",
         "tenant", "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_PIPE_CLOSED, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_send_takes_a_ttl(capsys, app, tenant, dispatched, monkeypatch) -> None:
    monkeypatch.setattr(cli_commands, "transport", httpx.WSGITransport(app=app))
    key = ("--key", tenant["api_key"])
    args = ("send", *key, "--to", "+12025550143", "--channel", "sms", "--body", "x")
    code, out, _ = _run(capsys, *args, "--ttl", "600")
    assert code == 0
    with session_scope() as session:
        message = session.get(Message, json.loads(out)["id"])
        assert message.expires_at is not None
    code, _, err = _run(capsys, *args, "--ttl", "0")
    assert code == 2 and "ttl" in json.loads(err)["error"]["fields"]


@pytest.mark.parametrize(
    "kwargs", [{"to": "+12025550143", "body": "x"}, {"tenant_id": 7, "to": "+1", "body": "x"}]
)
def test_the_task_without_a_tenant_returns_the_error_object(kwargs, dispatched) -> None:
    from workers.tasks import send_message

    result = send_message.apply(kwargs=kwargs).get()
    assert result["error"]["code"] == "invalid_fields"
    assert "tenant_id" in result["error"]["fields"]
