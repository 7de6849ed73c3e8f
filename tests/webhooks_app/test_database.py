"""The database handle: errors never list the values bound to a statement (they get logged;
the server's own message may still quote the value it refused, the others stay out), and the
intake's pool holds a fixed number of connections."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, text

from webhooks_app import database, engine, store
from webhooks_app.config import Settings
from webhooks_app.database import Database
from webhooks_app.errors import DATABASE_ERRORS, database_error
from webhooks_app.service import Service
from webhooks_app.store import EventStatus, utcnow

SECRET = "whsec_value_that_must_not_be_logged"


def test_a_session_error_hides_its_parameters(service: Service) -> None:
    with pytest.raises(sa_exc.DataError) as raised, service.db.transaction() as session:
        session.execute(text("SELECT CAST(:bad AS integer), :v"), {"bad": "x", "v": SECRET})
    assert SECRET not in str(raised.value)


def test_an_autocommit_error_is_sqlalchemys_and_hides_its_parameters(service: Service) -> None:
    with pytest.raises(sa_exc.DataError) as raised:
        service.db.execute_autocommit(
            "SELECT CAST(%(bad)s AS integer), %(v)s::text", {"bad": "x", "v": SECRET}
        )
    assert SECRET not in str(raised.value)


def _backends_at_once(db: Database, requests: int) -> set[int]:
    """The backends that ``requests`` concurrent intake statements ran on."""

    def one() -> int:
        rows = db.execute_autocommit("SELECT pg_backend_pid() FROM pg_sleep(0.1)", {})
        return int(rows[0][0])

    with ThreadPoolExecutor(requests) as pool:
        return set(pool.map(lambda _: one(), range(requests)))


def test_the_intake_holds_web_threads_connections_and_no_more(settings: Settings) -> None:
    # More requests at once than WEB_THREADS (as a gevent worker serves) wait for a pooled
    # connection: none is opened for the burst and closed after it, a new backend each time.
    db = Database()
    db.configure(replace(settings, web_threads=2))
    try:
        first = _backends_at_once(db, 8)
        again = _backends_at_once(db, 8)
    finally:
        db.dispose()
    assert len(first) == 2
    assert again == first


def test_a_delivery_that_waits_too_long_for_a_connection_is_a_503(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "INTAKE_POOL_TIMEOUT_SECONDS", 0.2)
    db = Database()
    db.configure(replace(settings, web_threads=1))
    try:
        with ThreadPoolExecutor(1) as pool:
            holding = pool.submit(db.execute_autocommit, "SELECT pg_sleep(1.5)", {})
            time.sleep(0.3)
            with pytest.raises(DATABASE_ERRORS) as raised:
                db.execute_autocommit("SELECT 1", {})
            holding.result()
    finally:
        db.dispose()
    assert database_error(raised.value).status == 503


def test_an_intake_connection_killed_under_the_pool_is_replaced_on_the_next_statement(
    settings: Settings, service: Service
) -> None:
    db = Database()
    db.configure(replace(settings, web_threads=1))
    try:
        [(first,)] = db.execute_autocommit("SELECT pg_backend_pid()", {})
        with service.db.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        time.sleep(0.2)
        # The statement meets the dead connection, which is dropped with its cursor; it runs
        # again on a new connection, and so does the next one.
        [(second,)] = db.execute_autocommit("SELECT pg_backend_pid()", {})
        [(third,)] = db.execute_autocommit("SELECT pg_backend_pid()", {})
    finally:
        db.dispose()
    assert second != first
    assert third == second


def test_a_transition_on_a_connection_pinged_after_a_rest_is_committed(
    service: Service, post_event: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert post_event(msg_id="msg_pinged").status_code == 200
    # Every checkout pings: the ping must not leave a transaction open around the caller's,
    # which would then be a savepoint, rolled back when the connection goes back to the pool.
    monkeypatch.setattr(database, "REST_BEFORE_PING_SECONDS", 0.0)
    with service.db.begin():
        pass  # a connection that has been in the pool, and is pinged on its next checkout
    with service.db.begin() as connection:
        taken = engine.take_for_handoff(
            connection, now=utcnow(), limit=10, requeue_after=timedelta(seconds=60)
        )
    assert taken == ["msg_pinged"]
    with service.db.transaction() as session:
        status = session.scalar(
            select(store.events.c.status).where(store.events.c.id == "msg_pinged")
        )
    assert status == EventStatus.QUEUED
