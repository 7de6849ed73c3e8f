"""The delivery state machine's contract: each transition of ``engine``, against real PostgreSQL.

Each rule is asserted here once, by calling the transition directly; ``test_dispatch`` and
``test_relay`` test the components built on them, ``tests/e2e`` the running service.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Connection, select

from webhooks_app import engine
from webhooks_app.engine import Claim, Ran, Registered, Stored
from webhooks_app.registry import Handler
from webhooks_app.service import Service
from webhooks_app.store import (
    AttemptRow,
    AttemptStatus,
    EventRow,
    EventStatus,
    HandlerStateRow,
    HandlerStatus,
    NewEvent,
    utcnow,
)

LEASE = timedelta(seconds=30)
GRACE = timedelta(seconds=10)
A, B = "handlers.a", "handlers.b"


def noop(_: object) -> None:
    return None


REGISTERED = Registered.of(
    [Handler(A, "chat.completion", noop, None), Handler(B, "chat.completion", noop, 2)],
    default_max_attempts=3,
)
# A replay's choice: both handlers, their budget the service's default.
RESTARTED = Registered.of(
    [Handler(A, "chat.completion", noop, None), Handler(B, "chat.completion", noop, None)],
    default_max_attempts=4,
)


def new_event(event_id: str, body: bytes | None = None, *, at: datetime | None = None) -> NewEvent:
    at = at or utcnow()
    return NewEvent(
        id=event_id,
        type="chat.completion",
        raw_body=body or b'{"event": "chat.completion", "data": {"id": "c1"}}',
        headers={"webhook-id": event_id},
        data_id="c1",
        webhook_timestamp=int(at.timestamp()),
        received_at=at,
        due_at=at + GRACE,
    )


def stored(service: Service, *event_ids: str) -> None:
    execute = service.db.execute_autocommit
    for event_id in event_ids:
        assert engine.store(execute, new_event(event_id)) == Stored.CREATED


def event(service: Service, event_id: str) -> EventRow:
    with service.db.transaction() as session:
        row = session.get(EventRow, event_id)
        assert row is not None
        return row


def state(service: Service, event_id: str, handler: str) -> HandlerStateRow:
    with service.db.transaction() as session:
        row = session.get(HandlerStateRow, (event_id, handler))
        assert row is not None
        return row


def attempt_rows(service: Service, event_id: str) -> list[tuple[str, int, int, str]]:
    with service.db.transaction() as session:
        rows = session.scalars(
            select(AttemptRow).where(AttemptRow.event_id == event_id).order_by(AttemptRow.id)
        )
        return [(a.handler, a.number, a.run, a.status) for a in rows]


def claim(connection: Connection, *ids: str, now: datetime | None = None) -> engine.Claimed:
    return engine.claim(connection, ids, REGISTERED, now=now or utcnow(), lease=LEASE, grace=GRACE)


def finish(connection: Connection, *ran: Ran, now: datetime | None = None) -> engine.FinishedBatch:
    return engine.finish(connection, ran, REGISTERED, now=now or utcnow(), lease=LEASE, grace=GRACE)


def claims_of(claimed: engine.Claimed) -> dict[str, Claim]:
    return {c.handler: c for c in claimed.claims}


# --- store ---------------------------------------------------------------------------------


def test_store_keeps_the_first_body_and_counts_differing_duplicates(service: Service) -> None:
    execute = service.db.execute_autocommit
    assert engine.store(execute, new_event("e_store")) == Stored.CREATED
    assert engine.store(execute, new_event("e_store")) == Stored.DUPLICATE
    other = new_event("e_store", b'{"event": "chat.completion", "data": {"id": "c2"}}')
    assert engine.store(execute, other) == Stored.DIFFERING_DUPLICATE
    row = event(service, "e_store")
    assert (row.status, row.data_id, row.differing_duplicates) == (EventStatus.RECEIVED, "c1", 1)
    assert row.payload == {"event": "chat.completion", "data": {"id": "c1"}}
    assert row.due_at == row.received_at + GRACE


# --- hand-off and the sweep ----------------------------------------------------------------


def test_take_for_handoff_marks_the_oldest_received_queued_once(service: Service) -> None:
    at = utcnow()
    execute = service.db.execute_autocommit
    engine.store(execute, new_event("e_new", at=at))
    engine.store(execute, new_event("e_old", at=at - timedelta(seconds=5)))
    with service.db.begin() as connection:
        now = utcnow()
        taken = engine.take_for_handoff(connection, now=now, limit=1, requeue_after=LEASE)
        assert taken == ["e_old"]
        assert engine.take_for_handoff(connection, now=now, limit=5, requeue_after=LEASE) == [
            "e_new"
        ]
        assert engine.take_for_handoff(connection, now=now, limit=5, requeue_after=LEASE) == []
    row = event(service, "e_old")
    assert row.status == EventStatus.QUEUED
    assert row.due_at == row.updated_at + LEASE


def test_take_overdue_postpones_and_queues_only_what_is_past_due(service: Service) -> None:
    stored(service, "e_handed", "e_lost")
    with service.db.begin() as connection:
        # Both were due at received_at + GRACE; the older is handed off, due much later.
        taken = engine.take_for_handoff(connection, now=utcnow(), limit=1, requeue_after=LEASE * 9)
        assert taken == ["e_handed"]
    soon = utcnow() + GRACE + timedelta(seconds=1)
    with service.db.begin() as connection:
        assert engine.take_overdue(connection, now=soon, limit=10, requeue_after=LEASE) == [
            "e_lost"
        ]
        assert engine.take_overdue(connection, now=soon, limit=10, requeue_after=LEASE) == []
    swept = event(service, "e_lost")
    assert swept.status == EventStatus.QUEUED
    assert swept.due_at is not None
    assert swept.due_at > soon


# --- claim -----------------------------------------------------------------------------------


def test_claim_creates_every_registered_handler_running_with_an_attempt(service: Service) -> None:
    stored(service, "e_claim")
    with service.db.begin() as connection:
        claimed = claim(connection, "e_claim", "e_missing")
    assert claimed.found == {"e_claim"}
    got = claims_of(claimed)
    assert sorted(got) == [A, B]
    assert (got[A].run, got[A].token, got[A].number, got[A].max_attempts) == (1, 1, 1, 3)
    assert got[B].max_attempts == 2  # the handler's own budget
    assert got[A].event.data == {"id": "c1"}
    assert claimed.settled == {"e_claim": EventStatus.PROCESSING}
    row = state(service, "e_claim", A)
    assert (row.status, row.attempts) == (HandlerStatus.RUNNING, 1)
    assert event(service, "e_claim").due_at == row.lease_until + GRACE
    assert attempt_rows(service, "e_claim") == [
        (A, 1, 1, AttemptStatus.RUNNING),
        (B, 1, 1, AttemptStatus.RUNNING),
    ]


def test_claim_is_taken_once_and_reports_the_holder(service: Service) -> None:
    stored(service, "e_once")
    with service.db.begin() as connection:
        claim(connection, "e_once")
    with service.db.begin() as connection:
        again = claim(connection, "e_once")
    assert again.claims == []
    assert sorted(h.handler for h in again.held) == [A, B]
    assert again.settled == {}


def test_claim_takes_over_an_expired_lease_and_abandons_its_attempt(service: Service) -> None:
    stored(service, "e_expired")
    with service.db.begin() as connection:
        claim(connection, "e_expired")
    later = utcnow() + LEASE + timedelta(seconds=1)
    with service.db.begin() as connection:
        taken = claims_of(claim(connection, "e_expired", now=later))
    assert (taken[A].token, taken[A].number) == (2, 2)
    assert attempt_rows(service, "e_expired")[:2] == [
        (A, 1, 1, AttemptStatus.ABANDONED),
        (B, 1, 1, AttemptStatus.ABANDONED),
    ]


def test_claim_leaves_a_failure_until_its_retry_is_due(service: Service) -> None:
    stored(service, "e_retry")
    with service.db.begin() as connection:
        claims = claims_of(claim(connection, "e_retry"))
    with service.db.begin() as connection:
        finish(connection, Ran(claims[A], "boom", None, 5.0), Ran(claims[B]))
    with service.db.begin() as connection:
        assert claim(connection, "e_retry").claims == []
    with service.db.begin() as connection:
        due = claim(connection, "e_retry", now=utcnow() + timedelta(seconds=6))
    assert [c.handler for c in due.claims] == [A]  # B succeeded: never again


def test_an_event_of_no_registered_handler_is_skipped(service: Service) -> None:
    execute = service.db.execute_autocommit
    unhandled = new_event("e_skip")
    engine.store(execute, NewEvent(**{**unhandled.__dict__, "type": "embedding.created"}))
    with service.db.begin() as connection:
        claimed = claim(connection, "e_skip")
    assert (claimed.claims, claimed.settled) == ([], {"e_skip": EventStatus.SKIPPED})
    assert event(service, "e_skip").due_at is None


# --- finish ----------------------------------------------------------------------------------


def test_finish_records_success_and_the_event_succeeds_with_its_last_handler(
    service: Service,
) -> None:
    stored(service, "e_ok")
    with service.db.begin() as connection:
        claims = claims_of(claim(connection, "e_ok"))
    with service.db.begin() as connection:
        first = finish(connection, Ran(claims[A]))
    assert first.settled == {}  # B still running: processing as before
    with service.db.begin() as connection:
        last = finish(connection, Ran(claims[B]))
    assert [(f.attempt, f.state) for f in last.finished] == [
        (AttemptStatus.SUCCEEDED, HandlerStatus.SUCCEEDED)
    ]
    assert last.settled == {"e_ok": EventStatus.SUCCEEDED}
    assert event(service, "e_ok").due_at is None


def test_a_failure_is_failed_until_the_budget_is_spent_then_dead(service: Service) -> None:
    stored(service, "e_fail")
    now = utcnow()
    for attempt in (1, 2):  # B's budget is 2
        with service.db.begin() as connection:
            claims = claims_of(claim(connection, "e_fail", now=now))
        with service.db.begin() as connection:
            done = finish(connection, *(Ran(c, "boom", "Traceback", 1.0) for c in claims.values()))
        states = {f.ran.claim.handler: f.state for f in done.finished}
        if attempt == 1:
            assert states == {A: HandlerStatus.FAILED, B: HandlerStatus.FAILED}
            assert done.settled == {"e_fail": EventStatus.FAILED}
            retry_at = state(service, "e_fail", B).next_attempt_at
            assert retry_at is not None
            assert event(service, "e_fail").due_at == retry_at + GRACE
        now = utcnow() + timedelta(seconds=2)
    assert states == {A: HandlerStatus.FAILED, B: HandlerStatus.DEAD}
    assert state(service, "e_fail", B).next_attempt_at is None
    assert event(service, "e_fail").status == EventStatus.FAILED  # A still retries
    with service.db.transaction() as session:
        failed = session.scalars(select(AttemptRow).where(AttemptRow.event_id == "e_fail"))
        assert {(a.status, a.error, a.traceback) for a in failed} == {
            (AttemptStatus.FAILED, "boom", "Traceback")
        }


def test_a_finish_under_a_taken_over_claim_changes_nothing_but_its_attempt(
    service: Service,
) -> None:
    stored(service, "e_late")
    with service.db.begin() as connection:
        stale = claims_of(claim(connection, "e_late"))
    with service.db.begin() as connection:
        claim(connection, "e_late", now=utcnow() + LEASE + timedelta(seconds=1))
    with service.db.begin() as connection:
        done = finish(connection, Ran(stale[A]), Ran(stale[B], "boom", None, 1.0))
    assert {(f.ran.claim.handler, f.attempt, f.state) for f in done.finished} == {
        (A, AttemptStatus.ABANDONED, None),
        (B, AttemptStatus.FAILED, None),
    }
    assert (state(service, "e_late", A).status, state(service, "e_late", A).attempts) == (
        HandlerStatus.RUNNING,
        2,
    )


# --- leases ---------------------------------------------------------------------------------


def test_renew_extends_only_a_claim_still_held_under_its_token(service: Service) -> None:
    stored(service, "e_renew")
    with service.db.begin() as connection:
        claims = claims_of(claim(connection, "e_renew"))
    until = utcnow() + LEASE * 2
    with service.db.begin() as connection:
        engine.renew_leases(
            connection,
            [("e_renew", A, claims[A].token), ("e_renew", B, claims[B].token + 1)],
            lease_until=until,
        )
    assert state(service, "e_renew", A).lease_until == until
    assert state(service, "e_renew", B).lease_until != until


# --- replay -----------------------------------------------------------------------------------


def test_start_run_restarts_finished_handlers_and_refuses_running_ones(service: Service) -> None:
    stored(service, "e_replay")
    with service.db.begin() as connection:
        claims = claims_of(claim(connection, "e_replay"))
    with service.db.begin() as connection:
        finish(connection, Ran(claims[A]))
    with service.db.begin() as connection:
        restarted = engine.start_run(connection, "e_replay", RESTARTED, now=utcnow(), grace=GRACE)
    assert restarted == {A}  # B is still running
    row = state(service, "e_replay", A)
    assert (row.status, row.attempts, row.run, row.max_attempts) == (HandlerStatus.PENDING, 0, 2, 4)
    assert event(service, "e_replay").status == EventStatus.RECEIVED
    with service.db.begin() as connection:
        again = claims_of(claim(connection, "e_replay"))
    assert (again[A].run, again[A].token, again[A].number) == (2, 1, 2)


# --- the statements' literals ------------------------------------------------------------------


def test_every_status_literal_in_the_statements_is_a_member_of_its_enum() -> None:
    statuses = {s.value for s in (*EventStatus, *HandlerStatus, *AttemptStatus)}
    for name in dir(engine):
        statement = getattr(engine, name)
        if not hasattr(statement, "text") or not name.startswith("_"):
            continue
        for literal in re.findall(r"status\s*(?:=|<>)\s*'([^']*)'", statement.text):
            assert literal in statuses, f"{name}: {literal!r}"


@pytest.mark.parametrize("enum", [EventStatus, HandlerStatus, AttemptStatus])
def test_statuses_fit_their_columns(enum: type[EventStatus]) -> None:
    assert max(len(s.value) for s in enum) <= 20
