"""Replaying stored events: a new run of chosen handlers, past attempts kept as they are.

A replay resets each chosen (event, handler) state to ``pending`` with a fresh attempt budget
and a new ``run`` number; attempt numbers carry on from the last attempt, so the history is
appended to, never rewritten. The caller commits, then hands the event to the relay; the worker
runs it like any other delivery (claims, leases, retries).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from webhooks_app import store
from webhooks_app.config import Settings
from webhooks_app.registry import Registry
from webhooks_app.store import EventStatus, HandlerStatus, utcnow


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
) -> Replayed:
    """Start a new run of ``handler`` (or of every handler of the event's type). Only flushes."""
    events, states = store.events, store.handler_states
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

    now = utcnow()
    existing = {
        r.handler: r
        for r in session.execute(
            select(states.c.handler, states.c.status, states.c.attempts, states.c.run).where(
                states.c.event_id == event_id, states.c.handler.in_([h.name for h in chosen])
            )
        )
    }
    for h in chosen:
        state = existing.get(h.name)
        max_attempts = h.max_attempts or settings.default_max_attempts
        if state is None:
            session.execute(
                insert(states).values(
                    event_id=event_id,
                    handler=h.name,
                    status=HandlerStatus.PENDING.value,
                    attempts=0,
                    max_attempts=max_attempts,
                    run=1,
                    updated_at=now,
                )
            )
            continue
        if state.status == HandlerStatus.RUNNING.value:
            raise HandlerBusy(
                f"Handler {h.name!r} is running on this event; replay it once it has finished.",
                param="handler",
            )
        # Conditional like a claim: a worker that took the handler meanwhile makes this miss.
        changed = session.execute(
            update(states)
            .where(
                states.c.event_id == event_id,
                states.c.handler == h.name,
                states.c.status == state.status,
                states.c.attempts == state.attempts,
                states.c.run == state.run,
            )
            .values(
                status=HandlerStatus.PENDING.value,
                attempts=0,
                run=state.run + 1,
                max_attempts=max_attempts,
                lease_until=None,
                next_attempt_at=None,
                updated_at=now,
            )
        ).rowcount  # type: ignore[attr-defined]
        if changed != 1:
            raise HandlerBusy(f"Handler {h.name!r} changed meanwhile; try again.", param="handler")
    session.execute(
        update(events)
        .where(events.c.id == event_id)
        .values(
            # Awaiting hand-off, like a new event: the relay publishes it after the commit,
            # and if that fails the sweep does once this is due.
            status=EventStatus.RECEIVED.value,
            updated_at=now,
            due_at=now + timedelta(seconds=settings.handoff_grace_seconds),
        )
    )
    return Replayed(event_id, tuple(h.name for h in chosen))
