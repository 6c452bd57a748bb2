"""Request validation: every bad input is a clear 400 with per-field messages."""

from __future__ import annotations

import pytest

from core.errors import InvalidRequest
from core.logs import mask, mask_text
from services.content.phones import normalize_e164
from services.content.schemas import load_message_request


def test_valid_request_is_normalized() -> None:
    data = load_message_request({"to": "+1 (202) 555-0143", "body": "hi"})
    assert data["to"] == "+12025550143"
    assert data["channel"] == "whatsapp"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"body": "hi"}, "to"),
        ({"to": "+12025550143", "contact_id": "c1", "body": "hi"}, "to"),
        ({"to": "12025550143", "body": "hi"}, "to"),  # no country code
        ({"to": "+15551234567", "body": "hi"}, "to"),  # fictitious 555 number
        ({"to": "+12025550143"}, "body"),
        ({"to": "+12025550143", "body": "x" * 4097}, "body"),
        ({"to": "+12025550143", "body": "x" * 1601, "channel": "sms"}, "body"),
        ({"to": "+12025550143", "body": "hi", "channel": "fax"}, "channel"),
        ({"to": "+12025550143", "body": "hi", "channel": "sms", "provider": "meta"}, "provider"),
        ({"to": "+12025550143", "body": "hi", "colour": "red"}, "colour"),
        ({"to": "+12025550143", "media_url": "not a url"}, "media_url"),
        ({"to": "+12025550143", "body": "hi", "send_at": "2026-12-01T09:00:00"}, "send_at"),
        ({"to": "+12025550143", "template": {"language": "en"}}, "template"),
    ],
)
def test_invalid_requests_name_the_field(payload: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        load_message_request(payload)
    assert field in info.value.fields
    assert info.value.status == 400


def test_body_at_the_limit_is_accepted() -> None:
    assert load_message_request({"to": "+12025550143", "body": "x" * 1600, "channel": "sms"})


def test_non_object_body_is_rejected() -> None:
    with pytest.raises(InvalidRequest):
        load_message_request(["to", "+12025550143"])


def test_phone_helpers() -> None:
    assert normalize_e164("whatsapp:+12025550143") == "+12025550143"
    assert normalize_e164("+1 202") is None
    assert mask("+15551234567") == "+1******4567"
    assert "2025550143" not in mask_text("sent to +12025550143 ok")
    assert mask_text("sent to +12025550143 ok").endswith("0143 ok")
    # A WhatsApp business-scoped user id is a person's name at Meta: masked the same way.
    line = mask_text("to US.13491208655302741918 and US.ENT.11815799212886844830, in api.views")
    assert "13491208655302741918" not in line and "11815799212886844830" not in line
    assert "US.****************1918" in line and "US.ENT.****************4830" in line
    assert line.endswith("in api.views")
