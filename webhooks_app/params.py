"""Query parameters of the admin pages and the API, parsed once: a bad one is a ``ParamError``
naming it (both web layers answer it ``400``), never a database error further down.

Flask-free: the callers pass ``request.args`` (or a form) as a plain mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from webhooks_app import store
from webhooks_app.store import EventFilter, EventStatus

# Longer than any id, type or data.id the intake stores (their columns hold 255).
MAX_TEXT_LENGTH = 255
EVENT_FILTER_FIELDS = ("type", "status", "since", "until", "data_id", "q")


class ParamError(ValueError):
    """A bad query parameter; ``code`` and ``param`` go into the error body as they are."""

    code = "invalid_parameter"

    def __init__(self, message: str, param: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


def text(args: Mapping[str, str], name: str) -> str | None:
    """A free-text value, stripped; ``None`` when absent or blank."""
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    # PostgreSQL text cannot hold NUL: the query would fail, so the parameter is what is wrong.
    if "\x00" in raw or len(raw) > MAX_TEXT_LENGTH:
        raise ParamError(f"{name} must be at most {MAX_TEXT_LENGTH} characters, without NUL.", name)
    return raw


def moment(args: Mapping[str, str], name: str, *, end: bool = False) -> datetime | None:
    """``YYYY-MM-DD`` (a whole day: as an ``end`` bound it includes that day), an ISO 8601
    date and time (UTC when it has no offset) or Unix seconds."""
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    try:
        if raw.isascii() and raw.isdigit():
            return datetime.fromtimestamp(int(raw), UTC)
        if len(raw) == 10:
            start = datetime.combine(date.fromisoformat(raw), time(), UTC)
            return start + timedelta(days=1) if end else start
        return store.parse_moment(raw)
    except (ValueError, OverflowError, OSError):
        raise ParamError(
            f"{name} must be a date (YYYY-MM-DD), an ISO 8601 date and time or Unix seconds.",
            name,
        ) from None


def integer(args: Mapping[str, str], name: str, *, default: int, low: int, high: int) -> int:
    raw = (args.get(name) or "").strip()
    if not raw:
        return default
    # isascii first: "²".isdigit() is true, and int() refuses it.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not low <= int(raw) <= high:
        raise ParamError(f"{name} must be an integer from {low} to {high}.", name)
    return int(raw)


def cursor(args: Mapping[str, str], name: str = "cursor") -> str | None:
    """An opaque cursor; the store decodes it (``store.CursorError`` there is a 400 too)."""
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    if len(raw) > 4 * MAX_TEXT_LENGTH or not raw.isascii():
        raise ParamError("The cursor is not one this API returned.", name, code="invalid_cursor")
    return raw


def event_filter(args: Mapping[str, str]) -> EventFilter:
    """The event list's filters (the list, its live fragment, bulk replay, the API)."""
    status = text(args, "status")
    if status is not None and status not in {s.value for s in EventStatus}:
        raise ParamError(
            "status must be one of: " + ", ".join(s.value for s in EventStatus) + ".", "status"
        )
    since = moment(args, "since")
    until = moment(args, "until", end=True)
    return EventFilter(
        type=text(args, "type"),
        status=status,
        since=since,
        until=until,
        data_id=text(args, "data_id"),
        search=text(args, "q"),
    )


def filter_args(args: Mapping[str, str]) -> dict[str, Any]:
    """The filter parameters as given (for links to the next page and the confirmation)."""
    return {name: args[name] for name in EVENT_FILTER_FIELDS if args.get(name)}
