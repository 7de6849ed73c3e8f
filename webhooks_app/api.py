"""The JSON API over stored events, behind ``Authorization: Bearer <ADMIN_API_TOKEN>`` or a
logged-in admin page session (then state-changing calls need the page's CSRF token)."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, g, request
from flask_wtf.csrf import CSRFError

from webhooks_app import audit, masking, replay, store
from webhooks_app.admin.auth import session_admin
from webhooks_app.errors import ApiError
from webhooks_app.openapi import openapi_document
from webhooks_app.service import current_service
from webhooks_app.store import AttemptRow, EventRow, EventStatus

bp = Blueprint("api", __name__, url_prefix="/api")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_ACTOR = "api-token"  # noqa: S105 - the audit log's name for bearer-token calls


@bp.before_request
def require_token() -> None:
    if request.endpoint == "api.openapi":
        return  # the description of the API is public; it holds no data
    settings = current_service().settings
    expected = settings.admin_api_token
    if "Authorization" not in request.headers:
        admin = session_admin()
        if admin is not None:
            # Cookie-authenticated: a page of another site could send this request, so a
            # state-changing one must carry the CSRF token only our pages know.
            if request.method not in SAFE_METHODS:
                try:
                    current_app.extensions["csrf"].protect()
                except CSRFError:
                    raise ApiError(
                        403,
                        "Send the admin page's CSRF token in the X-CSRFToken header.",
                        code="csrf_failed",
                    ) from None
            g.api_actor = admin
            return
    if expected is None and not settings.admin_login_enabled:
        raise ApiError(
            404, "The API is disabled: set ADMIN_API_TOKEN to enable it.", code="api_disabled"
        )
    if expected is None:
        raise ApiError(
            401,
            "Log in to the admin page, or set ADMIN_API_TOKEN to use a bearer token.",
            code="invalid_api_token",
            headers={"WWW-Authenticate": 'Bearer realm="assisters-webhooks"'},
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
    g.api_actor = TOKEN_ACTOR


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
        search=args.get("q") or None,
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
        rules = _mask_rules()
        data = [event_json(row, mask_rules=rules) for row in page.events]
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
        body = event_json(row, store.attempts_for(session, event_id), mask_rules=_mask_rules())
        body["headers"] = dict(masking.display_headers(row.headers))
        return body


def event_json(
    row: EventRow,
    attempts: list[AttemptRow] | None = None,
    *,
    mask_rules: masking.MaskRules | None = None,
) -> dict[str, Any]:
    payload: Any = row.payload
    masked: tuple[str, ...] = ()
    if mask_rules is not None:
        result = masking.mask(row.payload, mask_rules)
        payload, masked = result.value, result.pointers
    body: dict[str, Any] = {
        "id": row.id,
        "object": "event",
        "type": row.type,
        "status": row.status,
        "received_at": _iso(row.received_at),
        "data_id": row.data_id,
        "payload": payload,
        "masked_fields": list(masked),
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
        "run": attempt.run,
        "status": attempt.status,
        "started_at": _iso(attempt.started_at),
        "finished_at": _iso(attempt.finished_at),
        "duration_ms": duration,
        "error": attempt.error,
        "traceback": attempt.traceback,
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _timestamp_arg(name: str) -> datetime | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        if raw.isascii() and raw.isdigit():
            return datetime.fromtimestamp(int(raw), UTC)
        return store.parse_moment(raw)
    except (ValueError, OverflowError, OSError):
        raise ApiError(
            400, f"{name} must be ISO 8601 or Unix seconds.", code="invalid_parameter", param=name
        ) from None


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ApiError(
            400,
            f"{name} must be an integer from {low} to {high}.",
            code="invalid_parameter",
            param=name,
        )
    return int(raw)


# --- admin actions: replay, delete, reveal, stats, audit ------------------------------------


def _mask_rules() -> masking.MaskRules:
    return masking.MaskRules.parse(current_service().settings.pii_mask_fields)


def _record(session: Any, action: str, target: str | None, **details: Any) -> None:
    audit.record(
        session,
        actor=g.api_actor,
        action=action,
        target=target,
        details=details,
        remote_addr=request.remote_addr,
    )


def _json_body() -> dict[str, Any]:
    if not request.get_data(cache=True):
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.", code="invalid_json")
    return body


def _not_found(event_id: str) -> ApiError:
    return ApiError(404, f"No event with id {event_id!r}.", code="event_not_found", param="id")


@bp.post("/events/<event_id>/replay")
def replay_event(event_id: str) -> tuple[dict[str, Any], int]:
    handler = _json_body().get("handler")
    if handler is not None and not isinstance(handler, str):
        raise ApiError(400, "handler must be a string.", code="invalid_parameter", param="handler")
    service = current_service()
    try:
        with service.db.transaction() as session:
            done = replay.reset_for_replay(
                session,
                event_id,
                registry=service.registry,
                settings=service.settings,
                handler=handler or None,
            )
            _record(session, "event.replay", event_id, handlers=list(done.handlers))
    except replay.ReplayError as exc:
        raise ApiError(exc.status, exc.message, code=exc.code, param=exc.param) from None
    return {
        "id": event_id,
        "object": "event.replay",
        "handlers": list(done.handlers),
        "status": EventStatus.RECEIVED.value,
    }, 202


@bp.delete("/events/<event_id>")
def delete_event(event_id: str) -> dict[str, Any]:
    with current_service().db.transaction() as session:
        row = store.delete_event(session, event_id)
        if row is None:
            raise _not_found(event_id)
        _record(session, "event.delete", event_id, type=row.type, data_id=row.data_id)
    return {"id": event_id, "object": "event", "deleted": True}


@bp.post("/events/<event_id>/reveal")
def reveal_field(event_id: str) -> dict[str, Any]:
    field = _json_body().get("field")
    if not isinstance(field, str):
        raise ApiError(
            400, "field (a JSON Pointer) is required.", code="invalid_parameter", param="field"
        )
    with current_service().db.transaction() as session:
        row = store.get_event(session, event_id)
        if row is None:
            raise _not_found(event_id)
        if field not in masking.mask(row.payload, _mask_rules()).pointers:
            raise ApiError(
                400,
                "field must be one of the event's masked_fields.",
                code="invalid_parameter",
                param="field",
            )
        _record(session, "event.reveal_field", event_id, field=field)
        return {"id": event_id, "field": field, "value": masking.value_at(row.payload, field)}


@bp.get("/stats")
def stats() -> dict[str, Any]:
    with current_service().db.transaction() as session:
        counts = store.bounded_status_counts(session)
        total = store.estimated_event_total(session)
    return {
        "object": "stats",
        "counts": counts,
        "count_cap": store.STATUS_COUNT_CAP,
        "capped": [status for status, n in counts.items() if n >= store.STATUS_COUNT_CAP],
        "estimated_total": total,
    }


@bp.get("/audit")
def audit_entries() -> dict[str, Any]:
    try:
        start = audit.parse_bound(request.args.get("start"), "start", end=False)
        end = audit.parse_bound(request.args.get("end"), "end", end=True)
    except audit.RangeError as exc:
        raise ApiError(400, str(exc), code="invalid_parameter", param=exc.param) from None
    limit = _int_arg("limit", 100, 1, 500)
    with current_service().db.transaction() as session:
        try:
            page = audit.list_entries(
                session,
                start=start,
                end=end,
                limit=limit,
                cursor=request.args.get("cursor") or None,
            )
        except store.CursorError as exc:
            raise ApiError(400, str(exc), code="invalid_cursor", param="cursor") from None
        data = [audit.entry_json(row) for row in page.entries]
    return {
        "object": "list",
        "data": data,
        "has_more": page.next_cursor is not None,
        "next_cursor": page.next_cursor,
    }


@bp.get("/openapi.json")
def openapi() -> dict[str, Any]:
    return openapi_document()
