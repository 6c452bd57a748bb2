"""HTTP helpers shared by the Twilio and Meta fakes: JSON answers and injected faults."""

from __future__ import annotations

import contextlib
import json
import math
import socket
from collections.abc import Callable
from typing import Any

from flask import Response, request

from sandbox.state import Fault, SandboxState

LONG_TIMEOUT = 30.0  # a `timeout` fault without latency_ms hangs this long, then drops


def json_response(
    body: Any,
    status: int,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json; charset=utf-8",
) -> Response:
    return Response(json.dumps(body), status, headers=headers, content_type=content_type)


def drop_connection() -> Response:
    """Shut the client's socket without an HTTP answer: what a client sees on a timeout."""
    sock = request.environ.get("werkzeug.socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    # Under werkzeug's server writing this fails quietly (socket already shut); under a test
    # client it is a plain gateway timeout.
    return Response("", 504)


def refuse(state: SandboxState, receipt: dict[str, Any], response: Response, code: int) -> Response:
    """Record a refused send with the HTTP status and error code it is answered with."""
    state.record_send(**receipt, status_code=response.status_code, error_code=code)
    return response


def answer_fault(
    state: SandboxState,
    fault: Fault,
    receipt: dict[str, Any],
    error: Callable[[Fault], tuple[Response, int]],
) -> Response:
    """Answer a send that hit a fault, and record it.

    Timeouts are recorded before the wait, so a harness sees them as soon as the client gives
    up; errors are recorded with the status and code actually returned.
    """
    if fault.mode in ("timeout", "accept_then_timeout"):
        state.record_send(**receipt, status_code=None, answered=False)
        state.sleep(fault.latency_ms / 1000.0 if fault.latency_ms else LONG_TIMEOUT)
        return drop_connection()
    state.sleep(fault.latency_ms / 1000.0)
    response, code = error(fault)
    refuse(state, receipt, response, code)
    if fault.retry_after is not None:
        response.headers["Retry-After"] = str(max(0, math.ceil(float(fault.retry_after))))
    return response


def fault_first(
    state: SandboxState,
    fault: Fault | None,
    receipt: dict[str, Any],
    error: Callable[[Fault], tuple[Response, int]],
) -> Response | None:
    """The answer of a fault that comes instead of the provider's (`error`, `timeout`); None
    when there is no fault or it lets the send through first. The receipt names the fault."""
    if fault is None:
        return None
    receipt["fault_id"] = fault.id
    if fault.mode in ("error", "timeout"):
        return answer_fault(state, fault, receipt, error)
    return None


def accept(
    state: SandboxState,
    fault: Fault | None,
    receipt: dict[str, Any],
    error: Callable[[Fault], tuple[Response, int]],
    answer: Response,
) -> Response:
    """Record an accepted send and give its answer; under an `accept_then_*` fault the send
    is accepted all the same, but the fault answers."""
    if fault is not None:
        receipt["accepted"] = True
        return answer_fault(state, fault, receipt, error)
    state.record_send(**receipt, accepted=True, status_code=answer.status_code)
    return answer
