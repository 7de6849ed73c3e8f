"""Payload JSON as syntax-highlighted HTML, built server-side with every piece of text escaped.

No payload text ever reaches the browser as markup: keys and values go through
``markupsafe.escape`` and only this module's own ``<span>`` and ``<button>`` tags are markup.
"""

from __future__ import annotations

import json
from typing import Any

from markupsafe import Markup, escape

from webhooks_app.admin.bidi import visible
from webhooks_app.masking import MASK, to_pointer

INDENT = "  "


def highlight(
    value: Any,
    *,
    masked: frozenset[str] = frozenset(),
    revealed: frozenset[str] = frozenset(),
    reveal_form: str | None = None,
) -> Markup:
    """``masked``/``revealed`` are JSON Pointers; a masked value gets a reveal button bound to
    the form with id ``reveal_form`` (when given)."""
    out: list[str] = []

    def span(kind: str, text: str) -> str:
        # Bidi controls become JSON escapes (\u202e): the text reads in its real order.
        return f'<span class="j-{kind}">{escape(visible(text))}</span>'

    def scalar(item: Any) -> str:
        if isinstance(item, str):
            return span("str", json.dumps(item, ensure_ascii=False))
        if isinstance(item, bool) or item is None:
            return span("lit", json.dumps(item))
        if isinstance(item, int | float):
            return span("num", json.dumps(item))
        return span("str", json.dumps(str(item), ensure_ascii=False))

    # Iterative (a stack of nodes still to render and text already decided): a payload stored
    # before the intake's depth limit may nest past Python's recursion limit.
    todo: list[str | tuple[Any, tuple[str, ...], int]] = [(value, (), 0)]
    while todo:
        task = todo.pop()
        if isinstance(task, str):
            out.append(task)
            continue
        item, path, depth = task
        pointer = to_pointer(path)
        if path and pointer in masked and item == MASK:
            out.append(span("masked", MASK))
            if reveal_form:
                out.append(
                    f' <button class="reveal" type="submit" form="{escape(reveal_form)}"'
                    f' name="pointer" value="{escape(pointer)}">reveal</button>'
                )
            continue
        if path and pointer in revealed:
            todo.extend(["</span>", (item, (), depth)])
            out.append('<span class="j-revealed">')
            continue
        pad, inner = INDENT * depth, INDENT * (depth + 1)
        parts: list[str | tuple[Any, tuple[str, ...], int]] = []
        if isinstance(item, dict) and item:
            out.append("{\n")
            for index, (key, child) in enumerate(item.items()):
                parts.append(inner + span("key", json.dumps(str(key), ensure_ascii=False)) + ": ")
                parts.append((child, (*path, str(key)), depth + 1))
                parts.append(",\n" if index < len(item) - 1 else "\n")
            parts.append(pad + "}")
        elif isinstance(item, list) and item:
            out.append("[\n")
            for index, child in enumerate(item):
                parts.append(inner)
                parts.append((child, (*path, str(index)), depth + 1))
                parts.append(",\n" if index < len(item) - 1 else "\n")
            parts.append(pad + "]")
        elif isinstance(item, dict):
            out.append("{}")
        elif isinstance(item, list):
            out.append("[]")
        else:
            out.append(scalar(item))
        todo.extend(reversed(parts))

    return Markup("".join(out))  # noqa: S704 - every piece of text above is escaped
