"""The admin page over HTTP: login, sessions, CSRF, headers, escaping, browsing, actions."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, csrf_token, login
from webhooks_app import create_app
from webhooks_app.config import Settings
from webhooks_app.service import Service
from webhooks_app.store import AttemptRow, AuditRow, EventRow, EventStatus

PostEvent = Callable[..., Any]


def audit_actions(service: Service) -> list[str]:
    with service.db.transaction() as session:
        return list(session.scalars(select(AuditRow.action).order_by(AuditRow.id)))


# Login counters outlive a test (a minute, in Redis): each client gets an address of its own.
_addresses = itertools.count(1)


def unique_client(app: Flask) -> FlaskClient:
    """A client with its own address, so login throttling of one test never leaks into another."""
    client = app.test_client()
    n = next(_addresses)
    client.environ_base["REMOTE_ADDR"] = f"10.{n // 250 % 250}.{n % 250}.1"
    return client


# --- login and sessions -------------------------------------------------------------------


def test_pages_require_login(client: FlaskClient) -> None:
    response = client.get("/admin/events?status=dead")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=")
    # The page's live polling gets a 401 instead of a login page.
    assert client.get("/admin/events/live", headers={"X-Admin-Poll": "1"}).status_code == 401


def test_login_with_the_right_credentials(app: Flask, service: Service) -> None:
    client = unique_client(app)
    response = login(client)
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/events"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    assert client.get("/admin/events").status_code == 200
    assert audit_actions(service)[-1] == "admin.login"


@pytest.mark.parametrize(
    ("username", "password"),
    [(ADMIN_USERNAME, "wrong password"), ("someone", ADMIN_PASSWORD), ("", "")],
)
def test_login_with_wrong_credentials_is_refused(
    app: Flask, service: Service, username: str, password: str
) -> None:
    client = unique_client(app)
    response = login(client, username, password)
    assert response.status_code == 401
    assert "Wrong username or password" in response.get_data(as_text=True)
    assert client.get("/admin/events").status_code == 302
    assert audit_actions(service)[-1] == "admin.login_failed"


@pytest.mark.parametrize("via", ["https", "trusted proxy"])
def test_session_cookie_is_secure_over_https(settings: Settings, via: str) -> None:
    app = create_app(settings.replace(trusted_proxies=1 if via == "trusted proxy" else 0))
    client = app.test_client()
    if via == "https":
        client = app.test_client()
        base = {"base_url": "https://localhost"}
        headers = {}
    else:
        base = {}
        headers = {"X-Forwarded-Proto": "https"}
    page = client.get("/admin/login", headers=headers, **base).get_data(as_text=True)
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert found
    response = client.post(
        "/admin/login",
        data={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD, "csrf_token": found[1]},
        # Over HTTPS, Flask-WTF also checks that the form came from this site.
        headers={**headers, "Referer": "https://localhost/admin/login"},
        **base,
    )
    assert response.status_code == 302
    assert "Secure" in response.headers["Set-Cookie"]
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")
    app.extensions["webhooks"].db.dispose()


def test_forwarded_proto_from_an_untrusted_client_is_ignored(app: Flask) -> None:
    """Without TRUSTED_PROXIES the client's own X-Forwarded-Proto is not believed."""
    client = unique_client(app)
    client.environ_base["HTTP_X_FORWARDED_PROTO"] = "https"
    response = login(client)
    assert response.status_code == 302
    assert "Secure" not in response.headers["Set-Cookie"]


def test_login_starts_a_new_session(app: Flask) -> None:
    client = unique_client(app)
    csrf_token(client)
    with client.session_transaction() as before:
        before["planted"] = "by someone else"
        pre_login_token = before["csrf_token"]
    login(client)
    with client.session_transaction() as first:
        assert "planted" not in first
        assert first.get("csrf_token") != pre_login_token
        first_sid = first["sid"]
    client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/events")})
    login(client)
    with client.session_transaction() as second:
        assert second["sid"] != first_sid


def test_logout_ends_the_session(admin_client: FlaskClient) -> None:
    token = csrf_token(admin_client, "/admin/events")
    assert admin_client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert admin_client.get("/admin/events").status_code == 302


def test_changing_the_password_hash_ends_sessions(settings: Settings) -> None:
    app = create_app(settings)
    client = app.test_client()
    login(client)
    assert client.get("/admin/events").status_code == 200
    other = create_app(settings.replace(admin_password_hash=settings.admin_password_hash + "x"))
    other_client = other.test_client()
    other_client.set_cookie("aw_session", client.get_cookie("aw_session").value)  # type: ignore[union-attr]
    assert other_client.get("/admin/events").status_code == 302
    app.extensions["webhooks"].db.dispose()
    other.extensions["webhooks"].db.dispose()


def test_repeated_failed_logins_are_throttled(app: Flask, settings: Settings) -> None:
    client = unique_client(app)
    allowed = int(settings.admin_login_limit.split()[0])
    for _ in range(allowed):
        assert login(client, ADMIN_USERNAME, "guess").status_code == 401
    blocked = login(client)  # even the right password, from this address, for now
    assert blocked.status_code == 429
    assert blocked.mimetype == "text/html"
    assert "Too many failed logins" in blocked.get_data(as_text=True)
    # Another address is not affected.
    assert login(unique_client(app)).status_code == 302


def test_successful_logins_are_not_counted(app: Flask, settings: Settings) -> None:
    client = unique_client(app)
    allowed = int(settings.admin_login_limit.split()[0])
    for _ in range(allowed + 1):
        assert login(client).status_code == 302
        client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/events")})


def test_next_only_redirects_inside_the_admin_area(app: Flask) -> None:
    client = unique_client(app)
    token = csrf_token(client)
    data = {"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD, "csrf_token": token}
    response = client.post("/admin/login?next=https://evil.example/", data=data)
    assert response.headers["Location"] == "/admin/events"
    client2 = unique_client(app)
    data["csrf_token"] = csrf_token(client2)
    response = client2.post("/admin/login?next=/admin/audit", data=data)
    assert response.headers["Location"] == "/admin/audit"


def test_admin_page_is_disabled_without_credentials(settings: Settings) -> None:
    app = create_app(settings.replace(admin_username=None, admin_password_hash=None))
    response = app.test_client().get("/admin/login")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "ADMIN_PASSWORD_HASH" in response.get_data(as_text=True)
    app.extensions["webhooks"].db.dispose()


# --- CSRF, headers, errors ----------------------------------------------------------------


def test_forms_without_a_csrf_token_are_refused(
    admin_client: FlaskClient, post_event: PostEvent, service: Service
) -> None:
    post_event("model.failed", {"id": "m_1"}, msg_id="msg_csrf")
    for path in (
        "/admin/events/msg_csrf/replay",
        "/admin/events/msg_csrf/delete",
        "/admin/replay",
        "/admin/logout",
    ):
        response = admin_client.post(path, data={"confirm": "yes"})
        assert response.status_code == 400, path
        assert response.mimetype == "text/html"
        assert "CSRF" in response.get_data(as_text=True)
    response = admin_client.post("/admin/events/msg_csrf/delete", data={"csrf_token": "forged"})
    assert response.status_code == 400
    with service.db.transaction() as session:
        assert session.get(EventRow, "msg_csrf") is not None
    assert "event.delete" not in audit_actions(service)


def test_login_form_needs_its_csrf_token(app: Flask) -> None:
    client = unique_client(app)
    response = client.post(
        "/admin/login", data={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 400
    assert client.get("/admin/events").status_code == 302


def test_security_headers(admin_client: FlaskClient) -> None:
    response = admin_client.get("/admin/events")
    csp = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    assert directives["frame-ancestors"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Strict-Transport-Security" not in response.headers  # only behind HTTPS
    assert "<script>" not in response.get_data(as_text=True)  # no inline script at all


def test_errors_under_admin_are_pages_and_api_errors_stay_json(admin_client: FlaskClient) -> None:
    page = admin_client.get("/admin/no-such-page")
    assert page.status_code == 404
    assert page.mimetype == "text/html"
    missing = admin_client.get("/admin/events/nope")
    assert missing.status_code == 404
    assert "No event with id" in missing.get_data(as_text=True)
    api = admin_client.get("/api/no-such-endpoint")
    assert api.status_code == 404
    assert api.get_json()["error"]["code"] == "not_found"


# --- browsing -------------------------------------------------------------------------------


def test_payload_markup_renders_as_text(admin_client: FlaskClient, post_event: PostEvent) -> None:
    script = "<script>alert('x')</script>"
    post_event("chat.completion", {"id": script, "note": script}, msg_id="msg_xss")
    for path in ("/admin/events", "/admin/events/msg_xss", "/admin/events/live"):
        html = admin_client.get(path).get_data(as_text=True)
        assert script not in html, path
        assert "&lt;script&gt;alert(" in html, path


def test_list_filters_and_search(admin_client: FlaskClient, post_event: PostEvent) -> None:
    post_event("chat.completion", {"id": "chat_aaa"}, msg_id="msg_a")
    post_event("model.failed", {"id": "model_bbb"}, msg_id="msg_b")
    post_event("chat.completion", {"id": "chat_ccc"}, msg_id="msg_c")

    def ids(query: str) -> set[str]:
        response = admin_client.get("/admin/events" + query)
        assert response.status_code == 200
        return set(re.findall(r'data-event-id="([^"]+)"', response.get_data(as_text=True)))

    assert ids("") == {"msg_a", "msg_b", "msg_c"}
    assert ids("?type=model.failed") == {"msg_b"}
    assert ids("?q=chat_ccc") == {"msg_c"}  # by data.id
    assert ids("?q=msg_a") == {"msg_a"}  # by event id
    assert ids("?status=received&type=chat.completion") <= {"msg_a", "msg_c"}
    assert ids("?since=2000-01-01T00:00&until=2000-01-02") == set()
    assert ids("?since=2000-01-01") == {"msg_a", "msg_b", "msg_c"}


def test_bad_filters_get_a_readable_message(admin_client: FlaskClient) -> None:
    response = admin_client.get("/admin/events?since=yesterday")
    assert response.status_code == 400
    assert "since must be a date" in response.get_data(as_text=True)
    response = admin_client.get("/admin/events?status=lost")
    assert response.status_code == 400
    assert "status must be one of" in response.get_data(as_text=True)


def test_list_pages_with_a_keyset_cursor(admin_client: FlaskClient, post_event: PostEvent) -> None:
    for n in range(55):
        post_event("chat.completion", {"id": f"chat_{n}"}, msg_id=f"msg_page_{n:02d}")
    first = admin_client.get("/admin/events").get_data(as_text=True)
    first_ids = re.findall(r'data-event-id="([^"]+)"', first)
    assert len(first_ids) == 50
    older = re.search(r'<a href="([^"]+)" rel="next">', first)
    assert older
    second = admin_client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    second_ids = re.findall(r'data-event-id="([^"]+)"', second)
    assert len(second_ids) == 5
    assert not set(first_ids) & set(second_ids)


def test_counts_per_status(admin_client: FlaskClient, post_event: PostEvent) -> None:
    post_event(msg_id="msg_count_1")
    post_event(msg_id="msg_count_2")
    html = admin_client.get("/admin/events").get_data(as_text=True)
    counted = dict(re.findall(r'data-count="(\w+)">([\d,]+)', html))
    assert set(counted) == {s.value for s in EventStatus}
    assert sum(int(n) for n in counted.values()) == 2


def test_event_detail(admin_client: FlaskClient, post_event: PostEvent, service: Service) -> None:
    data = {"id": "m_9", "fail_handler": "alert", "email": "ann@example.com"}
    response = post_event("model.failed", data, msg_id="msg_detail")
    assert response.status_code == 200
    service.dispatcher.process_events(["msg_detail"])["msg_detail"]
    html = admin_client.get("/admin/events/msg_detail").get_data(as_text=True)
    assert '<span class="j-key">&#34;fail_handler&#34;</span>' in html  # highlighted, escaped
    assert "ann@example.com" not in html  # masked
    assert "reveal</button>" in html
    assert "RuntimeError: planned failure of alert on attempt 1" in html
    assert "Traceback (most recent call last)" in html
    assert "attempt #1" in html
    with service.db.transaction() as session:
        signature = session.get(EventRow, "msg_detail").headers["webhook-signature"]  # type: ignore[union-attr]
    assert signature not in html
    assert signature[:12] + "…" in html


def test_revealing_a_masked_field_is_audited(
    admin_client: FlaskClient, post_event: PostEvent, service: Service
) -> None:
    post_event("chat.completion", {"id": "c", "email": "ann@example.com"}, msg_id="msg_reveal")
    token = csrf_token(admin_client, "/admin/events/msg_reveal")
    response = admin_client.post(
        "/admin/events/msg_reveal/reveal", data={"csrf_token": token, "pointer": "/data/email"}
    )
    assert response.status_code == 200
    assert "ann@example.com" in response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    with service.db.transaction() as session:
        entry = session.scalars(select(AuditRow).order_by(AuditRow.id.desc())).first()
        assert entry is not None
        assert (entry.action, entry.actor, entry.target) == (
            "event.reveal_field",
            ADMIN_USERNAME,
            "msg_reveal",
        )
        assert entry.details == {"field": "/data/email"}
    # Only masked fields can be asked for this way.
    refused = admin_client.post(
        "/admin/events/msg_reveal/reveal", data={"csrf_token": token, "pointer": "/data/id"}
    )
    assert refused.status_code == 400


def test_replay_from_the_page(
    admin_client: FlaskClient, post_event: PostEvent, service: Service
) -> None:
    post_event("multi.step", {"id": "x", "fail_handler": "step_two"}, msg_id="msg_page_replay")
    service.dispatcher.process_events(["msg_page_replay"])["msg_page_replay"]
    token = csrf_token(admin_client, "/admin/events/msg_page_replay")
    handler = "tests.support.handlers.step_two"
    response = admin_client.post(
        "/admin/events/msg_page_replay/replay", data={"csrf_token": token, "handler": handler}
    )
    assert response.status_code == 302
    service.dispatcher.process_events(["msg_page_replay"])["msg_page_replay"]
    with service.db.transaction() as session:
        attempts = session.scalars(
            select(AttemptRow).where(AttemptRow.event_id == "msg_page_replay")
        ).all()
    step_two = sorted((a.number, a.run) for a in attempts if a.handler == handler)
    assert step_two == [(1, 1), (2, 2)]
    assert [a.number for a in attempts if a.handler.endswith("step_one")] == [1]
    assert "event.replay" in audit_actions(service)


def test_bulk_replay_asks_for_confirmation(
    admin_client: FlaskClient, post_event: PostEvent, service: Service
) -> None:
    for n in range(3):
        post_event("model.failed", {"id": f"m{n}", "fail_handler": "alert"}, msg_id=f"msg_bulk{n}")
        service.dispatcher.process_events([f"msg_bulk{n}"])[f"msg_bulk{n}"]
    post_event("chat.completion", {"id": "ok"}, msg_id="msg_bulk_ok")
    service.dispatcher.process_events(["msg_bulk_ok"])["msg_bulk_ok"]
    token = csrf_token(admin_client, "/admin/events")
    form = {"csrf_token": token, "type": "model.failed"}
    confirm = admin_client.post("/admin/replay", data=form)
    assert confirm.status_code == 200
    html = confirm.get_data(as_text=True)
    assert "Replay 3 events?" in html
    with service.db.transaction() as session:
        assert all(
            session.get(EventRow, f"msg_bulk{n}").status == EventStatus.FAILED  # type: ignore[union-attr]
            for n in range(3)
        )
    done = admin_client.post("/admin/replay", data={**form, "confirm": "yes"})
    assert done.status_code == 302
    assert service.relay.relay_once() == 3  # handed to the broker like new events
    with service.db.transaction() as session:
        statuses = {session.get(EventRow, f"msg_bulk{n}").status for n in range(3)}  # type: ignore[union-attr]
        assert statuses == {EventStatus.QUEUED}
        assert session.get(EventRow, "msg_bulk_ok").status == EventStatus.SUCCEEDED  # type: ignore[union-attr]
    assert audit_actions(service)[-1] == "events.bulk_replay"


def test_delete_from_the_page(
    admin_client: FlaskClient, post_event: PostEvent, service: Service
) -> None:
    post_event(msg_id="msg_page_delete")
    token = csrf_token(admin_client, "/admin/events/msg_page_delete")
    response = admin_client.post("/admin/events/msg_page_delete/delete", data={"csrf_token": token})
    assert response.status_code == 302
    with service.db.transaction() as session:
        assert session.get(EventRow, "msg_page_delete") is None
    assert audit_actions(service)[-1] == "event.delete"
    assert admin_client.get("/admin/events/msg_page_delete").status_code == 404


def test_audit_page(admin_client: FlaskClient) -> None:
    html = admin_client.get("/admin/audit").get_data(as_text=True)
    assert "admin.login" in html
    assert ADMIN_USERNAME in html
    assert admin_client.get("/admin/audit?start=2024-01-01&end=2024-01-31").status_code == 200
    assert admin_client.get("/admin/audit?start=soon").status_code == 400


def test_static_assets(admin_client: FlaskClient) -> None:
    js = admin_client.get("/admin/static/admin.js")
    assert js.status_code == 200
    assert "innerHTML" not in js.get_data(as_text=True)
    assert admin_client.get("/admin/static/admin.css").status_code == 200
