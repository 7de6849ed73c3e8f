"""The hand-off: the relay publishes committed events once, and the sweep what went astray.

Against real PostgreSQL; the publish is a list the test reads (tests/e2e runs the same code in
real Celery workers with a real broker).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text, update

from tests.support.events import event_status
from tests.support.processes import wait_until
from tests.support.signing import delivery
from webhooks_app import relay, store
from webhooks_app.engine import Stored
from webhooks_app.relay import Relay, RelayThread
from webhooks_app.service import Service
from webhooks_app.store import EventRow, HandlerStateRow, utcnow

PostEvent = Callable[..., Any]


def store_received(service: Service, *msg_ids: str) -> None:
    """Store events as the intake does (no relay runs in the tests' app)."""
    for msg_id in msg_ids:
        body, headers = delivery(msg_id=msg_id)
        received = service.intake.receive({k.lower(): v for k, v in headers.items()}, body)
        assert received.stored == Stored.CREATED


def test_the_relay_publishes_received_events_in_batches_and_marks_them_queued(
    service: Service,
) -> None:
    store_received(service, "msg_o1", "msg_o2", "msg_o3")
    published: list[list[str]] = []
    outbox = Relay(service.db, lambda ids: published.append(list(ids)), service.settings)
    assert outbox.relay_once(limit=2) == 2
    assert outbox.relay_once(limit=2) == 1
    assert outbox.relay_once(limit=2) == 0
    assert published == [["msg_o1", "msg_o2"], ["msg_o3"]]  # oldest first, one publish a batch
    assert {event_status(service, i) for i in ("msg_o1", "msg_o2", "msg_o3")} == {"queued"}


def test_a_failed_publish_leaves_events_received_and_the_next_cycle_hands_them_off(
    service: Service,
) -> None:
    store_received(service, "msg_down")
    published: list[str] = []
    broker_up = False

    def publish(ids: Any) -> None:
        if not broker_up:
            raise ConnectionError("broker unreachable")
        published.extend(ids)

    outbox = Relay(service.db, publish, service.settings)
    with pytest.raises(ConnectionError):
        outbox.relay_once()
    assert event_status(service, "msg_down") == "received"
    broker_up = True
    assert outbox.relay_once() == 1
    assert published == ["msg_down"]
    assert event_status(service, "msg_down") == "queued"


def test_two_relays_never_publish_the_same_event(service: Service) -> None:
    store_received(service, "msg_r1", "msg_r2")
    seen: list[str] = []
    inner_counts: list[int] = []
    second = Relay(service.db, seen.extend, service.settings)

    def publish_while_the_other_relay_runs(ids: Any) -> None:
        # The first relay still holds its rows: the second skips them.
        inner_counts.append(second.relay_once())
        seen.extend(ids)

    first = Relay(service.db, publish_while_the_other_relay_runs, service.settings)
    assert first.relay_once(limit=1) == 1
    assert inner_counts == [1]
    assert sorted(seen) == ["msg_r1", "msg_r2"]


def test_the_intakes_notify_wakes_the_serving_relay(service: Service) -> None:
    # With polling out of the picture, only the insert's NOTIFY can wake the relay.
    settings = service.settings.replace(relay_poll_seconds=60.0)
    published: list[str] = []
    woken = threading.Event()

    def publish(ids: Any) -> None:
        published.extend(ids)
        woken.set()

    outbox = Relay(service.db, publish, settings)
    thread = RelayThread(outbox)
    thread.start()
    try:
        # Its first cycle finds nothing; then it waits on LISTEN.
        wait_until(outbox.listening.is_set, 10, what="the relay to listen")
        time.sleep(0.2)
        started = time.monotonic()
        store_received(service, "msg_wake")
        assert woken.wait(10)
        assert time.monotonic() - started < 30  # well before the next poll
        assert published == ["msg_wake"]
        wait_until(lambda: event_status(service, "msg_wake") == "queued", 5, what="the commit")
    finally:
        thread.stop()


def test_a_relay_whose_connection_is_killed_listens_again(service: Service) -> None:
    settings = service.settings.replace(relay_poll_seconds=60.0)
    published: list[str] = []
    outbox = Relay(service.db, published.extend, settings)
    thread = RelayThread(outbox)
    thread.start()
    try:
        wait_until(outbox.listening.is_set, 10, what="the relay to listen")
        outbox.listening.clear()
        with service.db.engine.connect() as connection:
            killed = connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN %' AND datname = current_database()"
                )
            ).scalars()
            assert list(killed) == [True]
        store_received(service, "msg_after_kill")
        wait_until(lambda: published == ["msg_after_kill"], 15, what="the relay to come back")
    finally:
        thread.stop()


def test_sweep_republishes_overdue_events_only(post_event: PostEvent, service: Service) -> None:
    post_event(msg_id="msg_overdue")
    post_event(msg_id="msg_fresh")
    published: list[str] = []
    with service.db.transaction() as session:
        session.execute(
            update(store.events)
            .where(store.events.c.id == "msg_overdue")
            .values(due_at=utcnow() - timedelta(seconds=1))
        )
    assert relay.sweep(service.db, published.extend, service.settings) == 1
    assert published == ["msg_overdue"]
    assert event_status(service, "msg_overdue") == "queued"
    assert event_status(service, "msg_fresh") == "received"
    # Swept events are not swept again until they are overdue again.
    assert relay.sweep(service.db, published.extend, service.settings) == 0


def test_a_failed_sweep_publish_leaves_the_events_overdue(
    post_event: PostEvent, service: Service
) -> None:
    post_event(msg_id="msg_sweep_down")

    def broker_down(_: Any) -> None:
        raise ConnectionError("broker unreachable")

    later = utcnow() + timedelta(seconds=service.settings.handoff_grace_seconds + 1)
    with service.db.transaction() as session:
        session.execute(
            update(store.events)
            .where(store.events.c.id == "msg_sweep_down")
            .values(due_at=utcnow() - timedelta(seconds=1))
        )
    with pytest.raises(ConnectionError):
        relay.sweep(service.db, broker_down, service.settings)
    with service.db.transaction() as session:
        row = session.get(EventRow, "msg_sweep_down")
        assert row is not None
        assert row.status == "received"
        assert row.due_at is not None
        assert row.due_at < later


def test_finished_events_are_never_swept(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(msg_id="msg_done")
    service.dispatcher.process_events(["msg_done"])
    with service.db.transaction() as session:
        state = session.get(HandlerStateRow, ("msg_done", "tests.support.handlers.record"))
        assert state is not None
        assert state.status == "succeeded"
        row = session.get(EventRow, "msg_done")
        assert row is not None
        assert row.due_at is None
