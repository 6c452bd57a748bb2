"""The `herald` command-line tool."""

from __future__ import annotations

import json

from models import Tenant, session_scope


def test_tenant_create_prints_one_json_object(capsys, client, dispatched, monkeypatch) -> None:
    from herald.cli import main

    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok")
    code = main(
        [
            "tenant",
            "create",
            "Acme Motors",
            "--hourly-limit",
            "5",
            "--daily-limit",
            "0",
            "--account",
            "twilio",
            "account_sid=AC" + "c" * 32,
            "sms_from=+12025550100",
            "--auth-token-env",
            "TWILIO_AUTH_TOKEN",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"tenant_id", "api_key", "webhook_secret"}
    with session_scope() as session:
        tenant = session.get(Tenant, printed["tenant_id"])
        assert (tenant.name, tenant.hourly_limit, tenant.daily_limit) == ("Acme Motors", 5, 0)
    resp = client.post(
        "/v1/messages",
        json={"to": "+12025550143", "body": "x", "channel": "sms"},
        headers={"Authorization": f"Bearer {printed['api_key']}"},
    )
    assert resp.status_code == 202 and resp.get_json()["provider"] == "twilio"
