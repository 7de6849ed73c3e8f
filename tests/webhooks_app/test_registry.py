"""@on(...) registration, lookup by type, and loading HANDLERS_MODULE."""

from __future__ import annotations

import sys

import pytest

from webhooks_app.events import Event
from webhooks_app.registry import Registry, RegistryError, load_handlers, registry


def noop(event: Event) -> None: ...


def other(event: Event) -> None: ...


def test_handlers_are_found_by_type_and_wildcard() -> None:
    registry = Registry()
    registry.on("chat.completion")(noop)
    registry.on("*", name="catch_all")(other)
    assert [h.name for h in registry.for_type("chat.completion")] == [
        f"{__name__}.noop",
        "catch_all",
    ]
    assert [h.name for h in registry.for_type("model.failed")] == ["catch_all"]


def test_several_handlers_may_share_a_type() -> None:
    registry = Registry()
    registry.on("model.failed", max_attempts=5)(noop)
    registry.on("model.failed")(other)
    handlers = registry.for_type("model.failed")
    assert [(h.func, h.max_attempts) for h in handlers] == [(noop, 5), (other, None)]


def test_decorating_returns_the_function_unchanged() -> None:
    assert Registry().on("x")(noop) is noop


def test_registering_the_same_function_twice_is_harmless() -> None:
    registry = Registry()
    registry.on("x")(noop)
    registry.on("x")(noop)
    assert len(registry.all()) == 1


def test_two_functions_with_one_name_are_refused() -> None:
    registry = Registry()
    registry.on("x", name="dup")(noop)
    with pytest.raises(RegistryError, match="dup"):
        registry.on("y", name="dup")(other)


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"max_attempts": -2}])
def test_invalid_max_attempts_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(RegistryError):
        Registry().on("x", **kwargs)


def test_an_empty_type_is_refused() -> None:
    with pytest.raises(RegistryError):
        Registry().on("")


def test_loading_a_missing_module_says_so() -> None:
    with pytest.raises(RegistryError, match="no_such_handlers_module"):
        load_handlers("no_such_handlers_module")


def test_the_shipped_handlers_cover_both_event_types(monkeypatch: pytest.MonkeyPatch) -> None:
    # Import the shipped module into a throwaway copy of the global registry, so the
    # other tests keep seeing only their own handlers.
    monkeypatch.setattr(registry, "_handlers", dict(registry._handlers))
    sys.modules.pop("handlers", None)
    try:
        loaded = load_handlers("handlers")
    finally:
        sys.modules.pop("handlers", None)
    shipped = [h for h in loaded.all() if h.name.startswith("handlers.")]
    assert {h.event_type for h in shipped} >= {"chat.completion", "model.failed"}
