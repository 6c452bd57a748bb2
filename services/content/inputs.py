"""What any client-supplied value must be before Herald stores or walks it.

PostgreSQL refuses text holding a NUL character, a lone UTF-16 surrogate cannot
be encoded for the database at all, and a value nested thousands of levels deep
exhausts Python's recursion limit wherever it is later serialized. Each surfaced
as a 500; checking once, where input comes in, turns them into a 400.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from marshmallow import ValidationError, fields, validate

from core.ids import is_id, utcnow

# Meta's webhooks, interactive messages and template components nest well under this.
MAX_DEPTH = 32


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored, or None when it can."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone UTF-16 surrogate"
    return None


def value_problem(value: Any, max_depth: int = MAX_DEPTH) -> str | None:
    """Why a decoded JSON value cannot be accepted (too deep, unstorable text, a
    non-finite number), or None. Walked without recursion, keys included."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "$")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return f"{path} {problem}"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{path} is not a finite number"
        elif isinstance(item, dict | list):
            if depth > max_depth:
                return f"nested deeper than {max_depth} levels"
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and text_problem(key):
                        return f"a key in {path} {text_problem(key)}"
                    stack.append((child, depth + 1, f"{path}.{key}"[:200]))
            else:
                stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))
    return None


# JSON's own types, as a JSON API takes them: marshmallow's defaults would read "yes",
# "on" or 1 as true and "12.5" as a number, so a typo or a string where a number belongs
# passed. Query strings (text by nature) keep marshmallow's lenient fields.
class StrictBoolean(fields.Boolean):
    """true or false, nothing else."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):  # 1 == True: a set of truthy values would take it
            raise ValidationError("Not a boolean: give true or false.")
        return value


class StrictFloat(fields.Float):
    """A JSON number (not a string of digits, not a boolean)."""

    def _validated(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        return super()._validated(value)


def cursor_field(prefix: str) -> fields.String:
    """A page's `cursor`: the `next_cursor` a previous page gave (an id of `prefix`).
    Anything else is a 400, not an empty page that looks like the end of the list."""

    def _check(value: str) -> None:
        if not is_id(prefix, value):
            raise ValidationError("Not a cursor: give the next_cursor of a previous page.")

    return fields.String(validate=[validate.Length(min=1, max=40), _check])


# How far ahead a message or campaign may be scheduled: Twilio's own scheduling horizon
# (a Message Scheduling SendAt is at most 35 days ahead), for every provider. A year-9999
# date is a typo, not a plan; a row waiting years is a row nobody remembers.
MAX_SCHEDULE_AHEAD = timedelta(days=35)


def send_at_problem(value: datetime, now: datetime | None = None) -> str | None:
    """Why `send_at` is too far ahead, or None."""
    if value - (now or utcnow()) > MAX_SCHEDULE_AHEAD:
        return f"At most {MAX_SCHEDULE_AHEAD.days} days ahead."
    return None
