"""One JSON error shape for everything, client mistakes and server faults alike."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from core.errors import RETRY_AFTER_SECONDS, HeraldError, Unavailable, database_unavailable

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "not_ready",
}


def unavailable(exc: BaseException) -> Unavailable:
    """The 503 a request gets when the database cannot be reached: the client (or the
    provider, for webhooks) retries after Retry-After; nothing was half done, since the
    transaction that failed was rolled back."""
    log.warning("database unavailable: %s", type(exc).__name__)
    return Unavailable(
        "Herald's database is unavailable; retry later.",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def error_response(status: int, code: str, message: str, fields: dict | None = None):  # type: ignore[no-untyped-def]
    error: dict = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return jsonify({"error": error}), status


def register(app: Flask) -> None:
    @app.errorhandler(HeraldError)
    def _herald(exc: HeraldError):  # type: ignore[no-untyped-def]
        response = jsonify(exc.to_dict())
        response.status_code = exc.status
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):  # type: ignore[no-untyped-def]
        status = exc.code or 500
        message = {
            405: "This method is not allowed on this path.",
            413: "The request body is too large.",
        }.get(status, exc.description or exc.name)
        response, status = error_response(status, HTTP_CODES.get(status, "http_error"), message)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response, status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        if database_unavailable(exc):
            return _herald(unavailable(exc))
        log.exception("unhandled error: %s", type(exc).__name__)
        return error_response(500, "internal_error", "Herald could not complete the request.")
