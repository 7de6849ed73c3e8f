"""The admin page (/admin): browse, search and replay the event history, safely."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, render_template

from webhooks_app.admin import bidi
from webhooks_app.admin.security import init_security, no_store, throttle_failed_logins
from webhooks_app.config import Settings
from webhooks_app.errors import ApiError, use_html_errors

bp = Blueprint(
    "admin",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
bp.after_request(no_store)


def init_app(app: Flask, settings: Settings, *, csrf_exempt: list[Blueprint]) -> None:
    from webhooks_app.admin import views  # noqa: F401 - registers the routes on bp

    bidi.init_app(app)  # before any template is compiled: finalize is compiled in
    limiter = init_security(app, settings, csrf_exempt=csrf_exempt)
    app.register_blueprint(bp)
    throttle_failed_logins(app, limiter, settings.admin_login_limit, "admin.login")
    use_html_errors(app, "/admin", _error_page)


def _error_page(error: ApiError) -> Response:
    response = Response(
        render_template("admin/error.html", error=error), status=error.status, mimetype="text/html"
    )
    response.headers.update(error.headers)
    return no_store(response)
