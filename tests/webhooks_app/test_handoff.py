"""The hand-off: the relays publish committed events once, and the sweep what went astray.

Against real PostgreSQL; the publish is a list the test reads (tests/e2e runs the same code
with gunicorn's outbox relay process and a real broker).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from tests.support.events import event_status
from tests.support.signing import delivery
from webhooks_app import handoff, store
from webhooks_app.service import Service
from webhooks_app.store import EventRow, HandlerStateRow, utcnow

PostEvent = Callable[..., Any]


def test_sweep_republishes_overdue_events_only(post_event: PostEvent, service: Service) -> None:
    post_event(msg_id="msg_overdue")
    post_event(msg_id="msg_fresh")
    service.relay.flush()
    published: list[str] = []
    with service.db.transaction() as session:
        session.execute(
            update(store.events)
            .where(store.events.c.id == "msg_overdue")
            .values(status="received", due_at=utcnow() - timedelta(seconds=1))
        )
    count = handoff.sweep(service.db.sessions, published.extend, service.settings)
    assert count == 1
    assert published == ["msg_overdue"]
    assert event_status(service, "msg_overdue") == "queued"
    # Swept events are not swept again until they are overdue again.
    assert handoff.sweep(service.db.sessions, published.extend, service.settings) == 0


def test_finished_events_are_never_swept(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(msg_id="msg_done")
    service.dispatcher.process_event("msg_done")
    with service.db.transaction() as session:
        state = session.get(HandlerStateRow, ("msg_done", "tests.support.handlers.record"))
        assert state is not None
        assert state.status == "succeeded"
        row = session.get(EventRow, "msg_done")
        assert row is not None
        assert row.due_at is None


def test_relay_failure_leaves_the_event_received_for_the_sweep(service: Service) -> None:
    def broker_down(_: Any) -> None:
        raise ConnectionError("broker unreachable")

    relay = handoff.Relay(service.db.sessions, broker_down, service.settings)
    body, headers = delivery(msg_id="msg_no_broker")
    intake = type(service.intake)(service.db, relay, service.settings, service.active_secrets)
    assert intake.receive({k.lower(): v for k, v in headers.items()}, body).created
    assert relay.flush(5)
    assert event_status(service, "msg_no_broker") == "received"
    with service.db.transaction() as session:
        overdue = store.overdue_event_ids(session, now=utcnow() + timedelta(seconds=60), limit=10)
    assert "msg_no_broker" in overdue


class NoHandOff:
    def submit(self, event_id: str) -> None:
        pass


def store_received(service: Service, *msg_ids: str) -> None:
    """Store events as the intake does, with no relay handing them off."""
    intake = type(service.intake)(service.db, NoHandOff(), service.settings, service.active_secrets)
    for msg_id in msg_ids:
        body, headers = delivery(msg_id=msg_id)
        assert intake.receive({k.lower(): v for k, v in headers.items()}, body).created


def outbox_relay(
    service: Service, publish: handoff.Publish, batch: int = 500
) -> handoff.OutboxRelay:
    """An outbox relay as ``webhooks_app.outbox`` makes one on PostgreSQL."""
    return handoff.OutboxRelay(
        service.db.sessions,
        publish,
        service.settings,
        batch=batch,
        pipelined=service.db.pipelined_transaction,
    )


def test_the_outbox_relay_publishes_received_events_in_batches_and_marks_them_queued(
    service: Service,
) -> None:
    store_received(service, "msg_o1", "msg_o2", "msg_o3")
    published: list[list[str]] = []
    relay = outbox_relay(service, lambda ids: published.append(list(ids)), batch=2)
    assert relay.relay_once() == 2
    assert relay.relay_once() == 1
    assert relay.relay_once() == 0
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

    relay = outbox_relay(service, publish)
    with pytest.raises(ConnectionError):
        relay.relay_once()
    assert event_status(service, "msg_down") == "received"
    broker_up = True
    assert relay.relay_once() == 1
    assert published == ["msg_down"]
    assert event_status(service, "msg_down") == "queued"


def test_two_relays_never_publish_the_same_event(service: Service) -> None:
    store_received(service, "msg_r1", "msg_r2")
    seen: list[str] = []
    inner_counts: list[int] = []
    second = outbox_relay(service, seen.extend)

    def publish_while_the_other_relay_runs(ids: Any) -> None:
        # The first relay still holds its rows: the second skips them.
        inner_counts.append(second.relay_once())
        seen.extend(ids)

    first = outbox_relay(service, publish_while_the_other_relay_runs, batch=1)
    assert first.relay_once() == 1
    assert inner_counts == [1]
    assert sorted(seen) == ["msg_r1", "msg_r2"]
