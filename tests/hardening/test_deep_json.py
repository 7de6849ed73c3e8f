"""Issue 17, item 1: deeply nested JSON is refused at the intake, and an event stored before that
refusal (nested up to orjson's 1,024 levels) never breaks a page or an API answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest
from flask.testing import FlaskClient
from sqlalchemy import text

from tests.support.signing import TEST_SECRET
from webhooks_app.events import MAX_JSON_DEPTH
from webhooks_app.service import Service
from webhooks_app.signatures import sign_headers


def nested_body(depth: int) -> bytes:
    """``{"event": ..., "data": {"x": [[...]]}}``: ``depth`` levels of containers in all."""
    lists = depth - 2
    return b'{"event":"deep.nest","data":{"x":' + b"[" * lists + b"]" * lists + b"}}"


def store_directly(service: Service, event_id: str, body: bytes) -> None:
    """Store an event as the intake did before it checked the depth (PostgreSQL parses it)."""
    now = datetime.now(UTC)
    with service.db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO events (id, type, status, payload, raw_body, headers, data_id,"
                " webhook_timestamp, received_at, updated_at, due_at)"
                " VALUES (:id, 'deep.nest', 'received', CAST(:body AS jsonb), :raw,"
                " CAST('{}' AS jsonb), NULL, 0, :now, :now, NULL)"
            ),
            {"id": event_id, "body": body.decode(), "raw": body, "now": now},
        )


def post(client: FlaskClient, body: bytes, msg_id: str) -> object:
    headers = sign_headers(TEST_SECRET, msg_id, body)
    headers["Content-Type"] = "application/json"
    return client.post("/webhooks/events", data=body, headers=headers)


def test_a_body_nested_past_the_limit_is_refused(client: FlaskClient, service: Service) -> None:
    response = post(client, nested_body(MAX_JSON_DEPTH + 1), "msg_too_deep")
    assert response.status_code == 400  # type: ignore[attr-defined]
    error = response.get_json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == "json_too_deep"
    assert str(MAX_JSON_DEPTH) in error["message"]
    with service.db.engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM events")) == 0


def test_a_body_at_the_limit_is_accepted(client: FlaskClient) -> None:
    response = post(client, nested_body(MAX_JSON_DEPTH), "msg_deep_enough")
    assert response.status_code == 200, response.get_data(as_text=True)  # type: ignore[attr-defined]


def test_brackets_inside_strings_do_not_count(client: FlaskClient) -> None:
    body = json.dumps({"event": "x", "data": {"text": "[" * 5000}}).encode()
    assert post(client, body, "msg_brackets_in_text").status_code == 200  # type: ignore[attr-defined]


@pytest.mark.parametrize("depth", [500, 1000])
def test_a_stored_deep_event_breaks_no_page(
    depth: int,
    service: Service,
    admin_client: FlaskClient,
    auth_headers: dict[str, str],
) -> None:
    store_directly(service, "msg_deep", nested_body(depth))
    for path in ["/api/events", "/api/events/msg_deep"]:
        response = admin_client.get(path, headers=auth_headers)
        assert response.status_code == 200, (path, response.status_code)
        assert "msg_deep" in response.get_data(as_text=True)
    detail = orjson.loads(admin_client.get("/api/events/msg_deep", headers=auth_headers).data)
    levels, value = 0, detail["payload"]["data"]["x"]
    while value:
        levels, value = levels + 1, value[0]
    assert levels == depth - 3  # the whole payload, not a cut copy
    for path in ["/admin/events", "/admin/events/msg_deep", "/admin/events/msg_deep/live"]:
        response = admin_client.get(path)
        assert response.status_code == 200, (path, response.status_code)
    page = admin_client.get("/admin/events/msg_deep").get_data(as_text=True)
    assert page.count("[") >= depth - 2
