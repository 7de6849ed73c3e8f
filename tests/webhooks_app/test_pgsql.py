"""The PostgreSQL hot-path statements against a real database: the intake's insert."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select

from tests.support.signing import delivery
from webhooks_app import pgsql
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
