"""The JSON API over stored events, behind ``Authorization: Bearer <ADMIN_API_TOKEN>`` or a
logged-in admin page session (then state-changing calls need the page's CSRF token)."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, g, request
from flask_wtf.csrf import CSRFError

from webhooks_app import actions, audit, masking, params, replay, store
from webhooks_app.admin.auth import session_admin
from webhooks_app.errors import ApiError
from webhooks_app.openapi import openapi_document
from webhooks_app.service import current_service
from webhooks_app.store import AttemptRow, EventRow, EventStatus
from webhooks_app.web import client_address

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


def _operator() -> actions.Operator:
    return actions.Operator(g.api_actor, client_address())


@bp.get("/events")
def list_events() -> dict[str, Any]:
    filters = params.event_filter(request.args)
    limit = params.integer(
        request.args, "limit", default=DEFAULT_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE
    )
    cursor = params.cursor(request.args)
    service = current_service()
    with service.db.transaction() as session:
        page = actions.list_events(session, filters, limit=limit, cursor=cursor)
        rules = actions.mask_rules(service)
        data = [event_json(row, mask_rules=rules) for row in page.events]
    return {
        "object": "list",
        "data": data,
        "has_more": page.next_cursor is not None,
        "next_cursor": page.next_cursor,
    }


@bp.get("/events/<event_id:event_id>", merge_slashes=False)
def get_event(event_id: str) -> dict[str, Any]:
    service = current_service()
    with service.db.transaction() as session:
        row = actions.load_event(session, event_id)
        body = event_json(
            row, store.attempts_for(session, event_id), mask_rules=actions.mask_rules(service)
        )
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


def _json_body() -> dict[str, Any]:
    if not request.get_data(cache=True):
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.", code="invalid_json")
    return body


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string.", code="invalid_parameter", param=name)
    return value or None


@bp.post("/events/<event_id:event_id>/replay", merge_slashes=False)
def replay_event(event_id: str) -> tuple[dict[str, Any], int]:
    body = _json_body()
    handler = _optional_string(body, "handler")
    done = actions.replay(
        current_service(),
        _operator(),
        event_id,
        handler=handler,
        only_failed=_scope(body) is replay.Scope.FAILED,
    )
    return {
        "id": event_id,
        "object": "event.replay",
        "handlers": list(done.handlers),
        "status": EventStatus.RECEIVED.value,
    }, 202


def _scope(body: dict[str, Any]) -> replay.Scope:
    """The ``handlers`` choice: ``failed`` (the default) or ``all``."""
    try:
        return replay.parse_scope(body.get("handlers"))
    except replay.ReplayError as exc:
        raise ApiError(exc.status, exc.message, code=exc.code, param=exc.param) from None


@bp.post("/replay")
def bulk_replay() -> tuple[dict[str, Any], int]:
    """Replay the failed/dead events a filter selects (the list's filter, in the body)."""
    body = _json_body()
    given: dict[str, str] = {}
    for name in params.EVENT_FILTER_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and name in {"since", "until"}:
            value = str(value)
        if value is not None and not isinstance(value, str):
            raise ApiError(400, f"{name} must be a string.", code="invalid_parameter", param=name)
        if value:
            given[name] = value
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ApiError(
            400, "dry_run must be true or false.", code="invalid_parameter", param="dry_run"
        )
    filters = params.event_filter(given)
    only_failed = _scope(body) is replay.Scope.FAILED
    service = current_service()
    if dry_run:
        ids = actions.preview_bulk_replay(service, filters)
        return {
            "object": "bulk_replay",
            "dry_run": True,
            "replayed": ids,
            "skipped": {},
            "limit": actions.BULK_REPLAY_LIMIT,
        }, 200
    result = actions.bulk_replay(
        service, _operator(), filters, filter_args=given, only_failed=only_failed
    )
    return {
        "object": "bulk_replay",
        "dry_run": False,
        "replayed": list(result.replayed),
        "skipped": result.skipped,
        "limit": actions.BULK_REPLAY_LIMIT,
    }, 202


@bp.delete("/events/<event_id:event_id>", merge_slashes=False)
def delete_event(event_id: str) -> dict[str, Any]:
    actions.delete_event(current_service(), _operator(), event_id)
    return {"id": event_id, "object": "event", "deleted": True}


@bp.post("/events/<event_id:event_id>/reveal", merge_slashes=False)
def reveal_field(event_id: str) -> dict[str, Any]:
    field = _json_body().get("field")
    if not isinstance(field, str):
        raise ApiError(
            400, "field (a JSON Pointer) is required.", code="invalid_parameter", param="field"
        )
    done = actions.reveal_field(current_service(), _operator(), event_id, field)
    return {"id": event_id, "field": done.field, "value": done.value}


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
    args = request.args
    start = params.moment(args, "start")
    end = params.moment(args, "end", end=True)
    limit = params.integer(args, "limit", default=100, low=1, high=500)
    cursor = params.cursor(args)
    with current_service().db.transaction() as session:
        page = actions.list_audit(session, start=start, end=end, limit=limit, cursor=cursor)
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
