"""The admin page's routes: thin, over the store, replay, masking and audit modules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session
from werkzeug.datastructures import MultiDict

from webhooks_app import actions, audit, masking, params, replay, store
from webhooks_app.admin import bp, login_link, presenting
from webhooks_app.admin.auth import (
    POLL_HEADER,
    check_credentials,
    log_in,
    log_out,
    login_required,
    operator,
    record_failed_login,
    safe_next,
    session_admin,
)
from webhooks_app.admin.forms import LoginForm
from webhooks_app.admin.jsonhtml import highlight
from webhooks_app.assisters import AssistersError
from webhooks_app.errors import DATABASE_ERRORS, ApiError
from webhooks_app.secretbox import SecretBoxError
from webhooks_app.service import current_service
from webhooks_app.store import EventRow, EventStatus
from webhooks_app.subscriptions import SubscriptionError

PAGE_SIZE = 50


# --- helpers --------------------------------------------------------------------------------


def _list_context(args: MultiDict[str, str]) -> tuple[dict[str, Any], int]:
    service = current_service()
    raw = params.filter_args(args)
    context: dict[str, Any] = {
        "filters": raw,
        "statuses": [s.value for s in EventStatus],
        "types": sorted({h.event_type for h in service.registry.all()} - {"*"}),
        "events": [],
        "summaries": {},
        "next_url": None,
        "error": None,
        "cursor": None,
    }
    status = 200
    with service.db.transaction() as session:
        context["counts"] = store.bounded_status_counts(session)
        context["total_estimate"] = store.estimated_event_total(session)
        try:
            filters = params.event_filter(args)
            context["cursor"] = params.cursor(args)
            page = actions.list_events(session, filters, limit=PAGE_SIZE, cursor=context["cursor"])
        except (params.ParamError, actions.ActionError) as exc:
            context["error"] = exc.message
            status = 400
        else:
            context["events"] = page.events
            context["summaries"] = store.handler_summaries(session, [e.id for e in page.events])
            if page.next_cursor:
                context["next_url"] = url_for("admin.events", **raw, cursor=page.next_cursor)
    context["count_cap"] = store.STATUS_COUNT_CAP
    context["live_url"] = url_for("admin.events_live", **raw, **_cursor_arg(context["cursor"]))
    return context, status


def _cursor_arg(cursor: str | None) -> dict[str, Any]:
    return {"cursor": cursor} if cursor else {}


def _detail_context(
    session: Session, row: EventRow, revealed: frozenset[str] = frozenset()
) -> dict[str, Any]:
    service = current_service()
    masked = masking.mask(row.payload, actions.mask_rules(service), keep=revealed)
    attempts = store.attempts_for(session, row.id)
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
        "attempts": attempts,
        "runs": presenting.group_by_run(attempts),
        "handlers": [h.name for h in service.registry.for_type(row.type)],
    }


@bp.app_template_filter("utc")
def _utc(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


@bp.app_template_filter("ago")
def _ago(moment: datetime | None) -> str:
    return "" if moment is None else presenting.relative(moment, datetime.now(UTC))


@bp.app_template_filter("iso")
def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


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
            log_in(username)
            return redirect(safe_next(request.args.get("next")))
        record_failed_login(username)
        return render_template("admin/login.html", form=form, failed=True, link_only=link_only), 401
    if session_admin() is not None:
        return redirect(safe_next(request.args.get("next")))
    return render_template("admin/login.html", form=form, failed=False, link_only=link_only)


def _login_with_link(token: str) -> ResponseReturnValue:
    """`make run`'s printed link (webhooks_app/admin/login_link.py)."""
    service = current_service()
    name = service.settings.admin_name
    if name is None or not login_link.token_matches(service.settings, token):
        record_failed_login("", method="link")
        link_only = not service.settings.admin_password_enabled
        page = render_template(
            "admin/login.html", form=LoginForm(), failed=True, link_only=link_only
        )
        return page, 401
    log_in(name, method="link")
    return redirect(url_for("admin.events"))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    log_out()
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
    if not request.headers.get(POLL_HEADER) and not request.args:
        # A browser opening the event whose id is "live" (the page's poll sends the header).
        with current_service().db.transaction() as session:
            if actions.find_event(session, "live") is not None:
                return _detail_page(session, "live")
    context, status = _list_context(request.args)
    return render_template("admin/_events_live.html", **context), status


def _detail_page(session: Session, event_id: str) -> str:
    context = _detail_context(session, actions.load_event(session, event_id))
    return render_template("admin/event.html", **context)


@bp.get("/events/<event_id:event_id>", merge_slashes=False)
@login_required
def event_detail(event_id: str) -> ResponseReturnValue:
    with current_service().db.transaction() as session:
        return _detail_page(session, event_id)


@bp.get("/events/<event_id:event_id>/live", merge_slashes=False)
@login_required
def event_live(event_id: str) -> ResponseReturnValue:
    with current_service().db.transaction() as session:
        row = actions.find_event(session, event_id)
        if row is None and actions.find_event(session, event_id + "/live") is not None:
            # The rule with the action segment won, but the id itself ends in "/live".
            return _detail_page(session, event_id + "/live")
        context = _detail_context(session, actions.load_event(session, event_id))
        return render_template("admin/_event_live.html", **context)


@bp.post("/events/<event_id:event_id>/reveal", merge_slashes=False)
@login_required
def reveal_field(event_id: str) -> ResponseReturnValue:
    pointer = request.form.get("pointer", "")
    done = actions.reveal_field(current_service(), operator(), event_id, pointer)
    with current_service().db.transaction() as session:
        context = _detail_context(session, done.event, revealed=frozenset({done.field}))
        return render_template("admin/event.html", revealed=done.field, **context)


@bp.post("/events/<event_id:event_id>/replay", merge_slashes=False)
@login_required
def replay_event(event_id: str) -> ResponseReturnValue:
    handler, scope = _replay_choice(request.form)
    done = actions.replay(
        current_service(),
        operator(),
        event_id,
        handler=handler,
        only_failed=scope is replay.Scope.FAILED,
    )
    flash(f"Replay queued: {', '.join(done.handlers)}.", "ok")
    return redirect(url_for("admin.event_detail", event_id=event_id))


# The detail page's one select: "failed", "all", or "handler:<name>" (a prefix, so that no
# handler name can be taken for a choice).
HANDLER_CHOICE = "handler:"


def _replay_choice(form: MultiDict[str, str]) -> tuple[str | None, replay.Scope]:
    raw = form.get("handlers") or ""
    if raw.startswith(HANDLER_CHOICE):
        return raw[len(HANDLER_CHOICE) :] or None, replay.Scope.ALL
    handler = form.get("handler") or None
    try:
        return handler, replay.parse_scope(raw)
    except replay.ReplayError as exc:
        raise ApiError(exc.status, exc.message, code=exc.code, param=exc.param) from None


@bp.post("/events/<event_id:event_id>/delete", merge_slashes=False)
@login_required
def delete_event(event_id: str) -> ResponseReturnValue:
    actions.delete_event(current_service(), operator(), event_id)
    flash(f"Deleted event {event_id}.", "ok")
    return redirect(url_for("admin.events"))


@bp.post("/replay")
@login_required
def bulk_replay() -> ResponseReturnValue:
    """Replay the failed/dead events a filter selects: a confirmation page, then the action."""
    service = current_service()
    raw = params.filter_args(request.form)
    filters = params.event_filter(request.form)
    if request.form.get("confirm") != "yes":
        return render_template(
            "admin/bulk_confirm.html",
            filters=raw,
            ids=actions.preview_bulk_replay(service, filters),
            limit=actions.BULK_REPLAY_LIMIT,
        )
    result = actions.bulk_replay(service, operator(), filters, filter_args=raw, only_failed=True)
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
            start = params.moment(args, "start")
            end = params.moment(args, "end", end=True)
            page = actions.list_audit(
                session, start=start, end=end, limit=100, cursor=params.cursor(args)
            )
        except (params.ParamError, actions.ActionError) as exc:
            error, status = exc.message, 400
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


@bp.get("/subscriptions")
@login_required
def subscriptions() -> ResponseReturnValue:
    subs = current_service().subscriptions
    return render_template(
        "admin/subscriptions.html",
        subscriptions=subs.list_stored(),
        rotations=subs.rotations(open_only=True),
        api_keys=subs.api_keys(),
    )


ROTATIONS = {"subscription": "rotate", "api_key": "rotate_api_key"}


@bp.post("/subscriptions/rotate")
@login_required
def rotate_now() -> ResponseReturnValue:
    """Start (or move on) a rotation, as `flask subscriptions rotate` / `keys rotate` would."""
    service = current_service()
    kind = request.form.get("kind") or "subscription"
    if kind not in ROTATIONS:
        raise ApiError(400, "kind must be subscription or api_key.", code="invalid_parameter")
    who = operator()
    try:
        messages = getattr(service.subscriptions, ROTATIONS[kind])()
    except (SubscriptionError, AssistersError, SecretBoxError) as exc:
        action, details, shown = f"{kind}.rotate_failed", {"error": str(exc)}, None
        flash(f"Rotation not started: {exc}", "error")
    else:
        action, details, shown = f"{kind}.rotate", {"outcome": messages}, messages
    with service.db.transaction() as session:
        audit.record(
            session, actor=who.name, action=action, details=details, remote_addr=who.remote_addr
        )
    for message in shown or ():
        flash(message, "ok")
    return redirect(url_for("admin.subscriptions"))


@bp.app_template_global("current_admin")
def _current_admin() -> str | None:
    try:
        return session_admin()
    except DATABASE_ERRORS:
        return None  # the error page of a database outage must still render
