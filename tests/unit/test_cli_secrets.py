"""`herald` takes provider secrets from a file, stdin or the environment, never from its
arguments; every failure is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from herald.cli import main
from models import session_scope
from services.tenancy.tenants import find_account
from tests.conftest import make_tenant

SID = "AC" + "d4" * 16


def _run(capsys, *argv: str) -> tuple[int, str, list[str]]:  # type: ignore[no-untyped-def]
    code = main(list(argv))
    out, err = capsys.readouterr()
    # stderr may also hold log lines (they carry a level); the command's own is the last.
    lines = [line for line in err.splitlines() if " INFO " not in line]
    return code, out, lines


def _auth_token(tenant_id: str) -> str | None:
    from services.tenancy.secrets import decrypt_json

    with session_scope() as session:
        account = find_account(session, tenant_id, "twilio")
        return decrypt_json(account.secrets_enc).get("auth_token") if account else None


def test_a_secret_given_as_an_argument_is_refused(capsys) -> None:
    tenant = make_tenant(twilio={})
    code, out, err = _run(
        capsys, "account", "add", tenant["tenant_id"], "twilio", f"account_sid={SID}",
        "auth_token=typed-in-the-clear",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert len(err) == 1 and "auth_token" in err[0] and "--auth-token-env" in err[0]
    assert "typed-in-the-clear" not in err[0]
    assert _auth_token(tenant["tenant_id"]) is None  # nothing stored


def test_secrets_from_the_environment(capsys, monkeypatch) -> None:
    tenant = make_tenant(twilio={})
    monkeypatch.setenv("MY_TWILIO_TOKEN", "from-the-env")
    code, out, _ = _run(
        capsys, "account", "add", tenant["tenant_id"], "twilio", f"account_sid={SID}",
        "sms_from=+12025550100", "--auth-token-env", "MY_TWILIO_TOKEN",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["provider"] == "twilio"
    assert _auth_token(tenant["tenant_id"]) == "from-the-env"
    monkeypatch.delenv("MY_TWILIO_TOKEN")
    code, _, err = _run(
        capsys, "account", "add", tenant["tenant_id"], "twilio", f"account_sid={SID}",
        "--auth-token-env", "MY_TWILIO_TOKEN",
    )  # fmt: skip
    assert code == 2 and "MY_TWILIO_TOKEN is not set" in err[-1]


def test_secrets_from_a_file_and_from_stdin(capsys, monkeypatch, tmp_path: Path) -> None:
    tenant = make_tenant(twilio={})
    secrets = tmp_path / "twilio.env"
    secrets.write_text("# Twilio\nauth_token=from-a-file\n")
    code, _, _ = _run(
        capsys, "account", "add", tenant["tenant_id"], "twilio", f"account_sid={SID}",
        "--secrets-file", str(secrets),
    )  # fmt: skip
    assert code == 0 and _auth_token(tenant["tenant_id"]) == "from-a-file"
    other = make_tenant(twilio={})
    monkeypatch.setattr(sys, "stdin", io.StringIO("auth_token=from-stdin\n"))
    code, _, _ = _run(
        capsys, "account", "add", other["tenant_id"], "twilio", f"account_sid={SID}",
        "--secrets-file", "-",
    )  # fmt: skip
    assert code == 0 and _auth_token(other["tenant_id"]) == "from-stdin"
    secrets.write_text("auth_tokn=typo\n")
    code, _, err = _run(
        capsys, "account", "add", other["tenant_id"], "twilio", f"account_sid={SID}",
        "--secrets-file", str(secrets),
    )  # fmt: skip
    assert code == 2 and "auth_tokn" in err[-1] and "typo" not in err[-1]


def test_tenant_create_takes_each_accounts_secrets(capsys, monkeypatch) -> None:
    monkeypatch.setenv("T_TOKEN", "twilio-token")
    monkeypatch.setenv("M_TOKEN", "meta-token")
    monkeypatch.setenv("M_SECRET", "meta-app-secret")
    code, out, _ = _run(
        capsys, "tenant", "create", "Two Providers",
        "--account", "twilio", f"account_sid={SID}", "sms_from=+12025550100",
        "--account", "meta", "phone_number_id=109876543219998",
        "--auth-token-env", "T_TOKEN", "--access-token-env", "M_TOKEN",
        "--app-secret-env", "M_SECRET",
    )  # fmt: skip
    assert code == 0
    tenant_id = json.loads(out)["tenant_id"]
    from services.tenancy.secrets import decrypt_json

    assert _auth_token(tenant_id) == "twilio-token"
    with session_scope() as session:
        meta = find_account(session, tenant_id, "meta")
        assert meta is not None
        assert decrypt_json(meta.secrets_enc) == {
            "access_token": "meta-token",
            "app_secret": "meta-app-secret",
        }


def test_an_unknown_tenant_is_one_line_without_the_secret(capsys, monkeypatch) -> None:
    monkeypatch.setenv("MY_TWILIO_TOKEN", "never-shown")
    code, out, err = _run(
        capsys, "account", "add", "ten_missing", "twilio", f"account_sid={SID}",
        "--auth-token-env", "MY_TWILIO_TOKEN",
    )  # fmt: skip
    assert code == 2 and out == "" and len(err) == 1
    assert "ten_missing" in err[0] and "gAAAA" not in err[0] and "never-shown" not in err[0]
    code, out, err = _run(capsys, "key", "create", "ten_missing")
    assert code == 2 and out == "" and len(err) == 1 and "ten_missing" in err[0]
    assert "Traceback" not in err[0]


def test_a_database_that_is_down_is_one_line(capsys, monkeypatch) -> None:
    from core.config import get_settings
    from herald.stack import free_port
    from models import reset_engine

    monkeypatch.setenv(
        "DATABASE_URL", f"postgresql+psycopg://herald:pw-not-shown@127.0.0.1:{free_port()}/x"
    )
    get_settings.cache_clear()
    reset_engine()
    try:
        for argv in (["tenant", "list"], ["key", "revoke", "key_x"], ["secrets", "rotate"]):
            code, out, err = _run(capsys, *argv)
            assert code == 2 and out == "" and len(err) == 1, err
            assert err[0].startswith("herald: the database cannot be reached")
            assert "pw-not-shown" not in err[0]
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        reset_engine()


def test_a_revoked_or_unknown_key_is_an_error(capsys) -> None:
    code, out, err = _run(capsys, "key", "revoke", "key_missing")
    assert code == 2 and out == "" and err == ["herald: no active API key key_missing"]


def test_rotate_after_a_key_change(capsys, monkeypatch) -> None:
    from cryptography.fernet import Fernet

    from core.config import get_settings
    from services.tenancy.secrets import rotate_stored_secrets

    old = get_settings().secret_key
    assert old is not None
    new = Fernet.generate_key().decode()
    try:
        monkeypatch.setenv("HERALD_SECRET_KEY", new)
        get_settings.cache_clear()
        code, out, err = _run(capsys, "secrets", "rotate")  # the old key not given
        assert code == 2 and json.loads(out)["reencrypted"] == 0
        assert "HERALD_SECRET_KEY_PREVIOUS" in err[-1]
        monkeypatch.setenv("HERALD_SECRET_KEY_PREVIOUS", old)
        get_settings.cache_clear()
        code, out, _ = _run(capsys, "secrets", "rotate")
        assert code == 0 and json.loads(out)["unreadable"] == []
    finally:
        monkeypatch.setenv("HERALD_SECRET_KEY", old)
        monkeypatch.setenv("HERALD_SECRET_KEY_PREVIOUS", new)
        get_settings.cache_clear()
        with session_scope() as session:
            rotate_stored_secrets(session)
        monkeypatch.undo()
        get_settings.cache_clear()


@pytest.mark.parametrize("argv", [["tenant", "update", "ten_missing", "--name", "x"]])
def test_refusals_are_one_json_line_with_exit_code_2(capsys, argv) -> None:
    code, _, err = _run(capsys, *argv)
    assert code == 2 and json.loads(err[-1])["error"]["code"] == "not_found"
