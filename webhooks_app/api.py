"""The read API over stored events, behind ``Authorization: Bearer <ADMIN_API_TOKEN>``."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, request

from webhooks_app import store
from webhooks_app.errors import ApiError
from webhooks_app.service import current_service
from webhooks_app.store import AttemptRow, EventRow, EventStatus

bp = Blueprint("api", __name__, url_prefix="/api")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@bp.before_request
def require_token() -> None:
    expected = current_service().settings.admin_api_token
    if expected is None:
        raise ApiError(
            404, "The API is disabled: set ADMIN_API_TOKEN to enable it.", code="api_disabled"
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise ApiError(
            401,
            "Send 'Authorization: Bearer <ADMIN_API_TOKEN>'.",
            code="invalid_api_token",
            headers={"WWW-Authenticate": 'Bearer realm="assisters-webhooks"'},
        )


@bp.get("/events")
def list_events() -> dict[str, Any]:
    args = request.args
    status = args.get("status") or None
    if status is not None and status not in {s.value for s in EventStatus}:
        raise ApiError(
            400,
            "status must be one of: " + ", ".join(s.value for s in EventStatus) + ".",
            code="invalid_parameter",
            param="status",
        )
    filters = store.EventFilter(
        type=args.get("type") or None,
        status=status,
        since=_timestamp_arg("since"),
        until=_timestamp_arg("until"),
        data_id=args.get("data_id") or None,
    )
    limit = _int_arg("limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    service = current_service()
    with service.db.transaction() as session:
        try:
            page = store.list_events(
                session, filters, limit=limit, cursor=args.get("cursor") or None
            )
        except store.CursorError as exc:
            raise ApiError(400, str(exc), code="invalid_cursor", param="cursor") from None
        data = [event_json(row) for row in page.events]
    return {
        "object": "list",
        "data": data,
        "has_more": page.next_cursor is not None,
        "next_cursor": page.next_cursor,
    }


@bp.get("/events/<event_id>")
def get_event(event_id: str) -> dict[str, Any]:
    with current_service().db.transaction() as session:
        row = store.get_event(session, event_id)
        if row is None:
            raise ApiError(
                404, f"No event with id {event_id!r}.", code="event_not_found", param="id"
            )
        return event_json(row, store.attempts_for(session, event_id))


def event_json(row: EventRow, attempts: list[AttemptRow] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": row.id,
        "object": "event",
        "type": row.type,
        "status": row.status,
        "received_at": _iso(row.received_at),
        "payload": row.payload,
    }
    if attempts is not None:
        body["attempts"] = [attempt_json(a) for a in attempts]
    return body


def attempt_json(attempt: AttemptRow) -> dict[str, Any]:
    duration = None
    if attempt.finished_at is not None:
        duration = round((attempt.finished_at - attempt.started_at).total_seconds() * 1000, 3)
    return {
        "handler": attempt.handler,
        "attempt": attempt.number,
        "status": attempt.status,
        "started_at": _iso(attempt.started_at),
        "finished_at": _iso(attempt.finished_at),
        "duration_ms": duration,
        "error": attempt.error,
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _timestamp_arg(name: str) -> datetime | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        if raw.isdigit():
            return datetime.fromtimestamp(int(raw), UTC)
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise ApiError(
            400, f"{name} must be ISO 8601 or Unix seconds.", code="invalid_parameter", param=name
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(
            400,
            f"{name} must be an integer from {low} to {high}.",
            code="invalid_parameter",
            param=name,
        )
    return int(raw)
