"""The provider-facing endpoints: event delivery and the verification challenge."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from webhooks_app.errors import ApiError
from webhooks_app.events import EnvelopeError
from webhooks_app.service import current_service
from webhooks_app.signatures import VerificationError

bp = Blueprint("receiver", __name__)

MAX_CHALLENGE_LENGTH = 512


@bp.post("/webhooks/events")
def receive_event() -> tuple[dict[str, str], int]:
    if not _is_json(request.mimetype):
        raise ApiError(
            415,
            "Send the event as application/json.",
            code="unsupported_media_type",
            param="Content-Type",
        )
    body = request.get_data(cache=False)  # over MAX_BODY_BYTES: 413 before anything is read
    try:
        result = current_service().intake.receive(request.headers, body)
    except VerificationError as exc:
        raise ApiError(401, str(exc), code=exc.reason.value) from None
    except EnvelopeError as exc:
        raise ApiError(400, str(exc), code=exc.code, param=exc.param) from None
    return {"id": result.id, "status": "accepted" if result.created else "duplicate"}, 200


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
