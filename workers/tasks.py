"""Thin tasks: they take ids, call the core, and are safe to run more than once."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from celery import Task, shared_task
from sqlalchemy import exc as sa_exc

from webhooks_app import relay, retention
from webhooks_app.assisters import AssistersError
from webhooks_app.dispatch import Outcome
from webhooks_app.extensions import (
    PROCESS_EVENT_TASK,
    PROCESS_EVENTS_TASK,
    PURGE_TASK,
    ROTATE_SUBSCRIPTIONS_TASK,
    SWEEP_TASK,
)
from webhooks_app.service import current_service
from webhooks_app.subscriptions import SubscriptionError

log = logging.getLogger(__name__)


# A database failing over or restarting, a connection dropped or killed, a deadlock, a
# prepared statement a pooler lost: what a message is tried again for, shortly, instead of
# waiting for the sweep (an event's ``due_at``: 10 minutes once handed off). Whatever a failed
# transaction did was rolled back, and the claims make a second run harmless.
DATABASE_RETRIES = 5


def transient(exc: sa_exc.DBAPIError) -> bool:
    return isinstance(exc, sa_exc.OperationalError) or isinstance(  # deadlocks included
        exc.orig, psycopg.errors.InvalidSqlStatementName
    )


@shared_task(name=PROCESS_EVENTS_TASK, bind=True, max_retries=DATABASE_RETRIES)
def process_events(self: Task[Any, Any], event_ids: list[str]) -> None:
    """The one delivery message: the ids of one or more events (a retry is a batch of one)."""
    try:
        outcomes = current_service().dispatcher.process_events(event_ids)
    except sa_exc.DBAPIError as exc:
        if not transient(exc):
            raise
        raise _retry_later(self, exc) from exc
    _schedule(outcomes)


@shared_task(name=PROCESS_EVENT_TASK)
def process_event(event_id: str, handler: str | None = None) -> None:
    """A message of the previous version (one event, one handler), still queued after an
    upgrade: forwarded as the one kind of delivery message."""
    process_events.delay([event_id])


def _retry_later(task: Task[Any, Any], exc: Exception) -> Exception:
    """The same message again after 1, 2, 4, 8, 16 s (at most half the visibility timeout, as
    for every countdown here); after the last, ``exc`` is raised and the sweep takes over."""
    attempt = task.request.retries
    delay = min(2.0**attempt, current_service().settings.broker_visibility_timeout / 2)
    if attempt < DATABASE_RETRIES:
        log.warning(
            "database error; message tried again in %.0f s (retry %d of %d): %s",
            delay,
            attempt + 1,
            DATABASE_RETRIES,
            type(exc).__name__,  # not its text: a server message may quote row values
        )
    else:
        log.error(
            "database error, retries used up; the sweep hands the events over: %s",
            type(exc).__name__,
        )
    return task.retry(exc=exc, countdown=delay)


def _schedule(outcomes: dict[str, Outcome]) -> None:
    """Deliver an event again when the first of its follow-ups is due: the claim then takes
    every handler due by that time."""
    # A countdown message sits unacknowledged in the worker; past the visibility timeout
    # Redis would hand out a copy, so longer waits are left to the sweep (``due_at``).
    longest_countdown = current_service().settings.broker_visibility_timeout / 2
    for event_id, outcome in outcomes.items():
        if outcome.follow_ups:
            delay = min(f.delay for f in outcome.follow_ups)
            if delay <= longest_countdown:
                process_events.apply_async(([event_id],), countdown=delay)


@shared_task(name=SWEEP_TASK)
def sweep() -> int:
    service = current_service()
    return relay.sweep(service.db, service.publish, service.settings)


@shared_task(name=ROTATE_SUBSCRIPTIONS_TASK)
def rotate_subscriptions() -> list[str]:
    try:
        messages = current_service().subscriptions.rotate_if_due()
    except (AssistersError, SubscriptionError) as exc:
        # The rotation stays where it stopped; the next beat tick resumes it.
        log.warning("subscription rotation postponed: %s", exc)
        return []
    for message in messages:
        log.info("%s", message)
    return messages


@shared_task(name=PURGE_TASK)
def purge_expired_events() -> int:
    service = current_service()
    return retention.purge_expired(service.db.sessions, service.settings.event_retention_days)
