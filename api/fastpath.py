"""`POST /webhooks/twilio/status` answered in front of Flask.

Twilio posts two or three status callbacks per message sent, each a small signed form
answered 204: the busiest route Herald has. Through Flask, a callback paid for a
request and an app context, URL matching, the before-request input check, a session
opened and saved, form parsing into MultiDicts and a Response object: about as much
CPU as verifying and storing it. This WSGI layer does the route's own work
(`api.webhooks.accept_twilio_status`, the view's) on the raw environ and answers the
same 204 (same status line, same headers, an empty body).

Only the plain case is taken: a urlencoded body with a Content-Length within
`MAX_CONTENT_LENGTH`, no cookie, an ASCII query string, a body that is UTF-8 with no
NUL (or lone surrogate) in a field or in the query. Anything else goes to Flask
unchanged (the body, once read, handed on as it was), which answers it as before: a
400 for a NUL, a 413 for a body too large, the form rules of werkzeug. An exception
raised by the route's work (a bad signature, a callback that is not Twilio's, the
database down) is answered by Flask's own error handlers in a request context
(api/errors.py): the same 403, 400 or 503 in the same JSON shape.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable
from typing import Any, cast
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401  (registers the "werkzeug.url_quote" codec error handler)
from flask import Flask
from sqlalchemy.orm import Session

from api import auth
from api.webhooks import accept_twilio_status
from herald.config import get_settings
from services.inputs import text_problem

PATH = "/webhooks/twilio/status"
FORM = "application/x-www-form-urlencoded"
_NO_CONTENT = "204 NO CONTENT"
# What Flask sends with `Response(status=204)`: its default mimetype, no length.
_NO_CONTENT_HEADERS = [("Content-Type", "text/html; charset=utf-8")]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _OwnSession:
    """A session opened only if something uses it (a cache miss of the signers:
    services.tenants), closed by `close_if_open` if it was: as the view's `_LazySession`,
    without the app context that `api.auth.db` needs."""

    __slots__ = ("_session",)

    def __init__(self) -> None:
        self._session: Session | None = None

    def __getattr__(self, name: str) -> Any:
        if self._session is None:
            self._session = auth.new_session()  # as the view's request session opens
        return getattr(self._session, name)

    def close_if_open(self) -> None:
        if self._session is not None:
            self._session.close()


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

    __slots__ = ("flask", "next")

    def __init__(self, flask: Flask, next_app: WSGIApp) -> None:
        self.flask = flask
        self.next = next_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.next(environ, start_response)
        content_type = environ.get("CONTENT_TYPE", "")
        length = environ.get("CONTENT_LENGTH", "")
        limit = self.flask.config.get("MAX_CONTENT_LENGTH")
        query = environ.get("QUERY_STRING", "")
        if (
            (content_type != FORM and not content_type.startswith(FORM + ";"))
            or not (length.isascii() and length.isdigit())
            or (limit is not None and int(length) > limit)
            or "HTTP_TRANSFER_ENCODING" in environ
            or "HTTP_COOKIE" in environ
            or not query.isascii()
        ):
            return self.next(environ, start_response)
        size = int(length)
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
            return self.next(environ, start_response)
        url = get_settings().public_url + PATH + (f"?{query}" if query else "")
        signature = environ.get("HTTP_X_TWILIO_SIGNATURE", "")
        session = _OwnSession()
        try:
            accept_twilio_status(
                cast(Session, session), url, form, signature, args.get("message_id")
            )
        except Exception:
            return self._error(environ, start_response)
        finally:
            session.close_if_open()
        start_response(_NO_CONTENT, list(_NO_CONTENT_HEADERS))
        return []

    def _error(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """The exception being handled, answered as Flask answers it when the view raises
        it: its error handlers, then the after-request steps, in a request context for
        this route. Called from an `except` block (Flask re-raises what no handler takes)."""
        flask = self.flask
        environ["wsgi.input"] = io.BytesIO()  # read already; no handler reads it
        ctx = flask.request_context(environ)
        ctx.push()
        error: BaseException | None = None
        try:
            exc = sys.exc_info()[1]
            assert isinstance(exc, Exception)
            try:
                response = flask.finalize_request(flask.handle_user_exception(exc))
            except Exception as unhandled:
                error = unhandled
                response = flask.handle_exception(unhandled)
            return response(environ, start_response)
        finally:
            ctx.pop(error)


def _pairs(text: str) -> list[tuple[str, str]]:
    """Fields as werkzeug decodes a query or urlencoded body (invalid bytes stay %-escaped)."""
    return parse_qsl(text, keep_blank_values=True, errors="werkzeug.url_quote")


def install(app: Flask) -> None:
    """Put the fast path in front of `app` (its test client goes through it too)."""
    app.wsgi_app = TwilioStatusFastPath(app, app.wsgi_app)  # type: ignore[method-assign]
