"""HTTP helpers shared by the Twilio and Meta fakes: JSON answers, and a send's one record
whether it is refused, hit by an injected fault or accepted."""

from __future__ import annotations

import contextlib
import json
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class Send:
    """One send request on its way to an answer, recorded once: refused, faulted or accepted.
    `error` builds the provider's answer to an injected fault: (response, error code)."""

    state: SandboxState
    receipt: dict[str, Any]
    error: Callable[[Fault], tuple[Response, int]]
    fault: Fault | None = None

    def refuse(self, response: Response, code: int) -> Response:
        """Record the send refused with the HTTP status and error code it is answered with."""
        self.state.record_send(**self.receipt, status_code=response.status_code, error_code=code)
        return response

    def fault_first(self, fault: Fault | None) -> Response | None:
        """Take the send's fault: its answer when it comes instead of the provider's
        (`error`, `timeout`); None when there is none or it lets the send through first."""
        self.fault = fault
        if fault is None:
            return None
        self.receipt["fault_id"] = fault.id
        if fault.mode in ("error", "timeout"):
            return self._answer_fault(fault)
        return None

    def accept(self, answer: Response) -> Response:
        """Record the send accepted and give its answer; under an `accept_then_*` fault it
        is accepted all the same, but the fault answers."""
        if self.fault is not None:
            self.receipt["accepted"] = True
            return self._answer_fault(self.fault)
        self.state.record_send(**self.receipt, accepted=True, status_code=answer.status_code)
        return answer

    def _answer_fault(self, fault: Fault) -> Response:
        """Answer a send that hit a fault, and record it.

        Timeouts are recorded before the wait, so a harness sees them as soon as the client
        gives up; errors are recorded with the status and code actually returned.
        """
        if fault.mode in ("timeout", "accept_then_timeout"):
            self.state.record_send(**self.receipt, status_code=None, answered=False)
            self.state.sleep(fault.latency_ms / 1000.0 if fault.latency_ms else LONG_TIMEOUT)
            return drop_connection()
        self.state.sleep(fault.latency_ms / 1000.0)
        response, code = self.error(fault)
        self.refuse(response, code)
        if fault.retry_after is not None:
            response.headers["Retry-After"] = str(max(0, math.ceil(float(fault.retry_after))))
        return response
