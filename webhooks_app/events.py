"""What an event is: the envelope the provider posts, and the plain object handlers receive."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

MAX_TYPE_LENGTH = 200
# How deep a body's JSON may nest (objects and arrays). orjson parses up to 1,024 levels, but
# orjson.dumps stops at 255 and the standard library's json near 1,000, and handlers may walk the
# payload recursively; provider payloads nest a few levels.
MAX_JSON_DEPTH = 64


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
    if _nests_deeper(body, payload, MAX_JSON_DEPTH):
        raise EnvelopeError(
            f"The body's JSON nests deeper than {MAX_JSON_DEPTH} levels.", code="json_too_deep"
        )
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


def _nests_deeper(body: bytes, payload: Any, limit: int) -> bool:
    """Whether ``payload`` (parsed from ``body``) has containers nested deeper than ``limit``."""
    # Every level opens a bracket: a body with no more brackets than the limit (nearly every
    # delivery) is settled by two byte counts, without walking the parsed value.
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    level: list[tuple[Any, int]] = [(payload, 1)]
    while level:
        value, depth = level.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        level.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


@dataclass(frozen=True)
class Event:
    """The plain, read-only event a handler receives (never an ORM row)."""

    id: str
    type: str
    data: dict[str, Any]
    payload: dict[str, Any]
    received_at: datetime
    attempt: int = 1
