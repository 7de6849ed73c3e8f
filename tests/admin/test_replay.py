"""Replay: a new run of chosen handlers; attempts are appended, never rewritten."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.support.events import event_status
from webhooks_app import actions, replay
from webhooks_app.config import Settings
from webhooks_app.service import Service
from webhooks_app.store import (
    AttemptRow,
    EventFilter,
    EventRow,
    EventStatus,
    HandlerStateRow,
    HandlerStatus,
)

PostEvent = Callable[..., Any]
ALERT = "tests.support.handlers.alert"  # model.failed, max_attempts=3
RECORD = "tests.support.handlers.record"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # No backoff: a failed handler is due again at once, so tests drive retries directly.
    return settings.replace(retry_base_seconds=0.0)


def attempts(service: Service, event_id: str) -> list[tuple[str, int, int, str, str | None]]:
    with service.db.transaction() as session:
        rows = session.scalars(
            select(AttemptRow).where(AttemptRow.event_id == event_id).order_by(AttemptRow.id)
        )
        return [(a.handler, a.number, a.run, a.status, a.error) for a in rows]


def state(service: Service, event_id: str, handler: str) -> HandlerStateRow:
    with service.db.transaction() as session:
        row = session.get(HandlerStateRow, (event_id, handler))
        assert row is not None
        return row


def make_dead(service: Service, post_event: PostEvent, event_id: str) -> None:
    post_event(
        "model.failed", {"id": "m", "fail_handler": "alert", "fail_times": 3}, msg_id=event_id
    )
    for _ in range(3):
        service.dispatcher.process_events([event_id])[event_id]
    assert event_status(service, event_id) == EventStatus.DEAD


def test_replaying_a_dead_event_appends_a_new_run(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    make_dead(service, post_event, "msg_dead")
    before = attempts(service, "msg_dead")
    assert [(n, run, status) for _, n, run, status, _ in before] == [
        (1, 1, "failed"),
        (2, 1, "failed"),
        (3, 1, "failed"),
    ]

    response = client.post("/api/events/msg_dead/replay", headers=auth_headers)
    assert response.status_code == 202, response.get_json()
    assert response.get_json() == {
        "id": "msg_dead",
        "object": "event.replay",
        "handlers": [ALERT],
        "status": "received",
    }
    # Handed to the broker after the commit, like a new event.
    assert service.relay.relay_once() == 1
    assert event_status(service, "msg_dead") == EventStatus.QUEUED
    fresh = state(service, "msg_dead", ALERT)
    assert (fresh.status, fresh.attempts, fresh.run) == (HandlerStatus.PENDING, 0, 2)

    service.dispatcher.process_events(["msg_dead"])["msg_dead"]  # attempt 4 > fail_times: succeeds
    after = attempts(service, "msg_dead")
    assert after[:3] == before  # history untouched
    assert after[3][1:4] == (4, 2, "succeeded")
    assert event_status(service, "msg_dead") == EventStatus.SUCCEEDED


def test_a_replayed_run_gets_a_fresh_attempt_budget(
    post_event: PostEvent, service: Service
) -> None:
    make_dead(service, post_event, "msg_budget")
    with service.db.transaction() as session:
        replay.reset_for_replay(
            session, "msg_budget", registry=service.registry, settings=service.settings
        )
    # fail_times 3 was exhausted, so make it fail forever: three more attempts, then dead.
    with service.db.transaction() as session:
        row = session.get(EventRow, "msg_budget")
        assert row is not None
        row.payload = {**row.payload, "data": {**row.payload["data"], "fail_times": 99}}
    for _ in range(3):
        service.dispatcher.process_events(["msg_budget"])["msg_budget"]
    numbers = [(n, run, s) for _, n, run, s, _ in attempts(service, "msg_budget")]
    assert numbers[3:] == [(4, 2, "failed"), (5, 2, "failed"), (6, 2, "failed")]
    assert event_status(service, "msg_budget") == EventStatus.DEAD


def test_a_succeeded_event_can_be_run_again(post_event: PostEvent, service: Service) -> None:
    post_event("chat.completion", {"id": "c"}, msg_id="msg_again")
    service.dispatcher.process_events(["msg_again"])["msg_again"]
    with service.db.transaction() as session:
        replay.reset_for_replay(
            session, "msg_again", registry=service.registry, settings=service.settings
        )
    service.dispatcher.process_events(["msg_again"])["msg_again"]
    # Two successes, one per run: the one-success-per-run index allows exactly this.
    assert [(n, run, s) for _, n, run, s, _ in attempts(service, "msg_again")] == [
        (1, 1, "succeeded"),
        (2, 2, "succeeded"),
    ]


def test_replaying_one_handler_leaves_the_others(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    post_event("multi.step", {"id": "s"}, msg_id="msg_one")
    service.dispatcher.process_events(["msg_one"])["msg_one"]
    step_one = "tests.support.handlers.step_one"
    response = client.post(
        "/api/events/msg_one/replay", json={"handler": step_one}, headers=auth_headers
    )
    assert response.status_code == 202
    assert response.get_json()["handlers"] == [step_one]
    service.dispatcher.process_events(["msg_one"])["msg_one"]
    ran = [(h.rsplit(".", 1)[1], n, run) for h, n, run, _, _ in attempts(service, "msg_one")]
    assert sorted(ran) == [("step_one", 1, 1), ("step_one", 2, 2), ("step_two", 1, 1)]


def test_a_running_handler_is_not_replayed(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    post_event("chat.completion", {"id": "c"}, msg_id="msg_busy")
    service.dispatcher.process_events(["msg_busy"])["msg_busy"]
    with service.db.transaction() as session:
        row = session.get(HandlerStateRow, ("msg_busy", RECORD))
        assert row is not None
        row.status = HandlerStatus.RUNNING
    response = client.post("/api/events/msg_busy/replay", headers=auth_headers)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "handler_running"
    assert state(service, "msg_busy", RECORD).run == 1


def test_replay_refusals(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent
) -> None:
    post_event("chat.completion", {"id": "c"}, msg_id="msg_refuse")
    post_event("nobody.handles", {"id": "n"}, msg_id="msg_unhandled")
    cases = [
        ("/api/events/nope/replay", None, 404, "event_not_found"),
        ("/api/events/msg_refuse/replay", {"handler": "nope"}, 400, "unknown_handler"),
        ("/api/events/msg_refuse/replay", {"handler": 3}, 400, "invalid_parameter"),
        ("/api/events/msg_refuse/replay", [1], 400, "invalid_json"),
        ("/api/events/msg_unhandled/replay", None, 409, "no_handlers"),
    ]
    for path, body, status, code in cases:
        response = client.post(path, json=body, headers=auth_headers)
        assert response.status_code == status, (path, body, response.get_json())
        assert response.get_json()["error"]["code"] == code


def test_bulk_selection_takes_only_failed_and_dead(post_event: PostEvent, service: Service) -> None:
    make_dead(service, post_event, "msg_sel_dead")
    post_event("model.failed", {"id": "f", "fail_handler": "alert"}, msg_id="msg_sel_failed")
    service.dispatcher.process_events(["msg_sel_failed"])["msg_sel_failed"]
    post_event("chat.completion", {"id": "ok"}, msg_id="msg_sel_ok")
    service.dispatcher.process_events(["msg_sel_ok"])["msg_sel_ok"]
    with service.db.transaction() as session:
        chosen = actions.replayable_ids(session, EventFilter())
        assert set(chosen) == {"msg_sel_dead", "msg_sel_failed"}
        only_dead = actions.replayable_ids(session, EventFilter(status="dead"))
        assert only_dead == ["msg_sel_dead"]
        assert actions.replayable_ids(session, EventFilter(status="succeeded")) == []
        # data_id narrows the selection like it narrows the list (it was ignored once).
        assert actions.replayable_ids(session, EventFilter(data_id="f")) == ["msg_sel_failed"]
        result = actions.replay_many(session, chosen, service=service)
    assert set(result.replayed) == {"msg_sel_dead", "msg_sel_failed"}
    assert result.skipped == {}


# --- which handlers: failed (the default), all, or one ----------------------------------------

STEP_ONE = "tests.support.handlers.step_one"
STEP_TWO = "tests.support.handlers.step_two"


def half_failed(service: Service, post_event: PostEvent, event_id: str) -> None:
    """step_one succeeds, step_two fails its first attempt."""
    post_event("multi.step", {"id": "s", "fail_handler": "step_two"}, msg_id=event_id)
    service.dispatcher.process_events([event_id])
    assert state(service, event_id, STEP_ONE).status == HandlerStatus.SUCCEEDED
    assert state(service, event_id, STEP_TWO).status == HandlerStatus.FAILED


def test_replay_defaults_to_the_failed_handlers(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    half_failed(service, post_event, "msg_default")
    response = client.post("/api/events/msg_default/replay", headers=auth_headers)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["handlers"] == [STEP_TWO]
    # The handler that succeeded keeps its run: its side effects are not repeated.
    assert state(service, "msg_default", STEP_ONE).run == 1
    assert state(service, "msg_default", STEP_TWO).run == 2


def test_replay_all_handlers_when_asked(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    half_failed(service, post_event, "msg_all")
    response = client.post(
        "/api/events/msg_all/replay", json={"handlers": "all"}, headers=auth_headers
    )
    assert response.status_code == 202
    assert sorted(response.get_json()["handlers"]) == [STEP_ONE, STEP_TWO]
    explicit = client.post(
        "/api/events/msg_all/replay", json={"handlers": "failed"}, headers=auth_headers
    )
    assert explicit.status_code == 409  # both are pending now: nothing has failed
    assert explicit.get_json()["error"]["code"] == "no_handlers"


def test_replay_choice_refusals(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    post_event("chat.completion", {"id": "c"}, msg_id="msg_fine")
    service.dispatcher.process_events(["msg_fine"])
    nothing_failed = client.post("/api/events/msg_fine/replay", headers=auth_headers)
    assert nothing_failed.status_code == 409
    error = nothing_failed.get_json()["error"]
    assert (error["code"], error["param"]) == ("no_handlers", "handlers")
    bad = client.post(
        "/api/events/msg_fine/replay", json={"handlers": "some"}, headers=auth_headers
    )
    assert bad.status_code == 400
    assert bad.get_json()["error"] == {
        "type": "invalid_request_error",
        "message": "handlers must be 'failed' or 'all'.",
        "param": "handlers",
        "code": "invalid_parameter",
    }


def test_the_detail_page_offers_failed_all_or_one(
    admin_client: FlaskClient, post_event: PostEvent, service: Service
) -> None:
    from tests.conftest import csrf_token

    half_failed(service, post_event, "msg_page")
    page = admin_client.get("/admin/events/msg_page").get_data(as_text=True)
    assert '<option value="failed" selected>failed handlers</option>' in page
    assert '<option value="all">all handlers</option>' in page
    assert f'<option value="handler:{STEP_ONE}">' in page
    token = csrf_token(admin_client, "/admin/events/msg_page")

    def replay_with(choice: str) -> int:
        return admin_client.post(
            "/admin/events/msg_page/replay", data={"handlers": choice, "csrf_token": token}
        ).status_code

    assert replay_with("failed") == 302
    assert (state(service, "msg_page", STEP_ONE).run, state(service, "msg_page", STEP_TWO).run) == (
        1,
        2,
    )
    assert replay_with(f"handler:{STEP_ONE}") == 302
    assert state(service, "msg_page", STEP_ONE).run == 2
    assert replay_with("all") == 302
    assert (state(service, "msg_page", STEP_ONE).run, state(service, "msg_page", STEP_TWO).run) == (
        3,
        3,
    )
    assert replay_with("neither") == 400
