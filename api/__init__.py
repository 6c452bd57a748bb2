"""The Flask face of Herald: validate, persist, answer fast; workers do the rest."""

from __future__ import annotations

import gc
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from core.config import get_settings
from core.logs import configure_logging


class CookieSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session (the console's), without building a signing
    serializer and parsing cookies for a request that sends no cookie at all, as API
    calls do: that cost showed in every `POST /v1/messages`. The answer is the same
    empty session Flask would open."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and "HTTP_COOKIE" not in request.environ:
            return self.session_class()
        return super().open_session(app, request)


def _freeze_startup_objects() -> None:
    """Leave what the process built at startup (modules, routes, SQLAlchemy's metadata:
    most of its objects, kept for its whole life) out of every later full garbage
    collection. In the ingest benchmark a worker's full collection walked them all:
    ~90 ms of CPU holding the GIL (a stall for every request in flight), once or twice
    a run; frozen, ~4 ms. The startup garbage is collected first, so nothing cyclic is
    frozen with it. Not in tests, which build an app per test."""
    gc.collect()
    gc.freeze()


def _answer_headers(response: Response) -> Response:
    """Every answer's type is the one it declares: a browser never sniffs a JSON error or
    an echoed challenge into HTML that runs. A 204 has no body, so it declares no type
    (Flask would call its nothing `text/html`). api/fastpath.py answers the same way."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.status_code == 204:
        response.headers.pop("Content-Type", None)
    return response


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    settings = get_settings()
    configure_logging(settings)
    app = Flask("herald", static_folder=None)
    app.session_interface = CookieSessionInterface()
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    if test_config:
        app.config.update(test_config)

    from api import auth, campaigns, contacts, errors, inputs, legacy, messages, ops, webhooks

    errors.register(app)
    app.after_request(_answer_headers)
    inputs.init_app(app)
    auth.init_app(app)
    app.register_blueprint(messages.bp)
    app.register_blueprint(contacts.bp)
    app.register_blueprint(campaigns.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(legacy.bp)
    app.register_blueprint(ops.bp)
    from api import media, templates, usage

    app.register_blueprint(templates.bp)
    app.register_blueprint(media.bp)
    app.register_blueprint(usage.bp)

    from api import admin, console, conversations, privacy

    app.register_blueprint(admin.bp)
    app.register_blueprint(conversations.bp)
    app.register_blueprint(privacy.bp)
    console.init_app(app)

    from api import openapi

    openapi.init_app(app)  # after every route: the document lists them all
    if settings.fast_path:  # HERALD_FAST_PATH=0: Flask answers these routes too
        from api import fastpath

        fastpath.install(app)  # the hot routes' plain requests answered in front of Flask
    if not app.testing:
        _freeze_startup_objects()
    return app
