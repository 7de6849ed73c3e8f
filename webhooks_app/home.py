"""``GET /``: the admin page when it is on, otherwise a short page naming the endpoints."""

from __future__ import annotations

from flask import Blueprint, redirect, url_for
from flask.typing import ResponseReturnValue

from webhooks_app.service import current_service

bp = Blueprint("home", __name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Assisters Webhooks</title></head>
<body>
<h1>Assisters Webhooks</h1>
<p>This service receives Assisters API webhook events and runs your handlers.</p>
<ul>
<li><code>POST /webhooks/events</code>: where the Assisters API delivers events (signed).</li>
<li><code>GET /healthz</code>, <code>GET /readyz</code>: liveness and readiness.</li>
<li><code>/api/events</code>: the events API
(<code>Authorization: Bearer $ADMIN_API_TOKEN</code>).</li>
<li><code>/admin</code>: the admin page, once <code>ADMIN_USERNAME</code> and
<code>ADMIN_PASSWORD_HASH</code> are set.</li>
<li><code>GET /metrics</code>: Prometheus metrics (<code>METRICS_TOKEN</code>).</li>
</ul>
</body></html>
"""


@bp.get("/")
def index() -> ResponseReturnValue:
    if current_service().settings.admin_login_enabled:
        return redirect(url_for("admin.index"))
    return _PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}
