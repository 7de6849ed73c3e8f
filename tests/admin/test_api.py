"""The JSON API beside the page: every endpoint, its authentication, masking and audit."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import insert, select

from tests.conftest import ADMIN_USERNAME, csrf_token
from webhooks_app import create_app, receiver, store
from webhooks_app.config import Settings
from webhooks_app.service import Service
from webhooks_app.store import AttemptRow, AuditRow, EventRow

PostEvent = Callable[..., Any]

ENDPOINTS = [
    ("GET", "/api/events"),
    ("GET", "/api/events/msg_x"),
    ("DELETE", "/api/events/msg_x"),
    ("POST", "/api/events/msg_x/replay"),
    ("POST", "/api/events/msg_x/reveal"),
    ("GET", "/api/stats"),
    ("GET", "/api/audit"),
]
PII = {
    "id": "chat_pii",
    "email": "ann@example.com",
    "messages": [{"role": "user", "content": "my secret"}],
}


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert set(error) == {"type", "message", "param", "code"}
    assert error["code"] == code
    return dict(error)


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_endpoint_needs_a_valid_token(client: FlaskClient, method: str, path: str) -> None:
    assert_error(client.open(path, method=method), 401, "invalid_api_token")
    wrong = {"Authorization": "Bearer not-the-token"}
    assert_error(client.open(path, method=method, headers=wrong), 401, "invalid_api_token")
    basic = {"Authorization": "Basic dGVzdA=="}
    response = client.open(path, method=method, headers=basic)
    assert_error(response, 401, "invalid_api_token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_api_is_disabled_without_token_or_login(settings: Settings) -> None:
    app = create_app(
        settings.replace(admin_api_token=None, admin_username=None, admin_password_hash=None)
    )
    client = app.test_client()
    assert_error(client.get("/api/events"), 404, "api_disabled")
    assert client.get("/api/openapi.json").status_code == 200
    app.extensions["webhooks"].db.dispose()


def test_a_logged_in_session_may_use_the_api(
    admin_client: FlaskClient, post_event: PostEvent
) -> None:
    post_event(msg_id="msg_session")
    assert admin_client.get("/api/stats").status_code == 200
    assert admin_client.get("/api/events/msg_session").status_code == 200
    # State-changing calls made with the cookie need the page's CSRF token.
    assert_error(admin_client.delete("/api/events/msg_session"), 403, "csrf_failed")
    assert_error(
        admin_client.delete("/api/events/msg_session", headers={"X-CSRFToken": "forged"}),
        403,
        "csrf_failed",
    )
    token = csrf_token(admin_client, "/admin/events")
    response = admin_client.delete("/api/events/msg_session", headers={"X-CSRFToken": token})
    assert response.status_code == 200


def test_a_bearer_token_needs_no_csrf_token(
    app: Flask, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    post_event(msg_id="msg_bearer_delete")
    response = app.test_client().delete("/api/events/msg_bearer_delete", headers=auth_headers)
    assert response.status_code == 200
    with service.db.transaction() as session:
        entry = session.scalars(select(AuditRow).order_by(AuditRow.id.desc())).first()
        assert entry is not None
        assert (entry.actor, entry.action, entry.target) == (
            "api-token",
            "event.delete",
            "msg_bearer_delete",
        )


def test_payloads_are_masked_by_default(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent
) -> None:
    post_event("chat.completion", PII, msg_id="msg_pii")
    for path in ("/api/events", "/api/events/msg_pii"):
        response = client.get(path, headers=auth_headers)
        text = response.get_data(as_text=True)
        assert "ann@example.com" not in text
        assert "my secret" not in text
    body = client.get("/api/events/msg_pii", headers=auth_headers).get_json()
    assert body["payload"]["data"]["email"] == "[masked]"
    assert body["payload"]["data"]["messages"][0] == {"role": "user", "content": "[masked]"}
    assert body["payload"]["data"]["id"] == "chat_pii"
    assert sorted(body["masked_fields"]) == ["/data/email", "/data/messages/0/content"]


def test_masked_fields_follow_the_setting(settings: Settings, auth_headers: dict[str, str]) -> None:
    from tests.support.signing import delivery

    app = create_app(settings.replace(pii_mask_fields=("data.messages.*.role",)))
    client = app.test_client()
    body, headers = delivery("chat.completion", PII, msg_id="msg_rules")
    assert client.post("/webhooks/events", data=body, headers=headers).status_code == 200
    event = client.get("/api/events/msg_rules", headers=auth_headers).get_json()
    assert event["masked_fields"] == ["/data/messages/0/role"]
    assert event["payload"]["data"]["email"] == "ann@example.com"
    app.extensions["webhooks"].db.dispose()


def test_revealing_one_field(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    post_event("chat.completion", PII, msg_id="msg_reveal_api")
    url = "/api/events/msg_reveal_api/reveal"
    response = client.post(url, json={"field": "/data/messages/0/content"}, headers=auth_headers)
    assert response.status_code == 200
    assert response.get_json() == {
        "id": "msg_reveal_api",
        "field": "/data/messages/0/content",
        "value": "my secret",
    }
    with service.db.transaction() as session:
        entry = session.scalars(select(AuditRow).order_by(AuditRow.id.desc())).first()
        assert entry is not None
        assert entry.action == "event.reveal_field"
        assert entry.details == {"field": "/data/messages/0/content"}
    for body in ({"field": "/data/id"}, {"field": "data.email"}, {}, {"field": 1}):
        assert_error(client.post(url, json=body, headers=auth_headers), 400, "invalid_parameter")
    assert_error(
        client.post("/api/events/nope/reveal", json={"field": "/x"}, headers=auth_headers),
        404,
        "event_not_found",
    )


def test_search_by_event_id_or_data_id(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent
) -> None:
    post_event("chat.completion", {"id": "chat_123"}, msg_id="msg_s1")
    post_event("chat.completion", {"id": "chat_456"}, msg_id="msg_s2")

    def found(q: str) -> list[str]:
        body = client.get(f"/api/events?q={q}", headers=auth_headers).get_json()
        return [e["id"] for e in body["data"]]

    assert found("chat_123") == ["msg_s1"]
    assert found("msg_s2") == ["msg_s2"]
    assert found("chat_999") == []


def test_event_detail_has_attempts_with_tracebacks_and_truncated_signatures(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    post_event("model.failed", {"id": "m", "fail_handler": "alert"}, msg_id="msg_api_detail")
    service.dispatcher.process_events(["msg_api_detail"])["msg_api_detail"]
    body = client.get("/api/events/msg_api_detail", headers=auth_headers).get_json()
    (attempt,) = body["attempts"]
    assert attempt["attempt"] == 1
    assert attempt["run"] == 1
    assert attempt["status"] == "failed"
    assert "Traceback" in attempt["traceback"]
    assert attempt["duration_ms"] >= 0
    with service.db.transaction() as session:
        row = session.get(EventRow, "msg_api_detail")
        assert row is not None
        signature = row.headers["webhook-signature"]
    assert body["headers"]["webhook-signature"] == signature[:12] + "…"


def test_delete_removes_the_event_and_its_history(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    post_event("chat.completion", {"id": "c"}, msg_id="msg_del")
    service.dispatcher.process_events(["msg_del"])["msg_del"]
    response = client.delete("/api/events/msg_del", headers=auth_headers)
    assert response.status_code == 200
    assert response.get_json() == {"id": "msg_del", "object": "event", "deleted": True}
    assert_error(client.get("/api/events/msg_del", headers=auth_headers), 404, "event_not_found")
    with service.db.transaction() as session:
        left = session.scalars(select(AttemptRow).where(AttemptRow.event_id == "msg_del")).all()
        assert left == []
    assert_error(client.delete("/api/events/msg_del", headers=auth_headers), 404, "event_not_found")


def test_stats_counts_per_status(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    post_event("chat.completion", {"id": "a"}, msg_id="msg_st1")
    post_event("nobody.handles", {"id": "b"}, msg_id="msg_st2")
    service.dispatcher.process_events(["msg_st1"])["msg_st1"]
    service.dispatcher.process_events(["msg_st2"])["msg_st2"]
    body = client.get("/api/stats", headers=auth_headers).get_json()
    assert body["object"] == "stats"
    assert body["counts"]["succeeded"] == 1
    assert body["counts"]["skipped"] == 1
    assert sum(body["counts"].values()) == 2
    assert body["capped"] == []
    assert body["count_cap"] == store.STATUS_COUNT_CAP


def test_status_counts_stop_at_the_cap(post_event: PostEvent, service: Service) -> None:
    for n in range(4):
        post_event(msg_id=f"msg_cap{n}")
    service.relay.relay_once()
    with service.db.transaction() as session:
        counts = store.bounded_status_counts(session, cap=3)
    assert counts["queued"] + counts["received"] in (3, 4)  # each status capped at 3
    assert max(counts.values()) <= 3


def add_audit(service: Service, at: datetime, action: str) -> None:
    with service.db.transaction() as session:
        session.execute(
            insert(store.audit_log).values(at=at, actor="someone", action=action, details={})
        )


def test_audit_range_as_in_the_seed(
    client: FlaskClient, auth_headers: dict[str, str], service: Service
) -> None:
    add_audit(service, datetime(2023, 12, 31, 23, 59, tzinfo=UTC), "before")
    add_audit(service, datetime(2024, 1, 1, 0, 0, tzinfo=UTC), "first-day")
    add_audit(service, datetime(2024, 1, 31, 23, 59, tzinfo=UTC), "last-day")
    add_audit(service, datetime(2024, 2, 1, 0, 0, tzinfo=UTC), "after")
    response = client.get("/api/audit?start=2024-01-01&end=2024-01-31", headers=auth_headers)
    assert response.status_code == 200
    body = response.get_json()
    assert [e["action"] for e in body["data"]] == ["last-day", "first-day"]
    assert body["data"][0]["at"] == "2024-01-31T23:59:00Z"
    assert body["has_more"] is False

    page = client.get("/api/audit?limit=1&end=2024-03-01", headers=auth_headers).get_json()
    assert [e["action"] for e in page["data"]] == ["after"]
    rest = client.get(
        f"/api/audit?limit=10&end=2024-03-01&cursor={page['next_cursor']}", headers=auth_headers
    ).get_json()
    assert [e["action"] for e in rest["data"]] == ["last-day", "first-day", "before"]


def test_audit_records_who_did_what(
    admin_client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent
) -> None:
    post_event(msg_id="msg_who")
    token = csrf_token(admin_client, "/admin/events")
    admin_client.post(
        "/api/events/msg_who/replay", json={"handlers": "all"}, headers={"X-CSRFToken": token}
    )
    entries = admin_client.get("/api/audit", headers=auth_headers).get_json()["data"]
    assert (entries[0]["actor"], entries[0]["action"], entries[0]["target"]) == (
        ADMIN_USERNAME,
        "event.replay",
        "msg_who",
    )
    assert entries[1]["action"] == "admin.login"


def test_openapi_describes_every_endpoint(app: Flask, client: FlaskClient) -> None:
    document = client.get("/api/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    described = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.endswith("static") or rule.rule.startswith("/admin"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        served |= {(path, m) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    served.add((receiver.PATH, "POST"))  # answered in front of Flask (receiver.DeliveryRoute)
    assert served == described


@pytest.mark.parametrize(
    ("path", "query", "param"),
    [
        ("/api/audit", "start=2024-13-01", "start"),
        ("/api/audit", "end=tomorrow", "end"),
        ("/api/audit", "limit=0", "limit"),
        # Offsets that take a moment past the ends of the calendar once in UTC.
        ("/api/audit", "end=9999-12-31T23:59:59-14:00", "end"),
        ("/api/events", "since=0001-01-01T00:00:00%2B14:00", "since"),
        ("/api/events", "until=9999-12-31T23:59:59-14:00", "until"),
        # A digit that is not a decimal one ("²".isdigit() is true, int("²") fails).
        ("/api/events", "limit=%C2%B2", "limit"),
        ("/api/events", "since=%C2%B2", "since"),
    ],
)
def test_lists_refuse_bad_parameters_with_400(
    client: FlaskClient, auth_headers: dict[str, str], path: str, query: str, param: str
) -> None:
    error = assert_error(
        client.get(f"{path}?{query}", headers=auth_headers), 400, "invalid_parameter"
    )
    assert error["param"] == param


@pytest.mark.parametrize(
    ("path", "cursor"),
    [
        ("/api/audit", "zzz"),
        # A cursor whose moment is past the end of the calendar once in UTC.
        (
            "/api/events",
            store.encode_cursor(
                datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-14))), "x"
            ),
        ),
    ],
)
def test_lists_refuse_bad_cursors_with_400(
    client: FlaskClient, auth_headers: dict[str, str], path: str, cursor: str
) -> None:
    assert_error(client.get(f"{path}?cursor={cursor}", headers=auth_headers), 400, "invalid_cursor")
