"""Replaying stored events: a new run of chosen handlers, past attempts kept as they are.

A replay resets each chosen (event, handler) state to ``pending`` with a fresh attempt budget
and a new ``run`` number; attempt numbers carry on from the last attempt, so the history is
appended to, never rewritten (``engine.start_run``). When the caller commits, the relays are
woken and the worker runs it like any other delivery (claims, leases, retries).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from webhooks_app import engine, store
from webhooks_app.config import Settings
from webhooks_app.database import session_driver
from webhooks_app.registry import Handler, Registry
from webhooks_app.store import HandlerStatus, utcnow


class ReplayError(Exception):
    """Why a replay cannot happen; ``code`` is the API error code."""

    code = "replay_refused"
    status = 409

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class EventNotFound(ReplayError):
    code = "event_not_found"
    status = 404


class UnknownHandler(ReplayError):
    code = "unknown_handler"
    status = 400


class HandlerBusy(ReplayError):
    code = "handler_running"
    status = 409


class NothingToReplay(ReplayError):
    code = "no_handlers"
    status = 409


@dataclass(frozen=True)
class Replayed:
    event_id: str
    handlers: tuple[str, ...]


def reset_for_replay(
    session: Session,
    event_id: str,
    *,
    registry: Registry,
    settings: Settings,
    handler: str | None = None,
    only_failed: bool = False,
) -> Replayed:
    """Start a new run of ``handler`` (or of every handler of the event's type, or with
    ``only_failed`` of those whose last run failed). Only flushes."""
    events = store.events
    # The same row lock the dispatcher takes to update an event's status: one writer at a time.
    row = session.execute(
        select(events.c.type).where(events.c.id == event_id).with_for_update()
    ).first()
    if row is None:
        raise EventNotFound(f"No event with id {event_id!r}.", param="id")
    registered = {h.name: h for h in registry.for_type(row.type)}
    if handler is not None:
        if handler not in registered:
            known = ", ".join(sorted(registered)) or "none"
            raise UnknownHandler(
                f"No handler {handler!r} is registered for {row.type!r} (registered: {known}).",
                param="handler",
            )
        chosen = [registered[handler]]
    else:
        chosen = list(registered.values())
    if not chosen:
        raise NothingToReplay(f"No handler is registered for events of type {row.type!r}.")
    if only_failed and handler is None:
        chosen = _failed_only(session, event_id, chosen)

    with session_driver(session) as connection:
        restarted = engine.start_run(
            connection,
            event_id,
            engine.Registered.of(chosen, settings.default_max_attempts),
            now=utcnow(),
            grace=timedelta(seconds=settings.handoff_grace_seconds),
        )
    busy = [h.name for h in chosen if h.name not in restarted]
    if busy:
        raise HandlerBusy(
            f"Handler {busy[0]!r} is running on this event; replay it once it has finished.",
            param="handler",
        )
    return Replayed(event_id, tuple(h.name for h in chosen))


# --- the "failed handlers" choice ------------------------------------------------------------
# Replaying only what failed is the safe default for operators: a handler that succeeded is not
# re-run, so its side effects are not repeated.

FAILED_HANDLER_STATUSES = (HandlerStatus.FAILED.value, HandlerStatus.DEAD.value)


def _failed_only(session: Session, event_id: str, chosen: list[Handler]) -> list[Handler]:
    states = store.handler_states
    rows = session.execute(
        select(states.c.handler, states.c.status).where(states.c.event_id == event_id)
    )
    status_of = {handler: status for handler, status in rows}
    kept = [h for h in chosen if status_of.get(h.name) in FAILED_HANDLER_STATUSES]
    if not kept and HandlerStatus.RUNNING.value in status_of.values():
        raise HandlerBusy(
            "A handler is running on this event; replay it once it has finished.",
            param="handler",
        )
    if not kept:
        raise NothingToReplay(
            "No handler of this event has failed: replay all handlers, or one, instead.",
            param="handlers",
        )
    return kept


class Scope(StrEnum):
    """Which handlers a replay without a named handler runs (the API's ``handlers``)."""

    FAILED = "failed"
    ALL = "all"


DEFAULT_SCOPE = Scope.FAILED


class InvalidChoice(ReplayError):
    code = "invalid_parameter"
    status = 400


def parse_scope(raw: object) -> Scope:
    """``failed`` (the default, for ``None`` or ``""``) or ``all``; ``InvalidChoice`` otherwise."""
    if raw is None or raw == "":
        return DEFAULT_SCOPE
    if isinstance(raw, str) and raw in {s.value for s in Scope}:
        return Scope(raw)
    raise InvalidChoice("handlers must be 'failed' or 'all'.", param="handlers")
