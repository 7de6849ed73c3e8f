"""Flask's JSON answers, for any stored payload however deeply it nests."""

from __future__ import annotations

import json
from typing import Any

from flask.json.provider import DefaultJSONProvider


class DepthSafeJSONProvider(DefaultJSONProvider):
    """Flask's default JSON, falling back to an iterative encoder for a value that nests past
    the standard library's recursion limit (a payload stored before the intake's depth limit:
    orjson accepts 1,024 levels, ``json.dumps`` gives up near 1,000)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        try:
            return super().dumps(obj, **kwargs)
        except RecursionError:
            return iterative_dumps(
                obj,
                default=kwargs.get("default", self.default),
                ensure_ascii=kwargs.get("ensure_ascii", self.ensure_ascii),
                sort_keys=kwargs.get("sort_keys", self.sort_keys),
            )


class _Text(str):
    """A piece of JSON text already decided, on the encoder's stack beside values."""


def iterative_dumps(
    value: Any, *, default: Any, ensure_ascii: bool = True, sort_keys: bool = False
) -> str:
    """Compact JSON text of ``value`` without recursion; ``default`` converts other types."""
    out: list[str] = []
    todo: list[Any] = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, _Text):
            out.append(item)
            continue
        tasks: list[Any] = []
        if isinstance(item, dict):
            keys = sorted(item, key=str) if sort_keys else list(item)
            out.append("{")
            for index, key in enumerate(keys):
                name = key if isinstance(key, str) else json.dumps(key)
                quoted = json.dumps(name, ensure_ascii=ensure_ascii)
                tasks += [_Text(("," if index else "") + quoted + ":"), item[key]]
            tasks.append(_Text("}"))
        elif isinstance(item, list | tuple):
            out.append("[")
            for index, child in enumerate(item):
                tasks += [_Text(",")] if index else []
                tasks.append(child)
            tasks.append(_Text("]"))
        elif isinstance(item, str | int | float | bool) or item is None:
            out.append(json.dumps(item, ensure_ascii=ensure_ascii))
        else:
            tasks.append(default(item))
        todo.extend(reversed(tasks))
    return "".join(out)
