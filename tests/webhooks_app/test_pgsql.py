"""The PostgreSQL hot-path statements against a real database: the intake's insert, and the
worker's statements sent together."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
from collections.abc import Sequence
from datetime import timedelta

import psycopg
import pytest
from flask import Flask
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text

from tests.support.events import event_status
from tests.support.signing import delivery
from webhooks_app import database, libpq, pgsql
from webhooks_app.service import Service
from webhooks_app.store import EventRow, NewEvent, utcnow

GOOD_BODY = b'{"event": "chat.completion", "data": {"id": "chat_1"}}'
# Valid JSON that PostgreSQL's JSONB refuses: an unstorable event.
NUL_BODY = b'{"event": "chat.completion", "data": {"id": "a\\u0000b"}}'


def new_event(event_id: str, body: bytes = GOOD_BODY) -> NewEvent:
    now = utcnow()
    return NewEvent(
        id=event_id,
        type="chat.completion",
        raw_body=body,
        headers={"webhook-id": event_id},
        data_id="chat_1",
        webhook_timestamp=int(now.timestamp()),
        received_at=now,
        due_at=now + timedelta(seconds=60),
    )


def stored_ids(service: Service) -> set[str]:
    with service.db.transaction() as session:
        return set(session.scalars(select(EventRow.id)))


def test_an_event_is_stored_once_and_its_repeat_reported(service: Service) -> None:
    execute = service.db.execute_autocommit
    assert pgsql.insert_event(execute, new_event("msg_once")) is True
    assert pgsql.insert_event(execute, new_event("msg_once")) is False
    assert stored_ids(service) == {"msg_once"}
    with service.db.transaction() as session:
        row = session.get(EventRow, "msg_once")
        assert row is not None
        assert row.raw_body == GOOD_BODY
        assert row.payload == {"event": "chat.completion", "data": {"id": "chat_1"}}
        assert row.headers == {"webhook-id": "msg_once"}
        assert row.status == "received"


def test_an_unstorable_event_raises_a_data_error(service: Service) -> None:
    with pytest.raises(sa_exc.DataError):
        pgsql.insert_event(service.db.execute_autocommit, new_event("msg_nul", NUL_BODY))
    assert stored_ids(service) == set()


def test_concurrent_deliveries_are_each_stored_once(app: Flask, service: Service) -> None:
    ids = [f"msg_conc_{n}" for n in range(12)]
    answers: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def deliver(event_id: str) -> None:
        body, headers = delivery(msg_id=event_id)
        response = app.test_client().post("/webhooks/events", data=body, headers=headers)
        with lock:
            answers.append((event_id, response.status_code, response.get_json()["status"]))

    # Every id twice, from 24 threads at once: the unique key decides between racing duplicates.
    threads = [threading.Thread(target=deliver, args=(i,)) for i in ids + ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(answers) == 24
    assert {status for _, status, _ in answers} == {200}
    for event_id in ids:
        outcomes = sorted(answer for i, _, answer in answers if i == event_id)
        assert outcomes == ["accepted", "duplicate"]
    with service.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(EventRow)) == len(ids)


def test_a_nul_in_a_text_value_is_refused_not_truncated(service: Service) -> None:
    # libpq would read a text parameter only up to the NUL: "chat.completion\x00x" would be
    # stored as "chat.completion". It is refused, as psycopg itself refuses it.
    event = dataclasses.replace(new_event("msg_nul_type"), type="chat.completion\x00x")
    with pytest.raises(sa_exc.DataError):
        pgsql.insert_event(service.db.execute_autocommit, event)
    assert stored_ids(service) == set()


def test_a_connection_killed_by_the_server_is_replaced_once(service: Service) -> None:
    execute = service.db.execute_autocommit
    assert pgsql.insert_event(execute, new_event("msg_before")) is True
    with service.db.engine.connect() as connection:
        killed = connection.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    assert killed >= 1
    # The thread's connection is dead; the statement is retried once on a new one, prepared
    # there again.
    assert pgsql.insert_event(execute, new_event("msg_after")) is True
    assert stored_ids(service) == {"msg_before", "msg_after"}


def test_a_pipelined_transaction_runs_its_statements_in_order_and_commits(
    service: Service,
) -> None:
    assert pgsql.insert_event(service.db.execute_autocommit, new_event("msg_together")) is True
    with service.db.pipelined_transaction() as pipeline:
        locked = pgsql.lock_and_load(pipeline, ["msg_together", "msg_missing"]).result()
        assert [(e.id, e.type, e.payload) for e in locked] == [
            (
                "msg_together",
                "chat.completion",
                {"event": "chat.completion", "data": {"id": "chat_1"}},
            )
        ]
        # Each statement starts after the one before it ended, and sees what it wrote: the
        # property a read placed after a lock relies on.
        pipeline.send("UPDATE events SET status = 'queued' WHERE id = 'msg_together'")
        read = pipeline.send("SELECT status FROM events WHERE id = 'msg_together'")
        assert read.rows() == [(b"queued",)]
        # A write nobody reads goes with the COMMIT, and is committed.
        pipeline.send("UPDATE events SET status = 'succeeded' WHERE id = 'msg_together'")
    assert event_status(service, "msg_together") == "succeeded"


def test_values_come_back_as_they_were_stored(service: Service) -> None:
    event = new_event("msg_values")
    assert pgsql.insert_event(service.db.execute_autocommit, event) is True
    with service.db.pipelined_transaction() as pipeline:
        loading = pgsql.lock_and_load(pipeline, ["msg_values"])
    [locked] = loading.result()
    # Microseconds and the time zone survive PostgreSQL's binary format.
    assert locked.received_at == event.received_at
    assert locked.received_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "event_id",
    ['msg_"quoted"', "msg_back\\slash", "msg_{braces},comma", "NULL", "msg_é_ü", " msg_spaced "],
)
def test_ids_sent_as_arrays_match_whatever_their_characters(
    service: Service, event_id: str
) -> None:
    assert pgsql.insert_event(service.db.execute_autocommit, new_event(event_id)) is True
    with service.db.pipelined_transaction() as pipeline:
        loading = pgsql.lock_and_load(pipeline, [event_id, "msg_other"])
    assert [e.id for e in loading.result()] == [event_id]


def test_a_statement_larger_than_the_sockets_buffers_is_sent_whole(service: Service) -> None:
    assert pgsql.insert_event(service.db.execute_autocommit, new_event("msg_among_many")) is True
    many = [f"msg_absent_{n:07d}" for n in range(50_000)] + ["msg_among_many"]  # ~1 MB
    with service.db.pipelined_transaction() as pipeline:
        # A small send buffer, so that libpq cannot hand the statement to the kernel at once.
        with socket.socket(fileno=os.dup(pipeline.connection.pgconn.socket)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        loading = pgsql.lock_and_load(pipeline, many)
        counting = pipeline.send("SELECT count(*) FROM events")
    assert [e.id for e in loading.result()] == ["msg_among_many"]
    assert counting.rows() == [((1).to_bytes(8, "big"),)]


def test_sql_text_takes_no_parameters(service: Service) -> None:
    with service.db.pipelined_transaction() as pipeline, pytest.raises(TypeError):
        pipeline.send("SELECT 1", [b"1"])


@pytest.mark.parametrize("read_the_failure", [True, False], ids=["read", "never read"])
def test_a_failure_in_a_pipelined_transaction_raises_and_rolls_it_all_back(
    service: Service, read_the_failure: bool
) -> None:
    assert pgsql.insert_event(service.db.execute_autocommit, new_event("msg_kept")) is True
    used: list[int] = []

    def update_then_fail() -> None:
        with service.db.pipelined_transaction() as pipeline:
            used.append(pipeline.backend_pid)
            pipeline.send("UPDATE events SET status = 'queued' WHERE id = 'msg_kept'")
            failing = pipeline.send("SELECT 1 / 0")
            after = pipeline.send("SELECT 1")
            if read_the_failure:
                with pytest.raises(psycopg.errors.DivisionByZero):
                    failing.rows()
                # A statement the failure aborted reports the failure.
                with pytest.raises(psycopg.errors.DivisionByZero):
                    after.rows()
                raise RuntimeError("the caller gives up")

    with pytest.raises(RuntimeError if read_the_failure else psycopg.errors.DivisionByZero):
        update_then_fail()
    assert event_status(service, "msg_kept") == "received"  # the update was rolled back
    with service.db.pipelined_transaction() as pipeline:
        assert pipeline.backend_pid == used[0]  # the same connection, usable again
        loading = pgsql.lock_and_load(pipeline, ["msg_kept"])
    assert [e.id for e in loading.result()] == ["msg_kept"]


def test_a_statement_that_fails_to_prepare_is_prepared_again_next_time(service: Service) -> None:
    broken = libpq.Prepared("webhooks_test_probe", "SELECT no_such_column FROM events")

    def send_broken() -> None:
        with service.db.pipelined_transaction() as pipeline:
            pipeline.send(broken)

    with pytest.raises(psycopg.errors.UndefinedColumn):
        send_broken()
    fixed = dataclasses.replace(broken, sql="SELECT count(*) FROM events WHERE id = $1")
    with service.db.pipelined_transaction() as pipeline:
        counting = pipeline.send(fixed, [b"msg_none"])
    assert counting.rows() == [((0).to_bytes(8, "big"),)]


def test_a_statement_the_server_forgot_is_prepared_again(service: Service) -> None:
    # DEALLOCATE behind our back, or a connection pooler that moved us to another server
    # connection: the intake's insert prepares it again and succeeds; a pipelined transaction
    # fails once, and the next one prepares it again.
    engine = service.db.autocommit_engine
    assert engine is not None
    fairy = engine.raw_connection()
    try:
        connection = fairy.driver_connection
        assert isinstance(connection, psycopg.Connection)
        prepared = fairy.info.setdefault("prepared_statements", set())  # as the intake keeps it
        insert = pgsql._INSERT_EVENT
        assert libpq.run_prepared(connection, prepared, insert, _insert_params("msg_first"))
        connection.execute(f"DEALLOCATE {insert.name}")
        assert libpq.run_prepared(connection, prepared, insert, _insert_params("msg_second"))
    finally:
        fairy.close()
    with service.db.pipelined_transaction() as pipeline:
        pgsql.lock_and_load(pipeline, ["msg_first"])
        pipeline.send("DEALLOCATE webhooks_lock_and_load_events")

    def load() -> list[str]:
        with service.db.pipelined_transaction() as pipeline:
            loading = pgsql.lock_and_load(pipeline, ["msg_first", "msg_second"])
        return [e.id for e in loading.result()]

    with pytest.raises(psycopg.errors.InvalidSqlStatementName):
        load()
    assert load() == ["msg_first", "msg_second"]


def _insert_params(event_id: str) -> list[bytes | None]:
    """The parameters the intake's insert sends for a new event."""
    captured: list[list[bytes | None]] = []

    def capture(_statement: libpq.Prepared, params: Sequence[bytes | None]) -> list[libpq.Values]:
        captured.append(list(params))
        return []

    pgsql.insert_event(capture, new_event(event_id))
    return captured[0]


def test_a_connection_lost_in_a_pipelined_transaction_is_dropped(service: Service) -> None:
    with service.db.pipelined_transaction() as pipeline:
        first = pipeline.backend_pid

    def lose_the_connection() -> None:
        with service.db.pipelined_transaction() as pipeline:
            assert pipeline.backend_pid == first
            pipeline.send(f"SELECT pg_terminate_backend({first})")
            pipeline.send("SELECT 1").rows()

    with pytest.raises(psycopg.OperationalError):
        lose_the_connection()
    with service.db.pipelined_transaction() as pipeline:
        assert pipeline.backend_pid != first
        assert pipeline.send("SELECT 1").rows() == [((1).to_bytes(4, "big"),)]


def test_a_connection_that_rested_is_pinged_and_replaced_if_dead(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    with service.db.pipelined_transaction() as pipeline:
        first = pipeline.backend_pid
    with service.db.engine.connect() as admin:
        assert admin.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    monkeypatch.setattr(database, "REST_BEFORE_PING_SECONDS", 0.0)
    with service.db.pipelined_transaction() as pipeline:
        assert pipeline.backend_pid != first


def test_the_dispatchers_statements_are_planned_once_through_their_indexes(
    service: Service,
) -> None:
    # A plan made while the table is nearly empty (a new deployment) must not be a sequential
    # scan kept while the table grows: the dispatcher's connections plan each statement once,
    # generically, with sequential scans priced out.
    with service.db.pipelined_transaction() as pipeline:
        pipeline.send(
            "PREPARE lock_probe(text[]) AS SELECT id FROM events WHERE id = ANY($1) FOR UPDATE"
        )
        plan = pipeline.send("EXPLAIN (FORMAT JSON) EXECUTE lock_probe('{msg_a,msg_b}')")
        pipeline.send("DEALLOCATE lock_probe")
    [[explained]] = plan.rows()
    assert explained is not None
    text_plan = json.dumps(json.loads(explained))
    assert "$1" in text_plan  # the generic plan, made for any parameter
    assert "Seq Scan" not in text_plan
    assert "pk_events" in text_plan
    # The sessions (admin pages, the one-event path) plan each execution for its parameters.
    with service.db.engine.connect() as session_connection:
        assert session_connection.scalar(text("SHOW plan_cache_mode")) == "force_custom_plan"
