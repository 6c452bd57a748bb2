"""`POST /v1/messages` without Flask's per-request machinery, answered the same way.

Flask and Werkzeug cost about 0.1 ms of CPU per request before a view runs and after
it returns (a request and an app context, routing, the cookie session, hooks, a
Response object: measured under gunicorn against a bare WSGI function), a tenth or
more of what accepting a message costs in all. None of it does
anything for a plain JSON `POST /v1/messages`: no route variables, no query string,
no cookie, no form. `AcceptFastPath` wraps `app.wsgi_app`: such a request is
authenticated, validated and stored by the same functions the Flask view calls
(`api.messages.accept_request`), and its answer written as `jsonify` writes it. Any
other request, and any request Flask's settings would treat differently (debug,
trusted hosts, a server name, a body over the size limit or without a length), goes
to Flask untouched. An error is answered by Flask's own error handlers
(api/errors.py) inside a request context, so its shape, status, headers and logging
are exactly the view's.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES

from api.auth import RequestSession

PATH = "/v1/messages"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_STATUS_LINES = {status: f"{status} {HTTP_STATUS_CODES[status].upper()}" for status in (200, 202)}


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
            return self._error(environ, body, exc, start_response)
        data = (self.app.json.dumps(answer, separators=(",", ":")) + "\n").encode()
        start_response(
            _STATUS_LINES[status],
            [("Content-Type", self.app.json.mimetype), ("Content-Length", str(len(data)))],
        )
        return [data]

    def _length(self, environ: dict[str, Any]) -> int | None:
        """The body's length when this path may serve the request, else None."""
        if (
            environ.get("PATH_INFO") != PATH
            or environ.get("REQUEST_METHOD") != "POST"
            or environ.get("QUERY_STRING")
            or "HTTP_COOKIE" in environ
            or "HTTP_TRANSFER_ENCODING" in environ
            or environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
            != "application/json"
        ):
            return None
        app = self.app
        config = app.config
        if app.debug or config.get("TRUSTED_HOSTS") or config.get("SERVER_NAME"):
            return None
        if app.json.compact is False:
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None
        limit = config["MAX_CONTENT_LENGTH"]
        if length < 0 or (limit is not None and length > limit):
            return None
        return length

    def _accept(self, environ: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any]]:
        from api.messages import accept_request

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

    def _error(
        self,
        environ: dict[str, Any],
        body: bytes,
        exc: Exception,
        start_response: Callable[..., Any],
    ) -> Any:
        """The answer Flask gives when the view raises `exc`."""
        environ["wsgi.input"] = io.BytesIO(body)
        app = self.app
        with app.request_context(environ):
            try:
                rv = app.handle_user_exception(exc)
            except Exception as unhandled:
                response = app.handle_exception(unhandled)
            else:
                response = app.finalize_request(rv)
            return response(environ, start_response)


def init_app(app: Flask) -> None:
    app.wsgi_app = AcceptFastPath(app, app.wsgi_app)  # type: ignore[method-assign]
