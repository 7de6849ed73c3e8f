"""The thin tasks around the dispatcher: a message that meets a database error is tried again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from tests.support.events import attempts, event_status
from webhooks_app import database
from webhooks_app.service import Service
from workers import tasks


def test_a_message_whose_connection_was_dropped_is_tried_again_and_handled(
    app: Flask,
    service: Service,
    post_event: Callable[..., Any],
    runs: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert post_event(msg_id="msg_dropped").status_code == 200
    # The worker's connection, in steady use (so not pinged), dropped by the server as in a
    # failover: the message's first transaction fails on it.
    monkeypatch.setattr(database, "REST_BEFORE_PING_SECONDS", 3600.0)
    with service.db.begin() as connection:
        (dropped,) = connection.execute("SELECT pg_backend_pid()").fetchone() or (None,)
    with service.db.engine.connect() as admin:
        assert admin.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": dropped})
    with app.app_context():
        first = tasks.process_events.apply(args=(["msg_dropped"],))
    # Celery runs the retry at once in this (eager) mode; the result is the retry's.
    assert first.successful()
    assert "tried again in 1 s (retry 1 of 5): OperationalError" in caplog.text
    assert [run["event"] for run in runs()] == ["msg_dropped"]
    assert event_status(service, "msg_dropped") == "succeeded"


def test_a_message_that_keeps_failing_is_left_to_the_sweep(
    app: Flask,
    service: Service,
    post_event: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert post_event(msg_id="msg_locked").status_code == 200
    # A real failure each time: the worker's connection gives up waiting for a lock after
    # 50 ms (LockNotAvailable, an OperationalError) while another transaction holds the row.
    with service.db.begin() as connection:
        connection.execute("SET lock_timeout = '50ms'")
    try:
        with service.db.engine.begin() as holder:
            holder.execute(text("SELECT id FROM events WHERE id = 'msg_locked' FOR UPDATE"))
            with app.app_context():
                result = tasks.process_events.apply(args=(["msg_locked"],))
    finally:
        with service.db.begin() as connection:
            connection.execute("RESET lock_timeout")
    assert result.state == "FAILURE"
    assert isinstance(result.result, sa_exc.OperationalError)
    assert isinstance(result.result.orig, psycopg.errors.LockNotAvailable)
    # Nothing was claimed; the event keeps its due time, and the sweep publishes it again.
    assert event_status(service, "msg_locked") in {"received", "queued"}
    assert attempts(service, "msg_locked") == []
    assert caplog.text.count("tried again in") == tasks.DATABASE_RETRIES
    assert "retries used up" in caplog.text
