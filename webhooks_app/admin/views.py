"""The admin page's routes: thin, over the store, replay, masking and audit modules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Response, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from webhooks_app import audit, masking, replay, store
from webhooks_app.admin import bp, login_link
from webhooks_app.admin.auth import (
    check_credentials,
    end_session,
    login_required,
    safe_next,
    session_admin,
    start_session,
)
from webhooks_app.admin.forms import LoginForm
from webhooks_app.admin.jsonhtml import highlight
from webhooks_app.errors import ApiError
from webhooks_app.service import current_service
from webhooks_app.store import EventFilter, EventRow, EventStatus

PAGE_SIZE = 50
FILTER_FIELDS = ("type", "status", "since", "until", "q")


# --- helpers --------------------------------------------------------------------------------


def _actor() -> str:
    return session_admin() or "anonymous"


def _record(session: Session, action: str, target: str | None = None, **details: Any) -> None:
    audit.record(
        session,
        actor=_actor(),
        action=action,
        target=target,
        details=details,
        remote_addr=request.remote_addr,
    )


class FilterError(ValueError):
    pass


def parse_filters(args: MultiDict[str, str]) -> EventFilter:
    """The list's filters from a query string or form; ``FilterError`` names the bad one."""
    status = (args.get("status") or "").strip() or None
    if status is not None and status not in {s.value for s in EventStatus}:
        raise FilterError(f"Unknown status {status!r}.")
    try:
        since = audit.parse_bound(args.get("since"), "since", end=False)
        until = audit.parse_bound(args.get("until"), "until", end=True)
    except audit.RangeError as exc:
        raise FilterError(str(exc)) from None
    return EventFilter(
        type=(args.get("type") or "").strip() or None,
        status=status,
        since=since,
        until=until,
        search=(args.get("q") or "").strip() or None,
    )


def _filter_args(args: MultiDict[str, str]) -> dict[str, Any]:
    return {name: args[name] for name in FILTER_FIELDS if args.get(name)}


def _list_context(args: MultiDict[str, str]) -> tuple[dict[str, Any], int]:
    service = current_service()
    raw = _filter_args(args)
    context: dict[str, Any] = {
        "filters": raw,
        "statuses": [s.value for s in EventStatus],
        "types": sorted({h.event_type for h in service.registry.all()} - {"*"}),
        "events": [],
        "next_url": None,
        "error": None,
        "cursor": args.get("cursor") or None,
    }
    status = 200
    with service.db.transaction() as session:
        context["counts"] = store.bounded_status_counts(session)
        context["total_estimate"] = store.estimated_event_total(session)
        try:
            filters = parse_filters(args)
            page = store.list_events(session, filters, limit=PAGE_SIZE, cursor=context["cursor"])
        except (FilterError, store.CursorError) as exc:
            context["error"] = str(exc)
            status = 400
        else:
            context["events"] = page.events
            if page.next_cursor:
                context["next_url"] = url_for("admin.events", **raw, cursor=page.next_cursor)
    context["count_cap"] = store.STATUS_COUNT_CAP
    context["live_url"] = url_for("admin.events_live", **raw, **_cursor_arg(context["cursor"]))
    return context, status


def _cursor_arg(cursor: str | None) -> dict[str, Any]:
    return {"cursor": cursor} if cursor else {}


def _load_event(session: Session, event_id: str) -> EventRow:
    row = store.get_event(session, event_id)
    if row is None:
        raise ApiError(404, f"No event with id {event_id!r}.", code="event_not_found")
    return row


def _detail_context(
    session: Session, row: EventRow, revealed: frozenset[str] = frozenset()
) -> dict[str, Any]:
    service = current_service()
    rules = masking.MaskRules.parse(service.settings.pii_mask_fields)
    masked = masking.mask(row.payload, rules, keep=revealed)
    return {
        "event": row,
        "payload_html": highlight(
            masked.value,
            masked=frozenset(masked.pointers),
            revealed=revealed,
            reveal_form="reveal-form",
        ),
        "masked_count": len(masked.pointers),
        "headers": masking.display_headers(row.headers),
        "states": store.handler_states_for(session, row.id),
        "attempts": store.attempts_for(session, row.id),
        "handlers": [h.name for h in service.registry.for_type(row.type)],
    }


@bp.app_template_filter("utc")
def _utc(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


@bp.app_template_filter("duration")
def _duration(attempt: store.AttemptRow) -> str:
    if attempt.finished_at is None:
        return "running"
    millis = (attempt.finished_at - attempt.started_at).total_seconds() * 1000
    return f"{millis:.0f} ms" if millis >= 10 else f"{millis:.1f} ms"


# --- login ----------------------------------------------------------------------------------


@bp.get("/")
@login_required
def index() -> ResponseReturnValue:
    return redirect(url_for("admin.events"))


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    service = current_service()
    if not service.settings.admin_login_enabled:
        raise ApiError(
            404,
            "The admin page is disabled: set ADMIN_USERNAME and ADMIN_PASSWORD_HASH.",
            code="admin_disabled",
        )
    if "token" in request.args:
        return _login_with_link(request.args["token"])
    # `make run` with no admin configured: only its printed link logs in.
    link_only = not service.settings.admin_password_enabled
    form = LoginForm()
    if request.method == "POST":
        username = (form.username.data or "").strip()
        if form.validate_on_submit() and check_credentials(
            service.settings, username, form.password.data or ""
        ):
            start_session(username)
            with service.db.transaction() as session:
                _record(session, "admin.login")
            return redirect(safe_next(request.args.get("next")))
        with service.db.transaction() as session:
            audit.record(
                session,
                actor="anonymous",
                action="admin.login_failed",
                details={"username": username[:255]},
                remote_addr=request.remote_addr,
            )
        return render_template("admin/login.html", form=form, failed=True, link_only=link_only), 401
    if session_admin() is not None:
        return redirect(safe_next(request.args.get("next")))
    return render_template("admin/login.html", form=form, failed=False, link_only=link_only)


def _login_with_link(token: str) -> ResponseReturnValue:
    """`make run`'s printed link (webhooks_app/admin/login_link.py)."""
    service = current_service()
    name = service.settings.admin_name
    if name is None or not login_link.token_matches(service.settings, token):
        with service.db.transaction() as session:
            audit.record(
                session,
                actor="anonymous",
                action="admin.login_failed",
                details={"method": "link"},
                remote_addr=request.remote_addr,
            )
        link_only = not service.settings.admin_password_enabled
        page = render_template(
            "admin/login.html", form=LoginForm(), failed=True, link_only=link_only
        )
        return page, 401
    start_session(name)
    with service.db.transaction() as session:
        _record(session, "admin.login", method="link")
    return redirect(url_for("admin.events"))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    if session_admin() is not None:
        with current_service().db.transaction() as session:
            _record(session, "admin.logout")
    end_session()
    return redirect(url_for("admin.login"))


# --- events ---------------------------------------------------------------------------------


@bp.get("/events")
@login_required
def events() -> ResponseReturnValue:
    context, status = _list_context(request.args)
    return render_template("admin/events.html", **context), status


@bp.get("/events/live")
@login_required
def events_live() -> ResponseReturnValue:
    context, status = _list_context(request.args)
    return render_template("admin/_events_live.html", **context), status


@bp.get("/events/<event_id>")
@login_required
def event_detail(event_id: str) -> ResponseReturnValue:
    with current_service().db.transaction() as session:
        context = _detail_context(session, _load_event(session, event_id))
        return render_template("admin/event.html", **context)


@bp.get("/events/<event_id>/live")
@login_required
def event_live(event_id: str) -> ResponseReturnValue:
    with current_service().db.transaction() as session:
        context = _detail_context(session, _load_event(session, event_id))
        return render_template("admin/_event_live.html", **context)


@bp.post("/events/<event_id>/reveal")
@login_required
def reveal_field(event_id: str) -> ResponseReturnValue:
    pointer = request.form.get("pointer", "")
    with current_service().db.transaction() as session:
        row = _load_event(session, event_id)
        rules = masking.MaskRules.parse(current_service().settings.pii_mask_fields)
        if pointer not in masking.mask(row.payload, rules).pointers:
            raise ApiError(400, "That field is not a masked field of this event.", code="bad_field")
        _record(session, "event.reveal_field", event_id, field=pointer)
        context = _detail_context(session, row, revealed=frozenset({pointer}))
        return render_template("admin/event.html", revealed=pointer, **context)


@bp.post("/events/<event_id>/replay")
@login_required
def replay_event(event_id: str) -> ResponseReturnValue:
    service = current_service()
    handler = request.form.get("handler") or None
    try:
        with service.db.transaction() as session:
            done = replay.reset_for_replay(
                session,
                event_id,
                registry=service.registry,
                settings=service.settings,
                handler=handler,
            )
            _record(session, "event.replay", event_id, handlers=list(done.handlers))
    except replay.ReplayError as exc:
        raise ApiError(exc.status, exc.message, code=exc.code, param=exc.param) from None
    flash(f"Replay queued: {', '.join(done.handlers)}.", "ok")
    return redirect(url_for("admin.event_detail", event_id=event_id))


@bp.post("/events/<event_id>/delete")
@login_required
def delete_event(event_id: str) -> ResponseReturnValue:
    with current_service().db.transaction() as session:
        row = store.delete_event(session, event_id)
        if row is None:
            raise ApiError(404, f"No event with id {event_id!r}.", code="event_not_found")
        _record(session, "event.delete", event_id, type=row.type, data_id=row.data_id)
    flash(f"Deleted event {event_id}.", "ok")
    return redirect(url_for("admin.events"))


@bp.post("/replay")
@login_required
def bulk_replay() -> ResponseReturnValue:
    """Replay the failed/dead events a filter selects: a confirmation page, then the action."""
    service = current_service()
    raw = _filter_args(request.form)
    try:
        filters = parse_filters(request.form)
    except FilterError as exc:
        raise ApiError(400, str(exc), code="invalid_filter") from None
    with service.db.transaction() as session:
        ids = replay.replayable_ids(session, filters)
        if request.form.get("confirm") != "yes":
            return render_template(
                "admin/bulk_confirm.html",
                filters=raw,
                ids=ids,
                limit=replay.BULK_REPLAY_LIMIT,
            )
        result = replay.replay_many(
            session, ids, registry=service.registry, settings=service.settings
        )
        _record(
            session,
            "events.bulk_replay",
            None,
            filters=raw,
            replayed=len(result.replayed),
            skipped=len(result.skipped),
        )
    message = f"Replay queued for {len(result.replayed)} events."
    if result.skipped:
        message += f" {len(result.skipped)} skipped (running or without handlers)."
    flash(message, "ok")
    return redirect(url_for("admin.events", **raw))


# --- audit log, subscriptions ---------------------------------------------------------------


@bp.get("/audit")
@login_required
def audit_log() -> ResponseReturnValue:
    args = request.args
    error = None
    entries: list[store.AuditRow] = []
    next_url = None
    status = 200
    with current_service().db.transaction() as session:
        try:
            start = audit.parse_bound(args.get("start"), "start", end=False)
            end = audit.parse_bound(args.get("end"), "end", end=True)
            page = audit.list_entries(
                session, start=start, end=end, limit=100, cursor=args.get("cursor") or None
            )
        except (audit.RangeError, store.CursorError) as exc:
            error, status = str(exc), 400
        else:
            entries = page.entries
            if page.next_cursor:
                kept: dict[str, Any] = {k: args[k] for k in ("start", "end") if args.get(k)}
                next_url = url_for("admin.audit_log", **kept, cursor=page.next_cursor)
    return (
        render_template(
            "admin/audit.html",
            entries=entries,
            next_url=next_url,
            error=error,
            start=args.get("start", ""),
            end=args.get("end", ""),
        ),
        status,
    )


# SUBSCRIPTIONS (issue 3): this stub stands where the subscriptions page goes once that
# feature is merged; its nav entry in base.html is commented out until then.
@bp.get("/subscriptions")
@login_required
def subscriptions() -> Response:
    return Response(render_template("admin/subscriptions.html"), status=501, mimetype="text/html")


@bp.app_template_global("current_admin")
def _current_admin() -> str | None:
    return session_admin()
