"""Operations endpoints: liveness, readiness, metrics, the OpenAPI document and its reference."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify, request, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from swagger_ui_bundle import swagger_ui_path

from api.auth import db
from core.config import get_settings
from core.errors import RETRY_AFTER_SECONDS, NotFound, Unauthorized
from services.reporting.metrics import register as register_metrics

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    """Alive: the process answers (no dependency is checked).
    ---
    get:
      summary: Liveness
      security: []
      responses:
        200: {description: Alive, content: {application/json: {schema: Health}}}
    """
    return jsonify({"ok": True})


@bp.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    """Ready when the database answers and Redis (the broker) does; a 503 names what is down
    so an operator (or a load balancer's log) sees which dependency to look at.
    ---
    get:
      summary: Readiness (database and broker)
      security: []
      responses:
        200: {description: Ready, content: {application/json: {schema: Readiness}}}
        503:
          description: 'Not ready: `down` names what is unreachable'
          headers:
            Retry-After:
              schema: {type: integer}
          content: {application/json: {schema: Readiness}}
    """
    checks = {"database": False, "redis": None}
    try:
        db().execute(text("SELECT 1"))
        checks["database"] = True
    except Exception:
        checks["database"] = False
    redis_url = get_settings().redis_url
    if redis_url:
        import redis

        try:
            client = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
            checks["redis"] = bool(client.ping())
        except Exception:
            checks["redis"] = False
    down = [name for name, ok in checks.items() if ok is False]
    if not down:
        return jsonify({"ready": True, "checks": checks})
    names = {"database": "the database", "redis": "Redis (the broker)"}
    body = {
        "ready": False,
        "checks": checks,
        "down": down,
        "error": {
            "code": "unavailable",
            "message": "Not ready: " + " and ".join(names[n] for n in down) + " unreachable.",
        },
    }
    return jsonify(body), 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}


@bp.get("/metrics")
def metrics():  # type: ignore[no-untyped-def]
    """The process's own metrics and Herald's gauges (services/reporting/metrics.py); with
    HERALD_METRICS_TOKEN set, only for `Authorization: Bearer <that token>`.
    ---
    get:
      summary: Prometheus metrics
      security: [{metricsToken: []}, {}]
      responses:
        200: {description: Prometheus metrics, content: {text/plain: {schema: {type: string}}}}
        401:
          description: HERALD_METRICS_TOKEN is set and was not sent
          content:
            application/json: {schema: Error}
    """
    token = get_settings().metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized(
                "Send 'Authorization: Bearer <HERALD_METRICS_TOKEN>'.",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    register_metrics()
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
def openapi():  # type: ignore[no-untyped-def]
    """The document generated at app start (api/openapi.py).
    ---
    get:
      summary: This document
      security: []
      responses:
        200:
          description: The OpenAPI document
          content:
            application/json:
              schema: {type: object, additionalProperties: true}
    """
    return jsonify(current_app.extensions["herald.openapi"])


# Swagger UI's files from the swagger-ui-bundle package: /docs works without internet.
DOCS_ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")
_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Herald API reference</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<link rel="icon" href="/docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/herald.js"></script>
</body>
</html>
"""
_DOCS_SCRIPT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, tryItOutEnabled: false
});
"""


@bp.get("/docs")
def docs():  # type: ignore[no-untyped-def]
    """The interactive reference, Swagger UI over /openapi.json.
    ---
    get:
      summary: Interactive API reference (Swagger UI)
      security: []
      responses:
        200: {description: An HTML page, content: {text/html: {schema: {type: string}}}}
    """
    return Response(_DOCS_PAGE, mimetype="text/html")


@bp.get("/docs/<asset>")
def docs_asset(asset: str):  # type: ignore[no-untyped-def]
    """Swagger UI's own files, served from the installed package.
    ---
    get:
      summary: A file of the interactive reference
      security: []
      responses:
        200: {description: The file}
        404: NotFound
    """
    if asset == "herald.js":
        return Response(_DOCS_SCRIPT, mimetype="text/javascript")
    if asset not in DOCS_ASSETS:
        raise NotFound("No such file.")
    return send_from_directory(swagger_ui_path, asset, max_age=86400)
