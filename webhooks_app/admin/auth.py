"""Who is logged in: one operator, credentials from ADMIN_USERNAME / ADMIN_PASSWORD_HASH.

The session is Flask's signed cookie. It carries the admin's name, a random session id and a
fingerprint of the password hash (changing ADMIN_PASSWORD_HASH ends every session issued
before). The id is also held server-side (``admin_sessions``, by its SHA-256): logging out
deletes it, so a copied cookie stops working at once. A session starts only together with its
audit entry, in one transaction: a login that cannot be recorded does not happen.

Every way of logging in ends in ``log_in``; every way out in ``log_out``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar, cast

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import g, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import delete, insert, select

from webhooks_app import audit, store
from webhooks_app.actions import Operator
from webhooks_app.admin.security import SESSION_LIFETIME
from webhooks_app.config import Settings
from webhooks_app.errors import ApiError
from webhooks_app.service import current_service
from webhooks_app.web import client_address

P = ParamSpec("P")
R = TypeVar("R")

POLL_HEADER = "X-Admin-Poll"
ANONYMOUS = "anonymous"
_hasher = PasswordHasher()
# Verified when the username is wrong, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))
_NOT_LOOKED_UP = object()


def _fingerprint(settings: Settings) -> str:
    # The login link's token stands for the password: a new `make run` ends older sessions.
    credential = settings.admin_password_hash or settings.admin_login_token or ""
    return hashlib.sha256(credential.encode()).hexdigest()[:16]


def _id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def check_credentials(settings: Settings, username: str, password: str) -> bool:
    if settings.admin_username is None or settings.admin_password_hash is None:
        return False
    name_ok = hmac.compare_digest(username.encode(), settings.admin_username.encode())
    try:
        _hasher.verify(settings.admin_password_hash if name_ok else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False
    return name_ok


def log_in(username: str, *, method: str = "password") -> None:
    """Start a session for ``username`` (already authenticated by ``method``) and record it.

    The session row and the audit entry commit together, and only then does the cookie get
    the session: if the transaction fails the response carries no session at all.
    """
    service = current_service()
    session_id = secrets.token_urlsafe(32)
    now = store.utcnow()
    with service.db.transaction() as db:
        # Expired sessions go as new ones come: the table stays as small as the sessions alive.
        db.execute(delete(store.admin_sessions).where(store.admin_sessions.c.expires_at <= now))
        db.execute(
            insert(store.admin_sessions).values(
                id_hash=_id_hash(session_id),
                username=username,
                created_at=now,
                expires_at=now + SESSION_LIFETIME,
            )
        )
        audit.record(
            db,
            actor=username,
            action="admin.login",
            details={"method": method},
            remote_addr=client_address(),
        )
    session.clear()  # drops any earlier session state, CSRF token included
    session.permanent = True
    session["admin"] = username
    session["sid"] = session_id
    session["pw"] = _fingerprint(service.settings)
    g.admin_session = username


def record_failed_login(username: str, *, method: str = "password") -> None:
    with current_service().db.transaction() as db:
        audit.record(
            db,
            actor=ANONYMOUS,
            action="admin.login_failed",
            details={"username": username[:255], "method": method},
            remote_addr=client_address(),
        )


def log_out() -> None:
    """End this browser's session server-side (recorded when it was a live one)."""
    admin = session_admin()
    session_id = session.get("sid")
    if isinstance(session_id, str):
        with current_service().db.transaction() as db:
            db.execute(
                delete(store.admin_sessions).where(
                    store.admin_sessions.c.id_hash == _id_hash(session_id)
                )
            )
            if admin is not None:
                audit.record(db, actor=admin, action="admin.logout", remote_addr=client_address())
    session.clear()
    g.admin_session = None


def session_admin() -> str | None:
    """The logged-in admin's name, or None (looked up once per request)."""
    cached = g.get("admin_session", _NOT_LOOKED_UP)
    if cached is not _NOT_LOOKED_UP:
        return cast(str | None, cached)
    found = _lookup_session()
    g.admin_session = found
    return found


def _lookup_session() -> str | None:
    service = current_service()
    settings = service.settings
    name, session_id = session.get("admin"), session.get("sid")
    if not settings.admin_login_enabled or name != settings.admin_name:
        return None
    if session.get("pw") != _fingerprint(settings) or not isinstance(session_id, str):
        return None
    rows = store.admin_sessions.c
    with service.db.transaction() as db:
        alive = db.execute(
            select(rows.username).where(
                rows.id_hash == _id_hash(session_id), rows.expires_at > store.utcnow()
            )
        ).scalar_one_or_none()
    return str(name) if alive == name else None


def operator() -> Operator:
    """Who acts in this request, for the audit log."""
    return Operator(session_admin() or ANONYMOUS, client_address())


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
