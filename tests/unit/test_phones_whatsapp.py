"""The forms one WhatsApp user's number can take, Herald's side and the sandbox's."""

from __future__ import annotations

import pytest

from sandbox.meta_api import wa_id_for
from services.content.phones import whatsapp_forms


@pytest.mark.parametrize(
    ("number", "other"),
    [
        ("+5592981723241", "+559281723241"),
        ("+551187654321", "+5511987654321"),
        ("+525512345678", "+5215512345678"),
        ("+541158749895", "+5491158749895"),
    ],
)
def test_forms_go_both_ways(number: str, other: str) -> None:
    assert whatsapp_forms(number) == [number, other]
    assert whatsapp_forms(other) == [other, number]


@pytest.mark.parametrize("number", ["+12025550143", "+551133334444", "+447700900123"])
def test_other_numbers_have_one_form(number: str) -> None:
    assert whatsapp_forms(number) == [number]  # a Brazilian landline has no ninth digit


@pytest.mark.parametrize(
    ("dialled", "wa_id"),
    [
        ("5592981723241", "559281723241"),  # outside the ninth-digit areas
        ("5511987654321", "5511987654321"),  # São Paulo keeps it
        ("551187654321", "5511987654321"),
        ("525512345678", "5215512345678"),
        ("541158749895", "5491158749895"),
        ("12025550143", "12025550143"),
    ],
)
def test_sandbox_answers_wa_id_like_meta(dialled: str, wa_id: str) -> None:
    assert wa_id_for(dialled) == wa_id
