"""Liveness and readiness probes for the platform's health checks."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy import text

from webhooks_app.service import current_service

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> tuple[dict[str, object], int]:
    checks = {"database": _database_ok(), "broker": _broker_ok()}
    ready = all(checks.values())
    body: dict[str, object] = {"status": "ready" if ready else "unavailable", "checks": checks}
    return body, 200 if ready else 503


def _database_ok() -> bool:
    try:
        with current_service().db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


def _broker_ok() -> bool:
    try:
        with current_service().celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception:
        return False
    return True
