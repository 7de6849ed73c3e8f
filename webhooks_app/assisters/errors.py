"""Provider errors, typed by status and built from the seed's format:
``{"error": {"type", "message", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

import httpx


class AssistersError(Exception):
    """An answer the provider refused with; ``str(err)`` is the provider's message."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,  # the seed's field name
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, type={self.type!r}, "
            f"code={self.code!r}, param={self.param!r}, message={self.message!r})"
        )


class BadRequest(AssistersError):
    """400: the request is wrong; retrying cannot help."""


class Unauthorized(AssistersError):
    """401: the API key is missing, wrong or deleted."""


class NotFound(AssistersError):
    """404: no such model, subscription or key."""


class RateLimited(AssistersError):
    """429 after every backoff the seed asks for."""

    def __init__(self, message: str, *, retry_after: float | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class ServerError(AssistersError):
    """5xx after the retries the seed asks for."""


class ConnectionFailed(AssistersError):
    """No answer at all (connection refused, timeout) after the retries."""


_BY_STATUS: dict[int, type[AssistersError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    429: RateLimited,
}


def error_from_response(
    response: httpx.Response, *, retry_after: float | None = None
) -> AssistersError:
    """The typed error for a non-2xx answer, whether or not its body follows the seed."""
    fields: dict[str, Any] = {}
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        error = None
    if isinstance(error, dict):
        fields = {
            name: str(error[name]) if error.get(name) is not None else None
            for name in ("type", "message", "param", "code")
        }
    message = fields.pop("message", None) or (
        f"The Assisters API answered {response.status_code} {response.reason_phrase}."
    )
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = ServerError if response.status_code >= 500 else AssistersError
    if cls is RateLimited:
        return RateLimited(message, retry_after=retry_after, status=response.status_code, **fields)
    return cls(message, status=response.status_code, **fields)
