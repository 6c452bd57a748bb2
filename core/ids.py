"""Ids and times every layer shares: ULID-style ids with a type prefix, UTC now, and
the one way a time is written in JSON (`iso`)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _encode(prefix: str, value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def new_id(prefix: str) -> str:
    """A ULID with a type prefix (`msg_01J…`): sortable by creation time, so
    newest-first pages can be keyed on the id alone."""
    return _encode(prefix, (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big"))


def is_id(prefix: str, value: str) -> bool:
    """True when `value` has the form of an id `new_id(prefix)` makes: a page's cursor
    is one, and anything else is a client's mistake to answer, not an empty page."""
    body = value.removeprefix(f"{prefix}_")
    return (
        len(value) == len(prefix) + 27
        and body != value
        and all(c in _CROCKFORD for c in body)
        and body[0] in "01234567"
    )


def id_at(prefix: str, when: datetime) -> str:
    """The smallest id `new_id(prefix)` can produce at `when`: a bound for id ranges."""
    return _encode(prefix, int(when.timestamp() * 1000) << 80)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """`2026-01-02T03:04:05.678Z`: milliseconds, UTC as Z (every JSON answer's form)."""
    return (
        None if value is None else value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
