"""Errors the domain raises; the API renders each as CONTRACT §3's JSON error."""

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
    status = 400
    code = "invalid_request"


class Unauthorized(HeraldError):
    status = 401
    code = "unauthorized"


class NotFound(HeraldError):
    status = 404
    code = "not_found"


class Conflict(HeraldError):
    status = 409
    code = "conflict"


class PolicyRefused(HeraldError):
    status = 422
    code = "policy_refused"


class RateLimited(HeraldError):
    status = 429
    code = "rate_limited"


class Forbidden(HeraldError):
    status = 403
    code = "forbidden"
