"""Who is logged in: one operator, credentials from ADMIN_USERNAME / ADMIN_PASSWORD_HASH.

The session is Flask's signed cookie. It carries the admin's name, a fresh random id per login
(so logging in never continues an earlier session) and a fingerprint of the password hash, so
changing ADMIN_PASSWORD_HASH ends every session issued before.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import redirect, request, session, url_for
from flask.typing import ResponseReturnValue

from webhooks_app.config import Settings
from webhooks_app.errors import ApiError
from webhooks_app.service import current_service

P = ParamSpec("P")
R = TypeVar("R")

POLL_HEADER = "X-Admin-Poll"
_hasher = PasswordHasher()
# Verified when the username is wrong, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def _fingerprint(settings: Settings) -> str:
    # The login link's token stands for the password: a new `make run` ends older sessions.
    credential = settings.admin_password_hash or settings.admin_login_token or ""
    return hashlib.sha256(credential.encode()).hexdigest()[:16]


def check_credentials(settings: Settings, username: str, password: str) -> bool:
    if settings.admin_username is None or settings.admin_password_hash is None:
        return False
    name_ok = hmac.compare_digest(username.encode(), settings.admin_username.encode())
    try:
        _hasher.verify(settings.admin_password_hash if name_ok else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False
    return name_ok


def start_session(username: str) -> None:
    session.clear()  # drops any earlier session state, CSRF token included
    session.permanent = True
    session["admin"] = username
    session["sid"] = secrets.token_urlsafe(16)
    session["pw"] = _fingerprint(current_service().settings)


def end_session() -> None:
    session.clear()


def session_admin() -> str | None:
    """The logged-in admin's name, or None."""
    settings = current_service().settings
    name = session.get("admin")
    if not settings.admin_login_enabled or name != settings.admin_name:
        return None
    if session.get("pw") != _fingerprint(settings):
        return None
    return str(name)


def login_required(view: Callable[P, ResponseReturnValue]) -> Callable[P, ResponseReturnValue]:
    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        if not current_service().settings.admin_login_enabled:
            raise ApiError(
                404,
                "The admin page is disabled: set ADMIN_USERNAME and ADMIN_PASSWORD_HASH.",
                code="admin_disabled",
            )
        if session_admin() is None:
            if request.headers.get(POLL_HEADER):
                raise ApiError(401, "Your session has ended; log in again.", code="login_required")
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper


def safe_next(target: str | None) -> str:
    """Only a path inside the admin area: never an open redirect to another site."""
    if target and target.startswith("/admin") and "//" not in target and "\\" not in target:
        return target
    return url_for("admin.events")
