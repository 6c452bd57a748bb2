"""Errors the domain raises; the API renders each as the one JSON error shape."""

from __future__ import annotations

from typing import Any


class HeraldError(Exception):
    status = 400
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        fields: dict[str, Any] | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.fields = fields
        self.status = status or self.status
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}


class InvalidRequest(HeraldError):
    """A 400. One naming `fields` (what to fix, per field) is `invalid_fields` unless it
    gives its own code, wherever it is raised: a client tells the two kinds apart by the
    code alone (a list's `limit` and a template's `limit` answer alike)."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, **kwargs: Any) -> None:
        if kwargs.get("fields") and not kwargs.get("code"):
            kwargs["code"] = "invalid_fields"
        super().__init__(message, **kwargs)


class Unauthorized(HeraldError):
    status = 401
    code = "unauthorized"


class NotFound(HeraldError):
    status = 404
    code = "not_found"


class Conflict(HeraldError):
    status = 409
    code = "conflict"


class UnsupportedMediaType(HeraldError):
    """A body in another format than the route reads (text/plain where JSON is read)."""

    status = 415
    code = "unsupported_media_type"


class PolicyRefused(HeraldError):
    status = 422
    code = "policy_refused"


class RateLimited(HeraldError):
    status = 429
    code = "rate_limited"


class Forbidden(HeraldError):
    status = 403
    code = "forbidden"


class Unavailable(HeraldError):
    """A dependency (the database) cannot be reached: retry later, nothing was done."""

    status = 503
    code = "unavailable"


# Seconds a client is told to wait when the database is unreachable: about how long a
# restart or a failover takes, short enough that a blip costs one retry.
RETRY_AFTER_SECONDS = 5


def database_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database could not be reached or the connection was lost
    (server down, restart, network cut, pool exhausted), rather than a bug or bad data.

    SQLAlchemy wraps the driver's errors: OperationalError covers refused or dropped
    connections and server shutdowns; a DBAPIError flagged `connection_invalidated` is
    any error the dialect recognised as a disconnect; TimeoutError is the pool's."""
    import psycopg
    from sqlalchemy import exc as sa

    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True  # the driver's own, where a path on psycopg did not wrap it
    if isinstance(exc, sa.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sa.OperationalError | sa.InterfaceError
        )
    return isinstance(exc, sa.TimeoutError | sa.DisconnectionError)
