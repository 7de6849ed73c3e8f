"""`make run`'s one-time login link, and ``GET /``: never a 404."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from webhooks_app import create_app
from webhooks_app.config import Settings
from webhooks_app.service import Service
from webhooks_app.store import AuditRow

TOKEN = "a-token-only-this-make-run-knows"


@pytest.fixture
def link_app(settings: Settings) -> Iterator[Flask]:
    app = create_app(
        settings.replace(admin_username=None, admin_password_hash=None, admin_login_token=TOKEN)
    )
    yield app
    service: Service = app.extensions["webhooks"]
    with service.db.transaction() as session:
        session.query(AuditRow).delete()
    service.db.dispose()


def test_the_printed_link_signs_in_and_a_wrong_token_does_not(link_app: Flask) -> None:
    client = link_app.test_client()
    assert client.get("/admin/events").status_code == 302  # to the login page
    page = client.get("/admin/login").get_data(as_text=True)
    assert "make run" in page
    assert 'name="password"' not in page
    wrong = client.get("/admin/login?token=guess")
    assert wrong.status_code == 401
    assert client.get("/admin/events").status_code == 302
    right = client.get(f"/admin/login?token={TOKEN}")
    assert right.status_code == 302
    assert right.headers["Location"].endswith("/admin/events")
    assert client.get("/admin/events").status_code == 200
    service: Service = link_app.extensions["webhooks"]
    with service.db.transaction() as session:
        actions = [(row.actor, row.action) for row in session.query(AuditRow).order_by(AuditRow.id)]
    assert actions == [("anonymous", "admin.login_failed"), ("local", "admin.login")]


def test_a_session_of_the_link_ends_when_make_run_restarts_with_a_new_token(
    link_app: Flask, settings: Settings
) -> None:
    client = link_app.test_client()
    client.get(f"/admin/login?token={TOKEN}")
    cookie = client.get_cookie("aw_session")
    assert cookie is not None
    restarted = create_app(
        settings.replace(admin_username=None, admin_password_hash=None, admin_login_token="new")
    )
    try:
        other = restarted.test_client()
        other.set_cookie("aw_session", cookie.value)
        assert other.get("/admin/events").status_code == 302
    finally:
        restarted.extensions["webhooks"].db.dispose()


def test_no_link_without_a_token_and_the_token_is_no_password(
    app: Flask, settings: Settings
) -> None:
    client = app.test_client()  # ADMIN_USERNAME / ADMIN_PASSWORD_HASH set: no link mode
    assert client.get(f"/admin/login?token={TOKEN}").status_code == 401
    assert client.get("/admin/events").status_code == 302


def test_root_redirects_to_the_admin_page_when_it_is_on(link_app: Flask) -> None:
    answer = link_app.test_client().get("/")
    assert answer.status_code == 302
    assert answer.headers["Location"].endswith("/admin/")


def test_root_names_the_endpoints_when_the_admin_is_off(settings: Settings) -> None:
    app = create_app(settings.replace(admin_username=None, admin_password_hash=None))
    try:
        answer = app.test_client().get("/")
    finally:
        app.extensions["webhooks"].db.dispose()
    assert answer.status_code == 200
    page = answer.get_data(as_text=True)
    assert "/webhooks/events" in page
    assert "ADMIN_USERNAME" in page
