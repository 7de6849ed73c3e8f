"""PII masking (the seed's ``mask: true``): configured payload fields are hidden by default.

Rules come from PII_MASK_FIELDS: ``email`` (a bare name) masks that key at any depth;
``data.messages.*.content`` (a dotted path) masks from the payload's root, ``*`` standing for
any one key or list index. A masked value is replaced whole, whatever its type. Masked places
are named by JSON Pointer (RFC 6901), e.g. ``/data/messages/0/content``, which is also how one
is asked for when revealing it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MASK = "[masked]"


@dataclass(frozen=True)
class MaskRules:
    anywhere: frozenset[str]
    paths: tuple[tuple[str, ...], ...]

    @classmethod
    def parse(cls, fields: Iterable[str]) -> MaskRules:
        anywhere: set[str] = set()
        paths: list[tuple[str, ...]] = []
        for field in fields:
            parts = tuple(p for p in field.strip().split(".") if p)
            if len(parts) == 1:
                anywhere.add(parts[0])
            elif parts:
                paths.append(parts)
        return cls(frozenset(anywhere), tuple(paths))

    def matches(self, path: tuple[str, ...]) -> bool:
        if path and path[-1] in self.anywhere:
            return True
        return any(
            len(rule) == len(path) and all(r in ("*", p) for r, p in zip(rule, path, strict=True))
            for rule in self.paths
        )


@dataclass(frozen=True)
class Masked:
    value: Any  # the payload with masked values replaced by MASK
    pointers: tuple[str, ...]  # where, as JSON Pointers


def mask(payload: Any, rules: MaskRules, *, keep: frozenset[str] = frozenset()) -> Masked:
    """A masked copy of ``payload``; ``keep`` names masked fields to leave visible (revealed)."""
    pointers: list[str] = []
    root: dict[str, Any] = {}
    # Iterative, depth first in document order (so ``pointers`` come in that order): a payload
    # stored before the intake's depth limit may nest past Python's recursion limit.
    todo: list[tuple[Any, tuple[str, ...], dict[str, Any] | list[Any], Any]] = [
        (payload, (), root, "value")
    ]
    while todo:
        value, path, parent, slot = todo.pop()
        if path and rules.matches(path):
            pointer = to_pointer(path)
            if pointer not in keep:
                pointers.append(pointer)
                parent[slot] = MASK
                continue
        if isinstance(value, dict):
            copy: dict[str, Any] = {}
            parent[slot] = copy
            todo.extend(
                (item, (*path, str(key)), copy, key) for key, item in reversed(value.items())
            )
        elif isinstance(value, list):
            items: list[Any] = [None] * len(value)
            parent[slot] = items
            todo.extend(
                (value[index], (*path, str(index)), items, index)
                for index in reversed(range(len(value)))
            )
        else:
            parent[slot] = value
    return Masked(root["value"], tuple(pointers))


def to_pointer(path: Iterable[str]) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in path)


class PointerError(ValueError):
    pass


def parse_pointer(pointer: str) -> tuple[str, ...]:
    if not pointer.startswith("/"):
        raise PointerError("A field is named by a JSON Pointer such as /data/email.")
    return tuple(p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/"))


def value_at(payload: Any, pointer: str) -> Any:
    """The value at ``pointer``; ``PointerError`` if there is none."""
    value = payload
    for part in parse_pointer(pointer):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise PointerError(f"The payload has no field {pointer!r}.")
    return value


def display_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    """Delivery headers with each signature cut to its first characters: enough to compare,
    useless for forging a delivery."""
    shown = []
    for name, value in sorted(headers.items()):
        if name.lower() == "webhook-signature":
            value = " ".join(f"{sig[:12]}…" if len(sig) > 12 else sig for sig in value.split())
        shown.append((name, value))
    return shown
