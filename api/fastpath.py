"""The two busiest routes' plain requests answered in front of Flask, the same way.

`POST /v1/messages` (every message) and `POST /webhooks/twilio/status` (two or three
per SMS sent) are Herald's hot paths. Through Flask each paid for a request and an app
context, URL matching, the before-request input check, a cookie session, form or JSON
parsing into werkzeug's structures and a Response object: about 0.1 ms of CPU, as much
as verifying and storing a callback, a fifth of accepting a message. None of it does
anything for their plain case, so a WSGI layer in front of Flask serves that case with
the views' own work (`api.messages.accept_request`, `api.webhooks.accept_twilio_status`)
on the raw environ and writes the answer Flask would write (same status line, headers
and body; tests compare the two byte for byte).

What is plain: for messages, a JSON body with a length within `MAX_CONTENT_LENGTH`, no
query string, no cookie; for status callbacks, a urlencoded body within the limit, no
cookie, an ASCII query, UTF-8 fields without NUL. Any other request, and any request
Flask's settings would treat differently (debug, trusted hosts, a server name), goes to
Flask untouched (a body already read handed on as it was). An exception raised by the
work (a bad key or signature, invalid input, the database down) is answered by Flask's
own error handlers in a request context (api/errors.py): the same 4xx or 503, in the
same JSON shape, with the same headers and logging. A status callback spooled while the
database is unreachable (services/callbacks/spool.py) is a 202 with an empty body, as
Flask writes it.

The price: an app-wide Flask hook added later (a request id, a rate limit) does not run
for these plain requests unless it is added here too. `HOOKS_DONE_HERE` names the hooks
whose work is done here; tests/unit/test_fast_path_hooks.py fails when the app, or the
two routes' blueprints, has any other. `HERALD_FAST_PATH=0` leaves both routes to Flask
(bench/README.md: what the fast path saves).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any, cast
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401  (registers the "werkzeug.url_quote" codec error handler)
from flask import Flask
from sqlalchemy.orm import Session
from werkzeug.http import HTTP_STATUS_CODES

from api.auth import RequestSession
from api.messages import accept_request
from api.webhooks import accept_twilio_status
from core.config import get_settings
from services.content.inputs import text_problem

MESSAGES_PATH = "/v1/messages"
STATUS_PATH = "/webhooks/twilio/status"
FORM = "application/x-www-form-urlencoded"
_NO_CONTENT = "204 NO CONTENT"
# Sent with every answer by api/__init__.py's after-request step; so here too.
_NOSNIFF = ("X-Content-Type-Options", "nosniff")
# What Flask sends with `Response(status=204)` after api/__init__.py's step: no type, no length.
_NO_CONTENT_HEADERS = [_NOSNIFF]
# And with an empty body of another status (a spooled callback's 202): its default
# mimetype and its length.
_EMPTY_HEADERS = [("Content-Type", "text/html; charset=utf-8"), _NOSNIFF, ("Content-Length", "0")]

# Flask's hooks (attributes of the app: per-request functions by blueprint, None for the
# app; app context teardowns; Flask's request signals as "signal <name>") whose work the
# fast path does itself, by `module.qualname`. Any other hook on the app or on the two
# routes' blueprints would be skipped for the plain requests answered here.
HOOKS_DONE_HERE: dict[str, frozenset[str]] = {
    # A NUL in the path, the query or a form field: the request goes to Flask, whose hook
    # answers it (`_first_values`; `/v1/messages` has no query and a JSON body).
    "before_request_funcs": frozenset({"api.inputs.refuse_unstorable_text"}),
    # The request's session is closed in `finally`.
    "teardown_appcontext_funcs": frozenset({"api.auth.close_db"}),
    # `X-Content-Type-Options: nosniff` is in the fast path's own answers (`_NOSNIFF`),
    # and its 204 declares no type.
    "after_request_funcs": frozenset({"api._answer_headers"}),
}

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_STATUS_LINES = {status: f"{status} {HTTP_STATUS_CODES[status].upper()}" for status in (200, 202)}


def flask_would_answer_plainly(app: Flask) -> bool:
    """False when Flask's settings change how it answers any request (debug pages,
    trusted hosts, a server name): then Flask answers everything itself."""
    config = app.config
    return not (app.debug or config.get("TRUSTED_HOSTS") or config.get("SERVER_NAME"))


def plain_body_length(app: Flask, environ: dict[str, Any]) -> int | None:
    """The body's length when a fast path may read it, else None (Flask reads it): a
    `Content-Length` of digits within `MAX_CONTENT_LENGTH`, no chunked body, no cookie,
    and no setting that makes Flask answer differently."""
    length = environ.get("CONTENT_LENGTH", "")
    limit = app.config.get("MAX_CONTENT_LENGTH")
    if (
        not (length.isascii() and length.isdigit())
        or (limit is not None and int(length) > limit)
        or "HTTP_TRANSFER_ENCODING" in environ
        or "HTTP_COOKIE" in environ
        or not flask_would_answer_plainly(app)
    ):
        return None
    return int(length)


def answer_as_flask(
    app: Flask,
    environ: dict[str, Any],
    body: bytes,
    exc: Exception,
    start_response: Callable[..., Any],
) -> Any:
    """The answer Flask gives when the view raises `exc`: its error handlers, then the
    after-request steps, in a request context for this request."""
    environ["wsgi.input"] = io.BytesIO(body)
    with app.request_context(environ):
        try:
            response = app.finalize_request(app.handle_user_exception(exc))
        except Exception as unhandled:
            response = app.handle_exception(unhandled)
        return response(environ, start_response)


def _first_values(pairs: list[tuple[str, str]]) -> dict[str, str] | None:
    """The form as `MultiDict.to_dict()` gives it (each key's first value), or None if a
    key or value could not be stored (Flask's check answers that request)."""
    form: dict[str, str] = {}
    for key, value in pairs:
        if text_problem(key) or text_problem(value):
            return None
        if key not in form:
            form[key] = value
    return form


class TwilioStatusFastPath:
    """WSGI middleware: the plain Twilio status callback answered here, the rest by `app`."""

    __slots__ = ("flask", "wsgi_app")

    def __init__(self, flask: Flask, next_app: WSGIApp) -> None:
        self.flask = flask
        self.wsgi_app = next_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != STATUS_PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.wsgi_app(environ, start_response)
        content_type = environ.get("CONTENT_TYPE", "")
        query = environ.get("QUERY_STRING", "")
        size = plain_body_length(self.flask, environ)
        if (
            size is None
            or (content_type != FORM and not content_type.startswith(FORM + ";"))
            or not query.isascii()
        ):
            return self.wsgi_app(environ, start_response)
        raw = environ["wsgi.input"].read(size) if size else b""
        form = args = None
        if len(raw) == size or "wsgi.input_terminated" in environ:
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                pass
            else:
                args = _first_values(_pairs(query))
                form = _first_values(_pairs(text)) if args is not None else None
        if form is None or args is None:
            environ["wsgi.input"] = io.BytesIO(raw)  # Flask reads what was sent
            return self.wsgi_app(environ, start_response)
        url = get_settings().public_url + STATUS_PATH + (f"?{query}" if query else "")
        signature = environ.get("HTTP_X_TWILIO_SIGNATURE", "")
        session = RequestSession()
        try:
            status = accept_twilio_status(
                cast(Session, session), url, form, signature, args.get("message_id")
            )
        except Exception as exc:
            return answer_as_flask(self.flask, environ, b"", exc, start_response)
        finally:
            session.close()
        if status == 204:
            start_response(_NO_CONTENT, list(_NO_CONTENT_HEADERS))
        else:  # 202: spooled while the database is unreachable (services/callbacks/spool.py)
            start_response(_STATUS_LINES[status], list(_EMPTY_HEADERS))
        return []


class AcceptFastPath:
    """WSGI middleware: plain JSON `POST /v1/messages` requests are served here, the
    rest by `wsgi_app` (Flask)."""

    def __init__(self, app: Flask, wsgi_app: WSGIApp) -> None:
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        length = self._length(environ)
        if length is None:
            return self.wsgi_app(environ, start_response)
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            status, answer = self._accept(environ, body)
        except Exception as exc:
            return answer_as_flask(self.app, environ, body, exc, start_response)
        data = (self.app.json.dumps(answer, separators=(",", ":")) + "\n").encode()
        start_response(
            _STATUS_LINES[status],
            [
                ("Content-Type", self.app.json.mimetype),
                ("Content-Length", str(len(data))),
                _NOSNIFF,
            ],
        )
        return [data]

    def _length(self, environ: dict[str, Any]) -> int | None:
        """The body's length when this path may serve the request, else None."""
        if (
            environ.get("PATH_INFO") != MESSAGES_PATH
            or environ.get("REQUEST_METHOD") != "POST"
            or environ.get("QUERY_STRING")
            or environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
            != "application/json"
            or self.app.json.compact is False
        ):
            return None
        return plain_body_length(self.app, environ)

    def _accept(self, environ: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any]]:
        session = RequestSession()
        try:
            item = accept_request(
                session,  # type: ignore[arg-type]
                environ.get("HTTP_AUTHORIZATION"),
                body,
                environ.get("HTTP_IDEMPOTENCY_KEY") or None,
                self.app.json.loads,
            )
        finally:
            session.close()
        return item.status, item.answer()


def _pairs(text: str) -> list[tuple[str, str]]:
    """Fields as werkzeug decodes a query or urlencoded body (invalid bytes stay %-escaped)."""
    return parse_qsl(text, keep_blank_values=True, errors="werkzeug.url_quote")


def install(app: Flask) -> None:
    """Put the fast paths in front of `app` (its test client goes through them too)."""
    inner = AcceptFastPath(app, app.wsgi_app)
    app.wsgi_app = TwilioStatusFastPath(app, inner)  # type: ignore[method-assign]


def flask_of(app: Flask) -> WSGIApp:
    """Flask's own WSGI callable, under the fast paths (tests compare the two)."""
    inner: Any = app.wsgi_app
    while isinstance(inner, AcceptFastPath | TwilioStatusFastPath):
        inner = inner.wsgi_app
    return cast(WSGIApp, inner)
