"""The provider-facing endpoints: event delivery and the verification challenge."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, current_app, jsonify, request

from webhooks_app import metrics
from webhooks_app.engine import Stored
from webhooks_app.errors import DATABASE_ERRORS, ApiError, database_error
from webhooks_app.events import EnvelopeError
from webhooks_app.intake import Received
from webhooks_app.logs import log_event
from webhooks_app.service import current_service
from webhooks_app.signatures import VerificationError

log = logging.getLogger(__name__)

bp = Blueprint("receiver", __name__)

MAX_CHALLENGE_LENGTH = 512


@bp.post("/webhooks/events")
def receive_event() -> tuple[dict[str, str], int]:
    started = time.perf_counter()
    try:
        return _receive_event()
    finally:
        metrics.observe_intake(time.perf_counter() - started)


def _receive_event() -> tuple[dict[str, str], int]:
    if not _is_json(request.mimetype):
        metrics.event_received("unknown", "invalid")
        raise ApiError(
            415,
            "Send the event as application/json.",
            code="unsupported_media_type",
            param="Content-Type",
        )
    body = _read_body(current_app.config["MAX_CONTENT_LENGTH"])
    try:
        result = current_service().intake.receive(request.headers, body)
    except REFUSALS as exc:
        raise refusal(exc, request.headers.get("webhook-id")) from None
    return answer(result), 200


def _read_body(max_bytes: int) -> bytes:
    """The whole body as sent: 413 over ``max_bytes`` (as declared, or as a chunked body turns
    out), 400 when it ends before its Content-Length (the client went away)."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise _too_large(max_bytes)  # nothing read: the connection closes (connection.py)
    if declared is None and "wsgi.input_terminated" not in request.environ:
        return b""  # no length and a server that does not end the stream: no body
    # The WSGI input itself: Werkzeug's max-length stream cannot tell a body of exactly
    # max_bytes from a longer one, and passes a short body for a whole one.
    stream = request.environ["wsgi.input"]
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
