"""Input checks made once for every route: the JSON parser and the URL.

Every `request.get_json()` goes through `StrictJSONProvider`, so no view sees a
value nested too deep to walk, a NUL or lone surrogate it could not store, or a
NaN/Infinity PostgreSQL's JSON refuses; each is malformed JSON (a 400). A NUL in
the path, the query string or a urlencoded form is refused before any view looks
it up in the database.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.datastructures import MultiDict

from core.errors import InvalidRequest
from services.content.inputs import MAX_DEPTH, text_problem, value_problem


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Python refuses to read an integer longer than this (sys.get_int_max_str_digits), with
# a message telling the caller to raise the limit: a client cannot, so it gets its own.
MAX_INT_DIGITS = 4300


def _parse_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ValueError(f"a number has more than {MAX_INT_DIGITS:,} digits")
    return int(text)


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing what Herald could not store or walk (as ValueError,
    which Flask and the views treat as malformed JSON)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        kwargs.setdefault("parse_constant", _refuse_constant)
        kwargs.setdefault("parse_int", _parse_int)
        try:
            value = json.loads(s, **kwargs)
        except RecursionError:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
        problem = value_problem(value)
        if problem:
            raise ValueError(problem)
        return value


def _problem(values: MultiDict[str, str]) -> str | None:
    for key, items in values.lists():
        for text in (key, *items):
            problem = text_problem(text)
            if problem:
                return problem
    return None


def refuse_unstorable_text() -> None:
    """A NUL in the path, a query parameter or a urlencoded form field (Twilio's
    webhooks) is a 400, not a database error. Multipart bodies are left to their
    view, which sets their own size limit before reading them."""
    problem = text_problem(request.path) or _problem(request.args)
    if problem:
        raise InvalidRequest(f"The URL {problem}.", code="invalid_url")
    if request.mimetype == "application/x-www-form-urlencoded":
        problem = _problem(request.form)
        if problem:
            raise InvalidRequest(f"A form field {problem}.", code="invalid_form")


def init_app(app: Flask) -> None:
    app.json = StrictJSONProvider(app)
    app.before_request(refuse_unstorable_text)
