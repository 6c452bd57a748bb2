"""The status machine: forward only, terminal states final."""

from __future__ import annotations

import pytest

from services.messages.status import TERMINAL, allowed_from, can_move


@pytest.mark.parametrize(
    ("current", "new", "expected"),
    [
        ("queued", "sending", True),
        ("sending", "sent", True),
        ("sent", "delivered", True),
        ("delivered", "read", True),
        ("sent", "read", True),  # Meta may skip delivered
        ("delivered", "sent", False),  # late callback
        ("read", "delivered", False),
        ("sent", "sent", False),  # duplicate
        ("sending", "failed", True),
        ("sent", "undelivered", True),
        ("delivered", "failed", False),  # not believable after delivery
        ("failed", "delivered", False),  # terminal
        ("canceled", "queued", False),
        ("scheduled", "canceled", True),
        ("queued", "canceled", True),
        ("sending", "canceled", False),  # too late: the provider may have it
        ("scheduled", "queued", True),
    ],
)
def test_can_move(current: str, new: str, expected: bool) -> None:
    assert can_move(current, new) is expected


def test_no_move_out_of_a_terminal_state() -> None:
    for state in TERMINAL:
        for new in ("queued", "sending", "sent", "delivered", "read", "failed"):
            assert state not in allowed_from(new)
