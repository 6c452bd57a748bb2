"""What any client-supplied value must be before Herald stores or walks it.

PostgreSQL refuses text holding a NUL character, a lone UTF-16 surrogate cannot
be encoded for the database at all, and a value nested thousands of levels deep
exhausts Python's recursion limit wherever it is later serialized. Each surfaced
as a 500; checking once, where input comes in, turns them into a 400.
"""

from __future__ import annotations

import math
from typing import Any

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
