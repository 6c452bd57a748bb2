"""The seeds' endpoints (CONTRACT §4), kept working as thin routes onto /v1/messages."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("legacy", __name__)
