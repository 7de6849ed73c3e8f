"""What an event is: the envelope the provider posts, and the plain object handlers receive."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

MAX_TYPE_LENGTH = 200


class EnvelopeError(ValueError):
    """The body is not a valid event envelope; ``param`` names the offending field."""

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


@dataclass(frozen=True)
class Envelope:
    type: str
    data: dict[str, Any]
    payload: dict[str, Any]

    @property
    def data_id(self) -> str | None:
        value = self.data.get("id")
        return value[:255] if isinstance(value, str) else None


def parse_envelope(body: bytes) -> Envelope:
    """Parse ``{"event": str, "data": object, ...}``; every other field is kept as it came."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise EnvelopeError("The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise EnvelopeError("The body must be a JSON object.", code="invalid_json")
    event_type = payload.get("event")
    if not isinstance(event_type, str) or not event_type.strip():
        raise EnvelopeError(
            "The 'event' field is required and must be a non-empty string.",
            code="missing_field" if "event" not in payload else "invalid_field",
            param="event",
        )
    if len(event_type) > MAX_TYPE_LENGTH:
        raise EnvelopeError(
            f"The 'event' field is longer than {MAX_TYPE_LENGTH} characters.",
            code="invalid_field",
            param="event",
        )
    data = payload.get("data")
    if not isinstance(data, dict):
        raise EnvelopeError(
            "The 'data' field is required and must be an object.",
            code="missing_field" if "data" not in payload else "invalid_field",
            param="data",
        )
    return Envelope(type=event_type, data=data, payload=payload)


@dataclass(frozen=True)
class Event:
    """The plain, read-only event a handler receives (never an ORM row)."""

    id: str
    type: str
    data: dict[str, Any]
    payload: dict[str, Any]
    received_at: datetime
    attempt: int = 1
