"""The seed's error format, ``{"error": {"type", "message", "param", "code"}}``, everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import BadHost, HTTPException, SecurityError

# Error types as the provider names them; the HTTP status picks one when a route did not.
_TYPE_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
}


class ApiError(Exception):
    """An answer in the seed's error format. Raise it anywhere in a request."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        type: str | None = None,  # the seed's field name
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPE_BY_STATUS.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "type": self.type,
                "message": self.message,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid_host() -> ApiError:
    return ApiError(
        400,
        "The Host header is not a valid host name this service answers to (TRUSTED_HOSTS).",
        code="invalid_host",
        param="Host",
    )


def error_response(error: ApiError) -> Response:
    response = jsonify(error.body())
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


HtmlErrorPage = Callable[["ApiError"], Response]


def use_html_errors(app: Flask, prefix: str, render: HtmlErrorPage) -> None:
    """Answer errors under ``prefix`` (a page area, e.g. /admin) with ``render``, not JSON."""
    app.extensions.setdefault("errors.html", []).append((prefix, render))


def respond(error: ApiError) -> Response:
    for prefix, render in current_app.extensions.get("errors.html", []):
        if request.path == prefix or request.path.startswith(prefix + "/"):
            page: Response = render(error)
            return page
    return error_response(error)


def _from_http_exception(exc: HTTPException) -> ApiError:
    status = exc.code or 500
    code = (exc.name or "error").lower().replace(" ", "_")
    headers = {k: v for k, v in exc.get_headers() if k.lower() in {"allow", "retry-after"}}
    return ApiError(status, exc.description or exc.name, code=code, headers=headers)


DATABASE_ERRORS = (
    sa_exc.DataError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
)


def database_error(exc: Exception) -> ApiError:
    """The answer to a database error (one of ``DATABASE_ERRORS``)."""
    if isinstance(exc, sa_exc.DataError):
        # e.g. a NUL character, which PostgreSQL text and JSONB cannot hold.
        return ApiError(
            400, "The event contains a value the database cannot store.", code="unstorable_value"
        )
    return ApiError(
        503,
        "The event store is unavailable; nothing was stored. Retry later.",
        code="service_unavailable",
        headers={"Retry-After": "5"},
    )


def register_error_handlers(app: Flask) -> None:
    """JSON errors for every route, so no client ever gets an HTML error page from the API;
    page areas registered with ``use_html_errors`` get readable HTML instead."""
    app.register_error_handler(ApiError, respond)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if isinstance(exc, BadHost | SecurityError):
            # Always JSON: with no usable Host there is no URL adapter, so no page can be built.
            return error_response(invalid_host())
        if exc.code == 413:
            return respond(
                ApiError(
                    413,
                    "The request body is larger than MAX_BODY_BYTES.",
                    code="body_too_large",
                )
            )
        return respond(_from_http_exception(exc))

    @app.errorhandler(sa_exc.DataError)
    def _unstorable(exc: sa_exc.DataError) -> Response:
        return respond(database_error(exc))

    @app.errorhandler(sa_exc.OperationalError)
    @app.errorhandler(sa_exc.InterfaceError)
    @app.errorhandler(sa_exc.TimeoutError)
    def _database_unavailable(exc: Exception) -> Response:
        app.logger.warning("database unavailable: %s", type(exc).__name__)
        return respond(database_error(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        app.logger.exception("unhandled error")
        return respond(ApiError(500, "Internal server error.", code="internal_error"))
