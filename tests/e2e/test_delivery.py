"""End to end on real processes: delivery to a handler through a Celery worker, a Redis outage
during intake, a worker killed mid-handler, and a storm of concurrent duplicates."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.support.signing import delivery

pytestmark = pytest.mark.e2e


def new_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def test_a_signed_post_reaches_the_handler_through_a_worker(stack: Stack) -> None:
    event_id = new_id()
    response = stack.post(
        "chat.completion", {"id": "chat_e2e", "status": "completed"}, msg_id=event_id
    )
    assert response.status_code == 200
    assert response.json() == {"id": event_id, "status": "accepted"}
    stack.wait_for_status(event_id, "succeeded", timeout=30)
    assert [run["handler"] for run in stack.runs(event_id)] == ["record"]
    [attempt] = stack.event(event_id)["attempts"]
    assert attempt["status"] == "succeeded"


def test_events_stored_while_redis_is_down_are_processed_once_it_is_back(stack: Stack) -> None:
    stack.redis.kill()
    ids = [new_id() for _ in range(3)]
    for event_id in ids:
        response = stack.post(msg_id=event_id)
        # Stored durably even though the broker is unreachable.
        assert response.status_code == 200
        assert response.json()["status"] == "accepted"
    for event_id in ids:
        assert stack.status(event_id) == "received"
    stack.restart_redis()
    for event_id in ids:
        stack.wait_for_status(event_id, "succeeded", timeout=90)
        assert len(stack.runs(event_id)) == 1


def test_a_worker_killed_mid_handler_is_recovered_and_the_handler_succeeds_once(
    stack: Stack,
) -> None:
    event_id = new_id()
    assert stack.post(data={"id": "chat_kill", "sleep": 4}, msg_id=event_id).status_code == 200
    from tests.support.processes import wait_until

    wait_until(lambda: stack.runs(event_id), 30, what="the handler to start")
    stack.worker.kill()
    assert stack.status(event_id) == "processing"
    stack.start_worker("worker-restarted")
    # Redelivery takes the visibility timeout (10 s here, 60 s by default) plus the lease.
    stack.wait_for_status(event_id, "succeeded", timeout=120)
    statuses = [attempt["status"] for attempt in stack.event(event_id)["attempts"]]
    assert statuses == ["abandoned", "succeeded"]
    assert len(stack.runs(event_id)) == 2  # started twice, completed once


def test_200_concurrent_duplicates_store_one_event_and_run_it_once(stack: Stack) -> None:
    event_id = new_id()
    body, headers = delivery(data={"id": "chat_dup"}, msg_id=event_id)

    def send(_: int) -> dict[str, str]:
        response = httpx.post(
            f"{stack.base_url}/webhooks/events", content=body, headers=headers, timeout=30
        )
        assert response.status_code == 200
        result: dict[str, str] = response.json()
        return result

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(send, range(200)))
    assert sorted(r["status"] for r in results) == ["accepted"] + ["duplicate"] * 199
    assert {r["id"] for r in results} == {event_id}
    stack.wait_for_status(event_id, "succeeded", timeout=30)
    assert len(stack.runs(event_id)) == 1
