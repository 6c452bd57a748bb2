"""gunicorn's settings for Herald's API: its own error answers in Herald's JSON shape.

gunicorn answers a request it cannot hand to the app (a URL over `limit_request_line`,
too many or too large headers, a malformed request line) itself, before Flask sees it,
with a small HTML page. A client of a JSON API then fails to parse the error of the one
request it most needs to understand. `write_error` below replaces gunicorn's writer for
those answers: the same status, `{"error": {"code", "message"}}` as JSON, nothing of the
request echoed back.

Loaded by `gunicorn.conf.py` at the repository's root (gunicorn reads that file from its
working directory by default: the Dockerfile, Procfile and compose run it from there)
and named explicitly (`--config python:herald.gunicorn_conf`) where the working
directory may differ (herald/stack.py).
"""

from __future__ import annotations

import json
import socket

from gunicorn import util

# gunicorn's own statuses for what it refuses (gunicorn/workers/base.py handle_error).
CODES = {
    400: ("invalid_request", "The request is not valid HTTP."),
    403: ("forbidden", "The request is forbidden."),
    414: ("uri_too_long", "The request line (method and URL) is too long."),
    417: ("expectation_failed", "The Expect header is not supported."),
    431: ("headers_too_large", "The request's headers are too large or too many."),
    500: ("internal_error", "Herald could not complete the request."),
    501: ("not_implemented", "The request's transfer coding is not supported."),
}


def error_bytes(status: int, reason: str) -> bytes:
    """The whole HTTP answer gunicorn writes for a request it refused, as JSON."""
    code, message = CODES.get(status, ("http_error", reason or "The request was refused."))
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":"))
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "\r\n"
    )
    return (head + body).encode("latin-1")


def write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn.util.write_error's signature; `mesg` (which may quote the request) is
    logged by gunicorn, not sent."""
    util.write_nonblock(sock, error_bytes(status_int, reason))


util.write_error = write_error  # gunicorn's workers call util.write_error at answer time
