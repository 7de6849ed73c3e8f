"""POST /webhooks/events and GET /webhooks/verify: every answer of the contract."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from tests.support.signing import TEST_SECRET, delivery
from webhooks_app import create_app
from webhooks_app.config import Settings
from webhooks_app.service import Service
from webhooks_app.signatures import sign_headers
from webhooks_app.store import EventRow, EventStatus

PostEvent = Callable[..., Any]


def stored(service: Service, event_id: str) -> EventRow | None:
    with service.db.transaction() as session:
        return session.get(EventRow, event_id)


def event_count(service: Service) -> int:
    with service.db.transaction() as session:
        return session.scalar(select(func.count()).select_from(EventRow)) or 0


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert set(error) == {"type", "message", "param", "code"}
    assert error["code"] == code
    assert TEST_SECRET[6:] not in response.get_data(as_text=True)
    return dict(error)


def test_accepted_event_is_committed_with_raw_body(client: FlaskClient, service: Service) -> None:
    body = (
        b'{"event": "chat.completion", "data": {"id": "chat_123", "status": "completed"},'
        b' "extra": [1, 2]}'
    )
    headers = {**sign_headers(TEST_SECRET, "msg_accept", body), "Content-Type": "application/json"}
    response = client.post("/webhooks/events", data=body, headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {"id": "msg_accept", "status": "accepted"}
    row = stored(service, "msg_accept")
    assert row is not None
    assert row.raw_body == body
    assert row.type == "chat.completion"
    assert row.payload["extra"] == [1, 2]
    assert row.data_id == "chat_123"
    assert row.headers["webhook-signature"] == headers["webhook-signature"]


def test_accepted_event_awaits_the_relay_and_it_hands_it_to_the_broker(
    client: FlaskClient, service: Service, post_event: PostEvent
) -> None:
    post_event(msg_id="msg_handoff")
    row = stored(service, "msg_handoff")
    assert row is not None
    assert row.status == EventStatus.RECEIVED
    assert service.relay.relay_once() == 1  # publishes to the test's real Redis
    row = stored(service, "msg_handoff")
    assert row is not None
    assert row.status == EventStatus.QUEUED


def test_unknown_types_are_stored_too(post_event: PostEvent, service: Service) -> None:
    response = post_event("embedding.created", {"id": "emb_1"}, msg_id="msg_other")
    assert response.get_json() == {"id": "msg_other", "status": "accepted"}
    row = stored(service, "msg_other")
    assert row is not None
    assert row.type == "embedding.created"


def test_repeated_id_is_a_duplicate_and_stored_once(
    post_event: PostEvent, service: Service
) -> None:
    first = post_event(msg_id="msg_twice")
    second = post_event(msg_id="msg_twice")
    assert first.get_json()["status"] == "accepted"
    assert second.status_code == 200
    assert second.get_json() == {"id": "msg_twice", "status": "duplicate"}
    assert event_count(service) == 1
    row = stored(service, "msg_twice")
    assert row is not None
    assert row.differing_duplicates == 0


def test_a_duplicate_with_another_body_keeps_the_first_and_is_counted_and_logged(
    post_event: PostEvent, service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    first = post_event(data={"id": "chat_1", "v": 1}, msg_id="msg_differs")
    second = post_event(data={"id": "chat_1", "v": 2}, msg_id="msg_differs")
    assert first.get_json()["status"] == "accepted"
    assert second.get_json() == {"id": "msg_differs", "status": "duplicate"}
    row = stored(service, "msg_differs")
    assert row is not None
    assert row.payload["data"]["v"] == 1
    assert row.differing_duplicates == 1
    assert any(
        r.levelname == "WARNING" and "different body" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"[1, 2]", "invalid_json", None),
        (b'{"data": {}}', "missing_field", "event"),
        (b'{"event": "chat.completion"}', "missing_field", "data"),
        (b'{"event": 5, "data": {}}', "invalid_field", "event"),
        (b'{"event": "chat.completion", "data": "x"}', "invalid_field", "data"),
        (b'{"event": "", "data": {}}', "invalid_field", "event"),
    ],
)
def test_malformed_bodies_get_400(
    client: FlaskClient, service: Service, body: bytes, code: str, param: str | None
) -> None:
    headers = {**sign_headers(TEST_SECRET, "msg_bad", body), "Content-Type": "application/json"}
    error = assert_error(client.post("/webhooks/events", data=body, headers=headers), 400, code)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert event_count(service) == 0


def test_nul_character_is_refused_cleanly(client: FlaskClient, service: Service) -> None:
    body = b'{"event": "chat.completion", "data": {"id": "a\\u0000b"}}'
    headers = {**sign_headers(TEST_SECRET, "msg_nul", body), "Content-Type": "application/json"}
    assert_error(
        client.post("/webhooks/events", data=body, headers=headers), 400, "unstorable_value"
    )


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h: h.pop("webhook-signature"), "missing_headers"),
        (lambda h: h.pop("webhook-id"), "missing_headers"),
        (lambda h: h.pop("webhook-timestamp"), "missing_headers"),
        (lambda h: h.update({"webhook-signature": "v1,AAAA"}), "no_matching_signature"),
        (lambda h: h.update({"webhook-timestamp": "soon"}), "invalid_timestamp"),
    ],
)
def test_bad_signatures_get_401(
    client: FlaskClient, service: Service, mutate: Callable[[dict[str, str]], object], code: str
) -> None:
    body, headers = delivery(msg_id="msg_unsigned")
    mutate(headers)
    error = assert_error(client.post("/webhooks/events", data=body, headers=headers), 401, code)
    assert error["type"] == "authentication_error"
    assert event_count(service) == 0


def test_stale_timestamp_gets_401(client: FlaskClient) -> None:
    import time

    body, headers = delivery(timestamp=int(time.time()) - 301)
    assert_error(
        client.post("/webhooks/events", data=body, headers=headers), 401, "timestamp_too_old"
    )


def test_signature_is_checked_before_the_body_is_parsed(client: FlaskClient) -> None:
    _, headers = delivery()
    headers["webhook-signature"] = "v1,AAAA"
    # Malformed JSON with a bad signature is a 401, not a 400: nothing parses unverified bytes.
    response = client.post("/webhooks/events", data=b"{broken", headers=headers)
    assert_error(response, 401, "no_matching_signature")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_get_405(client: FlaskClient, method: str) -> None:
    response = client.open("/webhooks/events", method=method)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_body_over_limit_gets_413(settings: Settings, service: Service) -> None:
    small = create_app(settings.replace(max_body_bytes=64))
    body, headers = delivery(data={"id": "x" * 100})
    response = small.test_client().post("/webhooks/events", data=body, headers=headers)
    assert_error(response, 413, "body_too_large")
    small.extensions["webhooks"].db.dispose()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_content_type_gets_415(client: FlaskClient, content_type: str | None) -> None:
    body, headers = delivery()
    headers.pop("Content-Type")
    if content_type:
        headers["Content-Type"] = content_type
    assert_error(
        client.post("/webhooks/events", data=body, headers=headers), 415, "unsupported_media_type"
    )


def test_json_with_charset_is_accepted(client: FlaskClient) -> None:
    body, headers = delivery()
    headers["Content-Type"] = "application/json; charset=utf-8"
    assert client.post("/webhooks/events", data=body, headers=headers).status_code == 200


def test_database_down_gets_503_with_retry_after(settings: Settings, tmp_path: Path) -> None:
    down = create_app(
        settings.replace(database_url="postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    )
    body, headers = delivery()
    response = down.test_client().post("/webhooks/events", data=body, headers=headers)
    assert_error(response, 503, "service_unavailable")
    assert int(response.headers["Retry-After"]) > 0
    down.extensions["webhooks"].db.dispose()


def test_verify_challenge_echoes_the_token_as_text(client: FlaskClient) -> None:
    response = client.get("/webhooks/verify?challenge=abc-123_XYZ")
    assert response.status_code == 200
    assert response.get_data() == b"abc-123_XYZ"
    assert response.mimetype == "text/plain"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


def test_verify_challenge_as_json(client: FlaskClient) -> None:
    response = client.get(
        "/webhooks/verify",
        query_string={"challenge": "tok"},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200
    assert response.get_json() == {"challenge": "tok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_verify_challenge_keeps_html_inert(client: FlaskClient) -> None:
    token = "<script>alert(1)</script>"
    response = client.get("/webhooks/verify", query_string={"challenge": token})
    assert response.get_data(as_text=True) == token
    assert response.mimetype == "text/plain"


@pytest.mark.parametrize(
    "query", [{}, {"challenge": ""}, {"challenge": "x" * 513}, {"challenge": "a\x01b"}]
)
def test_verify_challenge_rejects_bad_tokens(client: FlaskClient, query: dict[str, str]) -> None:
    error = assert_error(
        client.get("/webhooks/verify", query_string=query), 400, "invalid_challenge"
    )
    assert error["param"] == "challenge"


def test_verify_challenge_accepts_512_characters(client: FlaskClient) -> None:
    assert client.get("/webhooks/verify", query_string={"challenge": "x" * 512}).status_code == 200


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": True, "broker": True}


def test_readiness_fails_when_the_database_is_down(settings: Settings) -> None:
    down = create_app(settings.replace(database_url="postgresql+psycopg://postgres@127.0.0.1:1/x"))
    response = down.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] is False
    down.extensions["webhooks"].db.dispose()


def test_unknown_paths_answer_in_the_error_format(client: FlaskClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")


def test_event_payload_round_trips_as_sent(post_event: PostEvent, service: Service) -> None:
    data = {"id": "chat_9", "nested": {"list": [1, "two", None]}, "unicode": "é✓"}
    post_event("chat.completion", data, msg_id="msg_roundtrip")
    row = stored(service, "msg_roundtrip")
    assert row is not None
    assert json.loads(row.raw_body)["data"] == data
    assert row.payload["data"] == data


def test_the_delivery_path_answers_every_method_itself_in_the_error_format(
    client: FlaskClient, app: Any
) -> None:
    response = client.get("/webhooks/events")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    # One route for the path: the endpoint in front of Flask, none in Flask's URL map.
    assert not [rule for rule in app.url_map.iter_rules() if rule.rule == "/webhooks/events"]
