"""CSRF, login throttling, security headers and session cookies: well-kept libraries, set up.

* Flask-WTF's CSRFProtect checks every state-changing request app-wide; the webhook endpoints
  are exempt (the provider signs them), and the JSON API checks it itself for cookie-
  authenticated calls only (a bearer token cannot be sent by another site).
* Flask-Limiter counts failed logins per client address (``web.client_address``), in Redis
  when the broker is Redis (shared by every web process), in memory otherwise.
* Flask-Talisman sets the CSP (no inline script), frame-ancestors 'none', nosniff, HSTS on
  HTTPS requests and the Referrer-Policy.
"""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from flask import Blueprint, Flask, Response, request
from flask.sessions import SecureCookieSessionInterface
from flask.typing import RouteCallable
from flask_limiter import Limiter
from flask_talisman import Talisman
from flask_wtf.csrf import CSRFProtect

from webhooks_app.config import Settings
from webhooks_app.web import client_address

CONTENT_SECURITY_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
SESSION_LIFETIME = timedelta(hours=8)


class HttpsAwareSessionInterface(SecureCookieSessionInterface):
    """``Secure`` session cookies whenever the request came over HTTPS (directly or through
    the proxy's X-Forwarded-Proto), so plain-HTTP local runs can still log in."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def init_security(app: Flask, settings: Settings, *, csrf_exempt: list[Blueprint]) -> Limiter:
    app.session_interface = HttpsAwareSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME="aw_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        # Tokens live as long as the session; a page left open for an hour still works.
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_HEADERS=["X-CSRFToken"],
    )
    csrf = CSRFProtect(app)
    for blueprint in csrf_exempt:
        csrf.exempt(blueprint)

    Talisman(
        app,
        force_https=False,  # the platform's router terminates TLS and redirects
        session_cookie_secure=False,  # decided per request above
        session_cookie_http_only=True,
        session_cookie_samesite="Lax",
        strict_transport_security=True,
        strict_transport_security_max_age=365 * 24 * 3600,
        frame_options="DENY",
        referrer_policy="same-origin",
        content_security_policy=CONTENT_SECURITY_POLICY,
        x_content_type_options=True,
    )

    redis = settings.broker_url.startswith(("redis://", "rediss://"))
    return Limiter(
        # The real client (see TRUSTED_PROXIES), never an address a client wrote itself.
        client_address,
        app=app,
        storage_uri=settings.broker_url if redis else "memory://",
        key_prefix="assisters-webhooks:limits",
        strategy="fixed-window",
        # A Redis outage must not lock the operator out: count in memory meanwhile.
        in_memory_fallback_enabled=True,
        headers_enabled=True,
    )


def throttle_failed_logins(app: Flask, limiter: Limiter, limit: str, endpoint: str) -> None:
    """Only failed logins (answered 401) count; once over ``limit`` every login gets 429."""
    throttled = limiter.limit(
        limit,
        methods=["POST"],
        deduct_when=lambda response: response.status_code == 401,
        error_message="Too many failed logins; wait a minute and try again.",
    )(app.view_functions[endpoint])
    app.view_functions[endpoint] = cast(RouteCallable, throttled)


def no_store(response: Response) -> Response:
    """Admin pages hold event data: never cached by a browser or proxy."""
    response.headers["Cache-Control"] = "no-store"
    return response
