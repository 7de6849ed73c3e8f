"""GET /api/events and /api/events/<id>: auth, filters, cursor pagination, attempts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from webhooks_app import create_app, store
from webhooks_app.config import Settings
from webhooks_app.service import Service

PostEvent = Callable[..., Any]


def test_token_is_required(client: FlaskClient) -> None:
    response = client.get("/api/events")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_api_token"
    wrong = client.get("/api/events", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_api_is_disabled_without_a_token_or_admin_login(settings: Settings) -> None:
    app = create_app(
        settings.replace(admin_api_token=None, admin_username=None, admin_password_hash=None)
    )
    response = app.test_client().get("/api/events", headers={"Authorization": "Bearer x"})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "api_disabled"
    app.extensions["webhooks"].db.dispose()


def test_list_is_newest_first_with_cursor_pagination(
    client: FlaskClient, post_event: PostEvent, service: Service, auth_headers: dict[str, str]
) -> None:
    ids = [f"msg_page_{n}" for n in range(5)]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for n, event_id in enumerate(ids):
        post_event(msg_id=event_id)
        with service.db.transaction() as session:
            session.execute(
                update(store.events)
                .where(store.events.c.id == event_id)
                .values(received_at=base + timedelta(minutes=n))
            )
    seen: list[str] = []
    cursor = None
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/api/events", query_string=query, headers=auth_headers).get_json()
        seen.extend(event["id"] for event in page["data"])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == list(reversed(ids))


def test_filters(
    client: FlaskClient, post_event: PostEvent, service: Service, auth_headers: dict[str, str]
) -> None:
    post_event("chat.completion", {"id": "chat_f"}, msg_id="msg_chat")
    post_event("model.failed", {"id": "req_f"}, msg_id="msg_model")
    service.dispatcher.process_events(["msg_chat"])["msg_chat"]

    def ids(**query: str) -> list[str]:
        body = client.get("/api/events", query_string=query, headers=auth_headers).get_json()
        return [event["id"] for event in body["data"]]

    assert ids(type="model.failed") == ["msg_model"]
    assert ids(status="succeeded") == ["msg_chat"]
    assert ids(data_id="req_f") == ["msg_model"]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert ids(since=future) == []
    assert sorted(ids(until=future)) == ["msg_chat", "msg_model"]
    assert ids(until="0") == []


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"status": "bogus"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"cursor": "!!!"}, "cursor"),
    ],
)
def test_bad_parameters_get_400(
    client: FlaskClient, auth_headers: dict[str, str], query: dict[str, str], param: str
) -> None:
    response = client.get("/api/events", query_string=query, headers=auth_headers)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == param


def test_detail_shows_payload_and_attempts(
    client: FlaskClient, post_event: PostEvent, service: Service, auth_headers: dict[str, str]
) -> None:
    post_event(
        "chat.completion",
        {"id": "chat_d", "fail_handler": "record", "fail_times": 1},
        msg_id="msg_d",
    )
    service.dispatcher.process_events(["msg_d"])["msg_d"]
    body = client.get("/api/events/msg_d", headers=auth_headers).get_json()
    assert body["id"] == "msg_d"
    assert body["type"] == "chat.completion"
    assert body["status"] == "failed"
    assert body["payload"]["data"]["id"] == "chat_d"
    assert body["received_at"].endswith("Z")
    [attempt] = body["attempts"]
    assert attempt["handler"] == "tests.support.handlers.record"
    assert attempt["attempt"] == 1
    assert attempt["status"] == "failed"
    assert "planned failure" in attempt["error"]
    assert attempt["started_at"] <= attempt["finished_at"]


def test_unknown_event_is_404(client: FlaskClient, auth_headers: dict[str, str]) -> None:
    response = client.get("/api/events/msg_missing", headers=auth_headers)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "event_not_found"
