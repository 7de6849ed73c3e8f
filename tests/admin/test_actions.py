"""The operator's use cases (``webhooks_app.actions``) as the admin page and the API reach
them: the same selection, the same audit entries, whichever door an action comes in by."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import ADMIN_USERNAME, csrf_token
from tests.support.events import event_status
from webhooks_app.service import Service
from webhooks_app.store import AuditRow, EventStatus

PostEvent = Callable[..., Any]


def failed(service: Service, post_event: PostEvent, event_id: str, data_id: str) -> None:
    post_event("model.failed", {"id": data_id, "fail_handler": "alert"}, msg_id=event_id)
    service.dispatcher.process_events([event_id])
    assert event_status(service, event_id) == EventStatus.FAILED


def audit_entries(service: Service) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    with service.db.transaction() as session:
        rows = session.scalars(select(AuditRow).order_by(AuditRow.id))
        return [(r.actor, r.action, r.target, r.details) for r in rows]


def test_bulk_replay_through_the_api(
    client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    failed(service, post_event, "msg_api_bulk_1", "order_1")
    failed(service, post_event, "msg_api_bulk_2", "order_2")
    preview = client.post(
        "/api/replay", json={"data_id": "order_1", "dry_run": True}, headers=auth_headers
    )
    assert preview.status_code == 200
    assert preview.get_json()["replayed"] == ["msg_api_bulk_1"]
    assert event_status(service, "msg_api_bulk_1") == EventStatus.FAILED  # only a preview

    done = client.post("/api/replay", json={"type": "model.failed"}, headers=auth_headers)
    assert done.status_code == 202
    body = done.get_json()
    assert sorted(body["replayed"]) == ["msg_api_bulk_1", "msg_api_bulk_2"]
    assert body["skipped"] == {}
    assert audit_entries(service)[-1] == (
        "api-token",
        "events.bulk_replay",
        None,
        {"filters": {"type": "model.failed"}, "replayed": 2, "skipped": 0},
    )


def test_bulk_replay_refuses_a_bad_filter(
    client: FlaskClient, auth_headers: dict[str, str]
) -> None:
    for body, param in [
        ({"status": "lost"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"type": 7}, "type"),
        ({"q": "a\x00b"}, "q"),
        ({"dry_run": "yes"}, "dry_run"),
    ]:
        response = client.post("/api/replay", json=body, headers=auth_headers)
        assert response.status_code == 400, body
        assert response.get_json()["error"]["param"] == param
    assert client.post("/api/replay", data="[]", headers=auth_headers).status_code == 400


def test_the_list_and_bulk_replay_select_alike(
    admin_client: FlaskClient, post_event: PostEvent, service: Service
) -> None:
    """The page's bulk replay takes what its list shows (data_id was once left out)."""
    failed(service, post_event, "msg_same_1", "shared")
    failed(service, post_event, "msg_same_2", "other")
    listed = admin_client.get("/api/events", query_string={"data_id": "shared"}).get_json()
    assert [e["id"] for e in listed["data"]] == ["msg_same_1"]
    token = csrf_token(admin_client, "/admin/events")
    confirm = admin_client.post("/admin/replay", data={"csrf_token": token, "data_id": "shared"})
    html = confirm.get_data(as_text=True)
    assert "Replay 1 event?" in html
    assert "msg_same_1" in html
    assert "msg_same_2" not in html


def test_admin_and_api_actions_write_the_same_audit_entries(
    admin_client: FlaskClient, auth_headers: dict[str, str], post_event: PostEvent, service: Service
) -> None:
    post_event("chat.completion", {"id": "c", "email": "a@example.com"}, msg_id="msg_door_1")
    post_event("chat.completion", {"id": "c", "email": "a@example.com"}, msg_id="msg_door_2")
    token = csrf_token(admin_client, "/admin/events/msg_door_1")
    # Nothing has run (or failed) yet: replay all handlers, not the default failed ones.
    admin_client.post(
        "/admin/events/msg_door_1/replay", data={"csrf_token": token, "handlers": "all"}
    )
    admin_client.post(
        "/admin/events/msg_door_1/reveal", data={"csrf_token": token, "pointer": "/data/email"}
    )
    admin_client.post("/admin/events/msg_door_1/delete", data={"csrf_token": token})
    api = admin_client.application.test_client()
    api.post("/api/events/msg_door_2/replay", json={"handlers": "all"}, headers=auth_headers)
    api.post("/api/events/msg_door_2/reveal", json={"field": "/data/email"}, headers=auth_headers)
    api.delete("/api/events/msg_door_2", headers=auth_headers)

    entries = [e for e in audit_entries(service) if e[1].startswith("event.")]
    by_page = [
        (a, d) for actor, a, t, d in entries if t == "msg_door_1" and actor == ADMIN_USERNAME
    ]
    by_api = [(a, d) for actor, a, t, d in entries if t == "msg_door_2" and actor == "api-token"]
    assert [a for a, _ in by_page] == ["event.replay", "event.reveal_field", "event.delete"]
    assert by_page == by_api
