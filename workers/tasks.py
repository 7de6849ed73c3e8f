"""Thin tasks: they take ids, call the core, and are safe to run more than once."""

from __future__ import annotations

import logging

from celery import shared_task

from webhooks_app import dispatch, retention
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


@shared_task(name=PROCESS_EVENTS_TASK)
def process_events(event_ids: list[str]) -> None:
    """The relay's and the sweep's message: several events, two transactions for all."""
    service = current_service()
    outcomes = service.dispatcher.process_events(event_ids)
    for event_id, outcome in outcomes.items():
        _schedule_follow_ups(event_id, outcome)


@shared_task(name=PROCESS_EVENT_TASK)
def process_event(event_id: str, handler: str | None = None) -> None:
    """One event, or one handler of it: retries and waits for a claim held elsewhere."""
    service = current_service()
    _schedule_follow_ups(event_id, service.dispatcher.process_event(event_id, only_handler=handler))


def _schedule_follow_ups(event_id: str, outcome: Outcome) -> None:
    # A countdown message sits unacknowledged in the worker; past the visibility timeout
    # Redis would hand out a copy, so longer waits are left to the sweep (``due_at``).
    longest_countdown = current_service().settings.broker_visibility_timeout / 2
    for follow_up in outcome.follow_ups:
        if follow_up.delay <= longest_countdown:
            process_event.apply_async((event_id, follow_up.handler), countdown=follow_up.delay)


@shared_task(name=SWEEP_TASK)
def sweep() -> int:
    service = current_service()
    return dispatch.sweep(service.db.sessions, service.publish, service.settings)


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
