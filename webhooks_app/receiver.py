"""The provider-facing endpoints: event delivery and the verification challenge."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from flask import Blueprint, Response, jsonify, request
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import SecurityError
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_host

from webhooks_app import metrics
from webhooks_app.engine import Stored
from webhooks_app.errors import DATABASE_ERRORS, ApiError, database_error, invalid_host
from webhooks_app.events import EnvelopeError
from webhooks_app.intake import Received
from webhooks_app.logs import log_event
from webhooks_app.service import Service
from webhooks_app.signatures import VerificationError

log = logging.getLogger(__name__)

bp = Blueprint("receiver", __name__)

MAX_CHALLENGE_LENGTH = 512
PATH = "/webhooks/events"

WSGIEnvironment = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]


class DeliveryRoute:
    """``/webhooks/events``: the delivery endpoint, answered without Flask's request machinery.

    WSGI middleware in front of the Flask app, and the only route of its path (every method,
    every outcome): a delivery is the service's hot path, and Flask's per-request work (the
    app and request contexts, the extensions' hooks, URL matching) cost several times what
    verifying, parsing and storing one does (bench/HISTORY.md). Everything else goes to Flask.
    Answers are in the provider's error format, as Flask's are.
    """

    def __init__(self, wsgi_app: WSGIApp, service: Service) -> None:
        self._next = wsgi_app
        self._intake = service.intake
        self._max_body = service.settings.max_body_bytes
        self._trusted_hosts = list(service.settings.trusted_hosts) or None

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return self._next(environ, start_response)
        started = time.perf_counter()
        headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
        try:
            status, body = 200, self._receive(environ)
        except ApiError as refused:
            status, body = refused.status, refused.body()
            headers.extend(refused.headers.items())
        except Exception:
            log.exception("unexpected error receiving a delivery")
            failed = ApiError(500, "The delivery could not be handled.", code="internal_error")
            status, body = failed.status, failed.body()
        finally:
            metrics.observe_intake(time.perf_counter() - started)
        encoded = orjson.dumps(body)
        headers.append(("Content-Length", str(len(encoded))))
        start_response(f"{status} {HTTP_STATUS_CODES.get(status, '')}", headers)
        return [encoded]

    def _receive(self, environ: WSGIEnvironment) -> dict[str, str]:
        try:
            # As Flask's routing would: an untrusted name, or one that is no host name at all.
            _host_name(get_host(environ, self._trusted_hosts)).encode("idna")
        except (SecurityError, UnicodeError):
            raise invalid_host() from None
        if environ["REQUEST_METHOD"] != "POST":
            raise ApiError(
                405,
                "Deliveries are POSTed.",
                code="method_not_allowed",
                headers={"Allow": "POST"},
            )
        mimetype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if not _is_json(mimetype):
            metrics.event_received("unknown", "invalid")
            raise ApiError(
                415,
                "Send the event as application/json.",
                code="unsupported_media_type",
                param="Content-Type",
            )
        body = _read_body(environ, self._max_body)
        request_headers = EnvironHeaders(environ)
        try:
            result = self._intake.receive(request_headers, body)
        except REFUSALS as exc:
            raise refusal(exc, request_headers.get("webhook-id")) from None
        return answer(result)


def _host_name(host: str) -> str:
    """The name of a ``host[:port]`` value (an IPv6 literal keeps its brackets)."""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


def _read_body(environ: WSGIEnvironment, max_bytes: int) -> bytes:
    """The whole body as sent: 413 over ``max_bytes`` (as declared, or as a chunked body turns
    out), 400 when it ends before its Content-Length (the client went away)."""
    raw_length = environ.get("CONTENT_LENGTH") or None
    declared = int(raw_length) if raw_length is not None and raw_length.isdigit() else None
    if raw_length is not None and declared is None:
        raise ApiError(
            400,
            "Content-Length is not a number.",
            code="invalid_content_length",
            param="Content-Length",
        )
    if declared is not None and declared > max_bytes:
        raise _too_large(max_bytes)  # nothing read: the connection closes (connection.py)
    if declared is None and not environ.get("wsgi.input_terminated"):
        return b""  # no length and a server that does not end the stream: no body
    # Read to the end ourselves: a capped stream cannot tell a body of exactly max_bytes from a
    # longer one, and passes a short body for a whole one.
    stream = environ["wsgi.input"]
    wanted = max_bytes + 1 if declared is None else declared
    pieces: list[bytes] = []
    received = 0
    try:
        while received < wanted:
            piece = stream.read(min(wanted - received, 64 * 1024))
            if not piece:
                break
            pieces.append(piece)
            received += len(piece)
    except Exception:  # the server's own errors: a chunked body broke off or is malformed
        raise _incomplete() from None
    if received > max_bytes:
        raise _too_large(max_bytes)
    if declared is not None and received < declared:
        raise _incomplete()
    return b"".join(pieces)


def _too_large(max_bytes: int) -> ApiError:
    metrics.event_received("unknown", "invalid")
    return ApiError(
        413,
        f"The request body is larger than MAX_BODY_BYTES ({max_bytes} bytes); nothing was stored.",
        code="body_too_large",
    )


def _incomplete() -> ApiError:
    metrics.event_received("unknown", "invalid")
    return ApiError(
        400,
        "The request body ended before its Content-Length (or its last chunk); nothing was stored.",
        code="incomplete_body",
    )


# What the intake raises for a delivery it does not store.
REFUSALS = (VerificationError, EnvelopeError, *DATABASE_ERRORS)


def refusal(exc: Exception, webhook_id: str | None) -> ApiError:
    """The answer to a delivery the intake refused (one of ``REFUSALS``), counted and logged."""
    if isinstance(exc, VerificationError):
        metrics.signature_failed(exc.reason.value)
        log_event(
            "delivery refused",
            level=logging.WARNING,
            event_id=_safe_id(webhook_id),
            reason=exc.reason.value,
        )
        return ApiError(401, str(exc), code=exc.reason.value)
    if isinstance(exc, EnvelopeError):
        metrics.event_received("unknown", "invalid")
        return ApiError(400, str(exc), code=exc.code, param=exc.param)
    error = database_error(exc)
    if error.status == 400:
        metrics.event_received("unknown", "unstorable")
    else:
        metrics.event_received("unknown", "unavailable")
        log.warning("database unavailable: %s", type(exc).__name__)
    return error


def answer(result: Received) -> dict[str, str]:
    """The answer to a stored (or already stored) delivery, counted and logged. A duplicate
    whose body differs from the stored one is a duplicate to the provider, and a warning here."""
    metrics.event_received(result.type, result.stored.value)
    differing = result.stored == Stored.DIFFERING_DUPLICATE
    log_event(
        "duplicate delivery with a different body; the first body is kept"
        if differing
        else "event received",
        level=logging.WARNING if differing else logging.INFO,
        event_id=result.id,
        type=result.type,
        status=result.stored.value,
    )
    status = Stored.DUPLICATE if differing else result.stored
    return {"id": result.id, "status": status.value}


def _safe_id(value: str | None) -> str | None:
    """A delivery id as far as it is printable and short (it is not verified yet)."""
    if not value:
        return None
    return value[:255] if value.isprintable() else None


@bp.get("/webhooks/verify")
def verify_challenge() -> Response:
    token = request.args.get("challenge", "")
    if not token or len(token) > MAX_CHALLENGE_LENGTH or not token.isprintable():
        raise ApiError(
            400,
            f"The challenge must be 1 to {MAX_CHALLENGE_LENGTH} printable characters.",
            code="invalid_challenge",
            param="challenge",
        )
    if (
        request.accept_mimetypes.best_match(["text/plain", "application/json"])
        == "application/json"
    ):
        response = jsonify({"challenge": token})
    else:
        response = Response(token, mimetype="text/plain")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def _is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )
