"""Operations endpoints: liveness, readiness, metrics, the OpenAPI document."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.auth import db
from api.openapi import OPENAPI
from herald.config import get_settings
from services.errors import RETRY_AFTER_SECONDS, Unauthorized
from services.metrics import register as register_metrics

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    return jsonify({"ok": True})


@bp.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    """Ready when the database answers and Redis (the broker) does; a 503 names what is down
    so an operator (or a load balancer's log) sees which dependency to look at."""
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
    """The process's own metrics and Herald's gauges (services/metrics.py); with
    HERALD_METRICS_TOKEN set, only for `Authorization: Bearer <that token>`."""
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
    return jsonify(OPENAPI)
