"""Issue 17 items 2, 5, 8 and 9 against real gunicorn (two worker processes), over HTTP, as the
red team ran them: no test client, no in-process state shared between requests."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flask import Flask

from tests.conftest import ADMIN_PASSWORD, ADMIN_TOKEN, ADMIN_USERNAME
from tests.support.processes import free_port, gunicorn
from tests.support.signing import delivery

pytestmark = pytest.mark.e2e
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def base_url(app: Flask, service_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    env = {
        **service_env,
        "ADMIN_LOGIN_RATE_LIMIT": "5 per minute",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_port()
    web = gunicorn(env, port, logs)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        web.stop()


def log_in(
    client: httpx.Client, forwarded_for: str | None = None, password: str = ADMIN_PASSWORD
) -> httpx.Response:
    page = client.get("/admin/login").text
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert token
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return client.post(
        "/admin/login",
        data={"username": ADMIN_USERNAME, "password": password, "csrf_token": token[1]},
        headers=headers,
    )


def test_hardening_over_real_gunicorn(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=20) as client:
        # 2: a header over 64 characters no longer breaks logins, nor picks the address.
        long_header = "1" * 100
        assert log_in(client, long_header).status_code == 302
        assert client.get("/admin/events").status_code == 200
        entries = client.get("/api/audit", headers=AUTH).json()["data"]
        assert entries[0]["action"] == "admin.login"
        assert entries[0]["remote_addr"] == "127.0.0.1"

        # 8: a copied cookie dies with the logout, in every web process.
        cookie = client.cookies["aw_session"]
        with httpx.Client(base_url=base_url, timeout=20) as thief:
            thief.cookies.set("aw_session", cookie)
            for _ in range(4):  # both gunicorn workers answer it
                assert thief.get("/api/events").status_code == 200
            page = client.get("/admin/events").text
            token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
            assert token
            assert client.post("/admin/logout", data={"csrf_token": token[1]}).status_code == 302
            for _ in range(4):
                assert thief.get("/api/events").status_code == 401
                assert thief.get("/admin/events").status_code == 302

    # 2: rotating X-Forwarded-For does not get past the throttle.
    with httpx.Client(base_url=base_url, timeout=20) as client:
        statuses = [
            log_in(client, f"198.51.100.{n}", password="guess").status_code for n in range(7)
        ]
        assert statuses[:5] == [401] * 5
        assert set(statuses[5:]) == {429}

    # 5: the red team's audit cursor.
    cursor = base64.urlsafe_b64encode(
        json.dumps(["2026-12-01T00:00:00+00:00", "²"]).encode()
    ).decode()
    answer = httpx.get(f"{base_url}/api/audit", params={"cursor": cursor}, headers=AUTH)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_cursor"

    # 9: an id with slashes, opened, replayed and deleted.
    body, headers = delivery("chat.completion", {"id": "s"}, msg_id="msg/with/slash_x")
    assert (
        httpx.post(f"{base_url}/webhooks/events", content=body, headers=headers).status_code < 300
    )
    event = f"{base_url}/api/events/msg/with/slash_x"
    assert httpx.get(event, headers=AUTH).json()["id"] == "msg/with/slash_x"
    assert httpx.post(event + "/replay", headers=AUTH).status_code in (202, 409)
    assert httpx.delete(event, headers=AUTH).status_code == 200
    assert httpx.get(event, headers=AUTH).status_code == 404
