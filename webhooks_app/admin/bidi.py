"""Bidirectional-text controls (U+202E and its kin) shown as visible escapes, never obeyed.

An event's type, data.id or payload can carry them; rendered raw they reorder what the
operator reads (``gpj.exe`` for ``exe.jpg``). Every value a template prints goes through
``visible`` (as Jinja's ``finalize``), so a new template is safe without thinking of it; form
values that are sent back as they are (filters) opt out with ``|verbatim``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from markupsafe import Markup

# Unicode's explicit directional formatting characters (UAX #9: embeddings, overrides,
# isolates, marks).
CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_TABLE = {ord(c): f"\\u{ord(c):04x}" for c in CONTROLS}


def visible(text: str) -> str:
    """``text`` with each bidi control as its JSON escape (``\\u202e``), which reads as what
    it is and is still valid inside a JSON string."""
    return text.translate(_TABLE)


class Verbatim(str):
    """Text a template prints as it is (escaped, but with its controls): a form value."""


def _finalize(value: Any) -> Any:
    if isinstance(value, Verbatim):
        return str(value)
    if isinstance(value, str) and not isinstance(value, Markup):
        return visible(value)
    return value


def init_app(app: Flask) -> None:
    app.jinja_env.finalize = _finalize
    app.jinja_env.filters["verbatim"] = lambda value: Verbatim(value)
