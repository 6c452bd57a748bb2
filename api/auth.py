"""Per-request database session, the calling tenant, and its read rate."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Flask, current_app, g, request
from sqlalchemy.orm import Session

from core.config import get_settings
from core.errors import Forbidden, InvalidRequest, RateLimited, UnsupportedMediaType
from models import Tenant, new_session
from services.policy.limits import take_read
from services.tenancy.tenants import authenticate_caller


class RequestSession:
    """The request's Session, made on first use. A warm `POST /v1/messages` (key,
    tenant and account cached) never reads through it: making and closing a Session
    for it cost more than its statements' share of the group commit. Everything but
    `in_transaction` and `close` goes to the real Session, made then."""

    __slots__ = ("_session",)

    def __init__(self) -> None:
        self._session: Session | None = None

    def _real(self) -> Session:
        if self._session is None:
            self._session = new_session()
        return self._session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def in_transaction(self) -> bool:
        return self._session is not None and self._session.in_transaction()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


def db() -> Session:
    """The request's session (made when first used), closed at teardown; views commit
    explicitly."""
    session = g.get("db")
    if session is None:
        session = g.db = RequestSession()
    return session  # type: ignore[return-value]


def close_db(_exc: BaseException | None = None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.close()


def init_app(app: Flask) -> None:
    app.teardown_appcontext(close_db)


def current_tenant() -> Tenant:
    return g.tenant


def test_mode() -> bool:
    """Whether the caller used a test key: it sees and makes test messages only."""
    return bool(g.get("test", False))


def refuse_test_key(action: str) -> None:
    """A 403 `test_key_not_allowed` for a test key: `action` would change live data
    (contacts and opt-outs are shared by both modes) or call a provider with the tenant's
    real credentials, which a test key never does. Call it before any work."""
    if test_mode():
        raise Forbidden(f"A test key cannot {action}: use a live key.", code="test_key_not_allowed")


def require_tenant(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        g.tenant, g.test = authenticate_caller(db(), request.headers.get("Authorization"))
        return view(*args, **kwargs)

    return wrapper


def limit_reads(tenant_id: str) -> None:
    """Take a token from the tenant's read bucket (HERALD_READ_RATE per second), or a 429
    with Retry-After: one tenant's loop over expensive queries cannot take the database
    from the others."""
    wait = take_read(tenant_id, get_settings().read_rate)
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise RateLimited(
            f"Too many reads for this tenant; retry in {seconds} s.",
            headers={"Retry-After": str(seconds)},
        )


def read_limited(view: Callable[..., Any]) -> Callable[..., Any]:
    """For an expensive read (a list, usage, progress): under `require_tenant` (the API)
    or behind the console's sign-in, both of which set `g.tenant`."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        limit_reads(g.tenant.id)
        return view(*args, **kwargs)

    return wrapper


_FORM_TYPES = frozenset({"multipart/form-data", "application/x-www-form-urlencoded"})


def json_body() -> Any:
    """The parsed JSON body, or a 400 that says what was wrong with it; a body declared
    as anything but JSON (`text/plain`, a form, no type) is a 415: the client's HTTP library
    is not sending what it thinks it sends. api/fastpath.py serves JSON only, so its
    answers never differ. No body at all is the 400 below, whatever the type."""
    if not request.is_json and request.content_length:
        raise UnsupportedMediaType(
            "Send the body as JSON, with the header Content-Type: application/json.",
        )
    # `request.data` runs werkzeug's form parsing first (a cost on every POST): only a
    # form body needs it, whose raw data that parsing consumes (so it stays "empty").
    body = request.data if request.mimetype in _FORM_TYPES else request.get_data()
    return parse_json(body, current_app.json.loads)


def parse_json(body: bytes, loads: Callable[[bytes], Any]) -> Any:
    """`body` parsed by `loads` (the app's StrictJSONProvider), or the 400 that says what
    was wrong with it: the view's and api/fastpath.py's."""
    if not body:
        raise InvalidRequest(
            "The request body is empty; send a JSON object.", code="malformed_json"
        )
    try:
        return loads(body)
    except ValueError as exc:  # api/inputs.py: too deep, NUL, lone surrogate, NaN…
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}.", code="malformed_json"
        ) from None
