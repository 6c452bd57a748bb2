"""The Flask app and a threaded werkzeug server that tests can start and stop in-process."""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from sandbox import control, media, meta_api, template_api, twilio_api
from sandbox.state import SandboxState


def create_sandbox_app(state: SandboxState) -> Flask:
    """One Flask app serving the Twilio API, the Graph API and `/_sandbox` against `state`."""
    app = Flask("sandbox")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["SANDBOX_STATE"] = state
    app.register_blueprint(control.blueprint(state))
    app.register_blueprint(twilio_api.blueprint(state))
    app.register_blueprint(meta_api.blueprint(state))
    app.register_blueprint(template_api.blueprint(state))
    app.register_blueprint(media.blueprint(state))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return jsonify(error=exc.name, description=exc.description), exc.code or 500

    return app


class _KeepAliveHandler(WSGIRequestHandler):
    """HTTP/1.1 with keep-alive, as Twilio and Graph speak it: clients reuse pooled
    connections instead of paying a TCP handshake per send."""

    protocol_version = "HTTP/1.1"


class _QuietHandler(_KeepAliveHandler):
    """Request handler without per-request access logs (tests and harnesses stay readable)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class SandboxServer:
    """The sandbox on a real socket in a background thread: `.url`, `.stop()`, context manager.

    Port 0 picks a free port; the real one is in `.port` / `.url`.
    """

    def __init__(
        self,
        state: SandboxState | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_requests: bool = False,
    ) -> None:
        self.state = state or SandboxState()
        self.host = host
        handler = _KeepAliveHandler if log_requests else _QuietHandler
        self._server: BaseWSGIServer = make_server(
            host, port, create_sandbox_app(self.state), threaded=True, request_handler=handler
        )
        self.port: int = self._server.server_port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="sandbox-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake sleeping handlers, stop callbacks, close the socket."""
        self.state.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
        self.state.close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    state: SandboxState | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    log_requests: bool = False,
) -> SandboxServer:
    """Start the sandbox in a background thread and return the running server."""
    return SandboxServer(state, host, port, log_requests).start()
