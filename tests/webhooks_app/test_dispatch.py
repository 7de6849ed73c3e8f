"""Running handlers: retries, dead letters, independence, claims and leases.

These call the Dispatcher in-process against real PostgreSQL; tests/e2e runs the same code in
real Celery workers.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.support.events import attempts, event_status
from tests.support.processes import wait_until
from webhooks_app import dispatch, replay, store
from webhooks_app.service import Service
from webhooks_app.store import AttemptRow, EventRow, HandlerStateRow, utcnow

PostEvent = Callable[..., Any]


def state_row(event_id: str, handler: str, **values: Any) -> HandlerStateRow:
    """An (event, handler) state as a worker left it, written directly."""
    values.setdefault("attempts", 0)
    return HandlerStateRow(
        event_id=event_id, handler=handler, max_attempts=5, updated_at=utcnow(), **values
    )


def run_until_settled(
    service: Service, event_id: str, outcome: dispatch.Outcome | None = None, rounds: int = 10
) -> None:
    """Play the worker: process, then process again once the follow-ups' delays have passed."""
    if outcome is None:
        outcome = service.dispatcher.process_events([event_id])[event_id]
    for _ in range(rounds):
        if not outcome.follow_ups:
            return
        time.sleep(max(f.delay for f in outcome.follow_ups))
        outcome = service.dispatcher.process_events([event_id])[event_id]


def test_success_runs_the_handler_once(post_event: PostEvent, service: Service, runs: Any) -> None:
    post_event(msg_id="msg_ok")
    outcome = service.dispatcher.process_events(["msg_ok"])["msg_ok"]
    assert outcome.ran == ["tests.support.handlers.record"]
    assert outcome.follow_ups == []
    assert event_status(service, "msg_ok") == "succeeded"
    assert attempts(service, "msg_ok") == [("record", 1, "succeeded")]
    assert [r["handler"] for r in runs()] == ["record"]


def test_processing_again_never_repeats_a_success(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(msg_id="msg_again")
    service.dispatcher.process_events(["msg_again"])["msg_again"]
    again = service.dispatcher.process_events(["msg_again"])["msg_again"]
    assert again.ran == []
    assert len(runs()) == 1


def test_failure_is_retried_with_backoff_then_succeeds(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(data={"id": "chat_r", "fail_handler": "record", "fail_times": 2}, msg_id="msg_retry")
    first = service.dispatcher.process_events(["msg_retry"])["msg_retry"]
    assert event_status(service, "msg_retry") == "failed"
    assert len(first.follow_ups) == 1
    # Backoff with the test settings' 0.1 s base: 0.1-0.15 s, then 0.2-0.3 s.
    assert 0.1 <= first.follow_ups[0].delay <= 0.15
    # A retry that comes early is refused: the handler is not due yet.
    early = service.dispatcher.process_events(["msg_retry"])["msg_retry"]
    assert early.ran == []
    assert early.follow_ups == []  # the retry already scheduled will come
    run_until_settled(service, "msg_retry", first)
    assert event_status(service, "msg_retry") == "succeeded"
    assert attempts(service, "msg_retry") == [
        ("record", 1, "failed"),
        ("record", 2, "failed"),
        ("record", 3, "succeeded"),
    ]
    with service.db.transaction() as session:
        failed = session.scalars(select(AttemptRow).where(AttemptRow.status == "failed")).all()
        assert all("planned failure" in (a.error or "") for a in failed)
        assert all("Traceback" in (a.traceback or "") for a in failed)


def test_backoff_doubles_and_is_capped() -> None:
    delays = [dispatch.backoff_seconds(n, base=1, cap=8) for n in range(1, 7)]
    for n, delay in enumerate(delays[:4], start=1):
        assert 2 ** (n - 1) <= delay <= 1.5 * 2 ** (n - 1)
    assert all(8 <= d <= 12 for d in delays[4:])


def test_exhausted_attempts_make_the_event_dead(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    # `alert` is registered with max_attempts=3.
    post_event("model.failed", {"id": "req_1", "fail_handler": "alert"}, msg_id="msg_dead")
    run_until_settled(service, "msg_dead")
    assert event_status(service, "msg_dead") == "dead"
    assert [a[2] for a in attempts(service, "msg_dead")] == ["failed", "failed", "failed"]
    with service.db.transaction() as session:
        row = session.get(EventRow, "msg_dead")
        assert row is not None
        assert row.due_at is None  # nothing left for the sweep
    assert service.dispatcher.process_events(["msg_dead"])["msg_dead"].ran == []


def test_handlers_of_one_event_fail_independently(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(
        "multi.step", {"id": "m1", "fail_handler": "step_two", "fail_times": 1}, msg_id="msg_multi"
    )
    first = service.dispatcher.process_events(["msg_multi"])["msg_multi"]
    assert sorted(h.rsplit(".", 1)[-1] for h in first.ran) == ["step_one", "step_two"]
    assert [f.handler.rsplit(".", 1)[-1] for f in first.follow_ups] == ["step_two"]
    run_until_settled(service, "msg_multi", first)
    assert event_status(service, "msg_multi") == "succeeded"
    # step_one succeeded once and was not re-run by step_two's retry.
    assert sorted((r["handler"], r["attempt"]) for r in runs()) == [
        ("step_one", 1),
        ("step_two", 1),
        ("step_two", 2),
    ]


def test_a_type_without_handlers_is_skipped(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event("embedding.created", {"id": "e1"}, msg_id="msg_skip")
    assert service.dispatcher.process_events(["msg_skip"])["msg_skip"].ran == []
    assert event_status(service, "msg_skip") == "skipped"
    assert runs() == []


def test_a_deleted_event_is_nothing_to_do(service: Service) -> None:
    assert service.dispatcher.process_events(["msg_never_stored"])["msg_never_stored"].ran == []


def test_concurrent_deliveries_run_a_handler_once(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(data={"id": "chat_c", "sleep": 0.5}, msg_id="msg_concurrent")
    barrier = threading.Barrier(6)

    def deliver() -> None:
        barrier.wait()
        service.dispatcher.process_events(["msg_concurrent"])["msg_concurrent"]

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(runs()) == 1
    assert attempts(service, "msg_concurrent") == [("record", 1, "succeeded")]


def test_a_held_claim_asks_to_come_back_after_the_lease(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(data={"id": "chat_h", "sleep": 1}, msg_id="msg_held")
    worker = threading.Thread(target=service.dispatcher.process_events, args=(["msg_held"],))
    worker.start()
    time.sleep(0.3)
    second = service.dispatcher.process_events(["msg_held"])["msg_held"]
    worker.join()
    assert second.ran == []
    assert len(second.follow_ups) == 1
    assert 0 < second.follow_ups[0].delay <= service.settings.handler_lease_seconds + 1
    assert len(runs()) == 1


def test_an_expired_lease_is_taken_over_and_the_lost_attempt_abandoned(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(msg_id="msg_lost")
    # What a worker killed mid-handler leaves behind: a running claim and attempt, no renewals.
    now = utcnow()
    with service.db.transaction() as session:
        session.add(
            state_row(
                "msg_lost",
                "tests.support.handlers.record",
                status="running",
                attempts=1,
                lease_until=now - timedelta(seconds=1),
            )
        )
        session.add(
            AttemptRow(
                event_id="msg_lost",
                handler="tests.support.handlers.record",
                number=1,
                status="running",
                started_at=now - timedelta(seconds=5),
            )
        )
    outcome = service.dispatcher.process_events(["msg_lost"])["msg_lost"]
    assert outcome.ran == ["tests.support.handlers.record"]
    assert attempts(service, "msg_lost") == [("record", 1, "abandoned"), ("record", 2, "succeeded")]
    assert event_status(service, "msg_lost") == "succeeded"


def test_the_lease_is_renewed_while_a_handler_runs(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    lease = service.settings.handler_lease_seconds
    post_event(data={"id": "chat_long", "sleep": lease * 1.5}, msg_id="msg_long")
    worker = threading.Thread(target=service.dispatcher.process_events, args=(["msg_long"],))
    worker.start()
    time.sleep(lease * 1.2)
    # Past the first lease, but renewed: another delivery must not take over.
    assert service.dispatcher.process_events(["msg_long"])["msg_long"].ran == []
    worker.join()
    assert len(runs()) == 1
    assert event_status(service, "msg_long") == "succeeded"


def test_a_handler_removed_from_the_registry_does_not_hold_the_event_open(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event("multi.step", {"id": "m3"}, msg_id="msg_removed")
    with service.db.transaction() as session:
        session.add(state_row("msg_removed", "tests.support.handlers.step_one", status="succeeded"))
        session.add(state_row("msg_removed", "tests.support.handlers.step_two", status="pending"))
    step_two = service.registry.get("tests.support.handlers.step_two")
    assert step_two is not None
    service.registry._handlers.pop(step_two.name)
    try:
        service.dispatcher.process_events(["msg_removed"])["msg_removed"]
        assert event_status(service, "msg_removed") == "succeeded"
        with service.db.transaction() as session:
            row = session.get(EventRow, "msg_removed")
            assert row is not None
            assert row.due_at is None
            # Its row is kept as it was, should the handler come back and the event be replayed.
            state = session.get(HandlerStateRow, ("msg_removed", step_two.name))
            assert state is not None
            assert state.status == "pending"
    finally:
        service.registry._handlers[step_two.name] = step_two


def test_a_handler_that_outlives_its_lease_does_not_overwrite_the_takeover(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(data={"id": "chat_slow", "sleep": 1}, msg_id="msg_overtaken")
    worker = threading.Thread(target=service.dispatcher.process_events, args=(["msg_overtaken"],))
    worker.start()
    time.sleep(0.4)
    # Meanwhile another worker, believing the first dead, claimed the handler (token 2).
    with service.db.transaction() as session:
        session.execute(
            update(store.handler_states)
            .where(store.handler_states.c.event_id == "msg_overtaken")
            .values(attempts=2, lease_until=utcnow() + timedelta(seconds=30))
        )
    worker.join()
    with service.db.transaction() as session:
        state = session.get(HandlerStateRow, ("msg_overtaken", "tests.support.handlers.record"))
        assert state is not None
        assert (state.status, state.attempts) == ("running", 2)
    assert attempts(service, "msg_overtaken") == [("record", 1, "abandoned")]


# --- a message's batch of events ------------------------------------------------------------


def test_a_batch_runs_every_handler_of_every_event_once(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(msg_id="msg_b1")
    post_event("multi.step", {"id": "x"}, msg_id="msg_b2")
    post_event("unknown.type", {"id": "y"}, msg_id="msg_b3")
    outcomes = service.dispatcher.process_events(["msg_b1", "msg_b2", "msg_b3", "msg_b1"])
    assert {k: sorted(v.ran) for k, v in outcomes.items()} == {
        "msg_b1": ["tests.support.handlers.record"],
        "msg_b2": ["tests.support.handlers.step_one", "tests.support.handlers.step_two"],
        "msg_b3": [],
    }
    assert not any(o.follow_ups for o in outcomes.values())
    assert sorted((r["event"], r["handler"]) for r in runs()) == [
        ("msg_b1", "record"),
        ("msg_b2", "step_one"),
        ("msg_b2", "step_two"),
    ]
    assert attempts(service, "msg_b1") == [("record", 1, "succeeded")]
    assert sorted(attempts(service, "msg_b2")) == [
        ("step_one", 1, "succeeded"),
        ("step_two", 1, "succeeded"),
    ]
    assert [event_status(service, i) for i in ("msg_b1", "msg_b2", "msg_b3")] == [
        "succeeded",
        "succeeded",
        "skipped",
    ]
    # The same message again (a redelivery): nothing runs, nothing is recorded.
    again = service.dispatcher.process_events(["msg_b1", "msg_b2", "msg_b3"])
    assert not any(o.ran or o.follow_ups for o in again.values())
    assert len(runs()) == 3
    assert attempts(service, "msg_b1") == [("record", 1, "succeeded")]


def test_a_failing_handler_in_a_batch_fails_alone_and_is_retried(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(
        "multi.step", {"id": "x", "fail_handler": "step_one", "fail_times": 1}, msg_id="msg_f"
    )
    post_event(msg_id="msg_fine")
    outcomes = service.dispatcher.process_events(["msg_f", "msg_fine"])
    [follow_up] = outcomes["msg_f"].follow_ups
    assert follow_up.handler == "tests.support.handlers.step_one"
    assert 0.1 <= follow_up.delay <= 0.15  # retry_base_seconds 0.1, plus jitter
    assert sorted(attempts(service, "msg_f")) == [
        ("step_one", 1, "failed"),
        ("step_two", 1, "succeeded"),
    ]
    assert event_status(service, "msg_f") == "failed"
    assert event_status(service, "msg_fine") == "succeeded"
    time.sleep(follow_up.delay)
    # The follow-up delivery claims the retry that is now due; step_two does not rerun.
    service.dispatcher.process_events(["msg_f", "msg_fine"])
    assert sorted(attempts(service, "msg_f")) == [
        ("step_one", 1, "failed"),
        ("step_one", 2, "succeeded"),
        ("step_two", 1, "succeeded"),
    ]
    assert event_status(service, "msg_f") == "succeeded"
    assert sorted(r["handler"] for r in runs() if r["event"] == "msg_f") == [
        "step_one",
        "step_one",
        "step_two",
    ]


def test_a_batch_leaves_a_handler_held_elsewhere_alone(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(msg_id="msg_held")
    post_event(msg_id="msg_free")
    with service.db.transaction() as session:
        session.add(
            HandlerStateRow(
                event_id="msg_held",
                handler="tests.support.handlers.record",
                status="running",
                attempts=1,
                max_attempts=5,
                lease_until=utcnow() + timedelta(seconds=3),
                updated_at=utcnow(),
            )
        )
    outcomes = service.dispatcher.process_events(["msg_held", "msg_free"])
    assert outcomes["msg_held"].ran == []
    [wait] = outcomes["msg_held"].follow_ups
    assert 2 < wait.delay <= 4  # come back after the other worker's lease
    assert outcomes["msg_free"].ran == ["tests.support.handlers.record"]
    assert [r["event"] for r in runs()] == ["msg_free"]


def test_a_batch_marks_its_events_processing_while_their_handlers_run(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event(data={"id": "chat_slow", "sleep": 1}, msg_id="msg_busy")
    worker = threading.Thread(target=service.dispatcher.process_events, args=(["msg_busy"],))
    worker.start()
    # The handler logs its run before it sleeps: from then on it is running, claimed.
    wait_until(runs, 10, interval=0.02, what="the handler to start")
    with service.db.transaction() as session:
        event = session.get(EventRow, "msg_busy")
        state = session.get(HandlerStateRow, ("msg_busy", "tests.support.handlers.record"))
        assert event is not None
        assert state is not None
        assert (event.status, state.status) == ("processing", "running")
        # The sweep looks again once the lease (and the grace) has run out.
        assert state.lease_until is not None
        assert event.due_at is not None
        grace = timedelta(seconds=service.settings.handoff_grace_seconds)
        assert event.due_at == state.lease_until + grace
    worker.join()
    assert event_status(service, "msg_busy") == "succeeded"


def test_a_batch_runs_a_replayed_handler_and_leaves_the_finished_one_alone(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    post_event("multi.step", {"id": "r"}, msg_id="msg_replayed")
    service.dispatcher.process_events(["msg_replayed"])
    with service.db.transaction() as session:
        replay.reset_for_replay(
            session,
            "msg_replayed",
            registry=service.registry,
            settings=service.settings,
            handler="tests.support.handlers.step_one",
        )
    # step_one's row is pending: the claim takes it; step_two's succeeded row is left alone.
    outcome = service.dispatcher.process_events(["msg_replayed"])["msg_replayed"]
    assert outcome.ran == ["tests.support.handlers.step_one"]
    assert sorted(attempts(service, "msg_replayed")) == [
        ("step_one", 1, "succeeded"),
        ("step_one", 2, "succeeded"),
        ("step_two", 1, "succeeded"),
    ]
    assert event_status(service, "msg_replayed") == "succeeded"


def test_an_event_is_succeeded_only_when_every_handler_is(
    post_event: PostEvent, service: Service, runs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished: list[str] = []

    class Observer(dispatch.DispatchObserver):
        def event_finished(self, status: str) -> None:
            finished.append(status)

    monkeypatch.setattr(service.dispatcher, "observer", Observer())
    # step_two succeeds in the batch while step_one fails: the event is failed, and was never
    # succeeded on the way (the metrics count each finished event once).
    post_event("multi.step", {"id": "h", "fail_handler": "step_one"}, msg_id="msg_half")
    post_event(msg_id="msg_whole")
    service.dispatcher.process_events(["msg_half", "msg_whole"])
    assert [event_status(service, i) for i in ("msg_half", "msg_whole")] == ["failed", "succeeded"]
    assert finished == ["succeeded"]


def test_a_batch_skips_deleted_events(post_event: PostEvent, service: Service, runs: Any) -> None:
    post_event(msg_id="msg_here")
    outcomes = service.dispatcher.process_events(["msg_gone", "msg_here"])
    assert outcomes["msg_gone"].ran == []
    assert outcomes["msg_here"].ran == ["tests.support.handlers.record"]


def test_concurrent_batches_of_the_same_events_run_each_handler_once(
    post_event: PostEvent, service: Service, runs: Any
) -> None:
    ids = [f"msg_c{n}" for n in range(20)]
    for event_id in ids:
        post_event(msg_id=event_id)
    errors: list[BaseException] = []

    def work(order: list[str]) -> None:
        try:
            service.dispatcher.process_events(order)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    workers = [
        threading.Thread(target=work, args=(ids,)),
        threading.Thread(target=work, args=(list(reversed(ids)),)),
        threading.Thread(target=work, args=(ids[::2] + ids[1::2],)),
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert sorted(r["event"] for r in runs()) == sorted(ids)
    assert {event_status(service, i) for i in ids} == {"succeeded"}


def test_a_batch_stopped_midway_keeps_no_lease_alive(
    post_event: PostEvent, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    post_event(msg_id="msg_stop1")
    post_event(msg_id="msg_stop2")
    record = service.registry.get("tests.support.handlers.record")
    assert record is not None

    def interrupted(event: Any) -> None:
        raise KeyboardInterrupt  # the worker is being stopped

    monkeypatch.setitem(
        service.registry._handlers, record.name, dataclasses.replace(record, func=interrupted)
    )
    with pytest.raises(KeyboardInterrupt):
        service.dispatcher.process_events(["msg_stop1", "msg_stop2"])
    # Both were claimed; neither lease is renewed any more, so both can be taken over.
    assert service.dispatcher.leases._held == {}
