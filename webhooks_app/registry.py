"""The handler registry: ``@on("chat.completion")`` in the user's ``handlers.py``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from webhooks_app.events import Event

HandlerFunc = Callable[[Event], object]
WILDCARD = "*"


@dataclass(frozen=True)
class Handler:
    name: str
    event_type: str
    func: HandlerFunc
    max_attempts: int | None  # None: the service's HANDLER_MAX_ATTEMPTS


class RegistryError(RuntimeError):
    pass


@dataclass
class Registry:
    _handlers: dict[str, Handler] = field(default_factory=dict)

    def on(
        self, event_type: str, *, max_attempts: int | None = None, name: str | None = None
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register the decorated function for ``event_type`` (``"*"`` for every type)."""
        if not event_type:
            raise RegistryError("an event type is required ('*' matches every type)")
        if max_attempts is not None and max_attempts < 1:
            raise RegistryError("max_attempts must be at least 1")

        def decorator(func: HandlerFunc) -> HandlerFunc:
            handler_name = name or f"{func.__module__}.{func.__qualname__}"
            existing = self._handlers.get(handler_name)
            if existing is not None and existing.func is not func:
                raise RegistryError(f"two handlers are named {handler_name!r}")
            self._handlers[handler_name] = Handler(handler_name, event_type, func, max_attempts)
            return func

        return decorator

    def for_type(self, event_type: str) -> list[Handler]:
        return [h for h in self._handlers.values() if h.event_type in (event_type, WILDCARD)]

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def all(self) -> list[Handler]:
        return list(self._handlers.values())

    def clear(self) -> None:
        self._handlers.clear()


registry = Registry()
on = registry.on


def load_handlers(module_name: str) -> Registry:
    """Import the user's handlers module so its ``@on`` decorators register; errors stop startup."""
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise RegistryError(
                f"HANDLERS_MODULE {module_name!r} cannot be imported: is it on the Python path?"
            ) from exc
        raise
    return registry
