"""The admin page in a real headless Chromium, against real gunicorn + Celery worker processes.

Log in, filter, search by data.id, open a dead event, replay it and watch it turn `succeeded`
without a reload; a `<script>` in a payload shows as text; a form posted without its CSRF token
is refused. Screenshots of the list and the detail go to tests/artifacts/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask

from tests.conftest import ADMIN_PASSWORD, ADMIN_TOKEN, ADMIN_USERNAME
from tests.support.processes import ROOT, celery_worker, free_port, gunicorn, wait_until
from tests.support.signing import delivery

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
XSS = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2">'


def require_chromium() -> None:
    if shutil.which(CHROMIUM) or Path(CHROMIUM).exists():
        return
    message = f"{CHROMIUM} is missing (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def server(app: Flask, service_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """gunicorn and a Celery worker on this session's database and Redis; yields the base URL."""
    env = service_env
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_port()
    web = gunicorn(env, port, logs)
    worker = celery_worker(env, logs)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        worker.stop()
        web.stop()


def post(base: str, event_type: str, data: dict[str, Any], msg_id: str) -> None:
    body, headers = delivery(event_type, data, msg_id=msg_id)
    response = httpx.post(f"{base}/webhooks/events", content=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text


def api_status(base: str, event_id: str) -> str | None:
    response = httpx.get(
        f"{base}/api/events/{event_id}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    return response.json().get("status") if response.status_code == 200 else None


def test_admin_page_in_chromium(server: str) -> None:
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    base = server
    post(
        base,
        "model.failed",
        {"id": "model_e2e", "fail_handler": "alert", "fail_times": 3},
        "msg_e2e_dead",
    )
    post(base, "chat.completion", {"id": "chat_e2e_ok"}, "msg_e2e_ok")
    post(base, "chat.completion", {"id": "chat_e2e_xss", "note": XSS}, "msg_e2e_xss")
    # alert has max_attempts=3 and fails attempts 1-3: dead after its retries (about 1 s, 2 s).
    wait_until(lambda: api_status(base, "msg_e2e_dead") == "dead", 60, 0.5, "the event to die")
    wait_until(lambda: api_status(base, "msg_e2e_ok") == "succeeded", 30, 0.5, "msg_e2e_ok")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda dialog: dialog.accept())
        try:
            # Log in (the list sends us to the login page first).
            page.goto(f"{base}/admin/events")
            expect(page).to_have_url(f"{base}/admin/login?next=/admin/events")
            page.fill("input[name=username]", ADMIN_USERNAME)
            page.fill("input[name=password]", ADMIN_PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{base}/admin/events")
            rows = page.locator("table.events tbody tr[data-event-id]")
            expect(rows).to_have_count(3)
            page.screenshot(path=str(ARTIFACTS / "admin-events.png"), full_page=True)

            # Filter by status.
            page.select_option("select[name=status]", "dead")
            page.click(".filters button[type=submit]")
            expect(rows).to_have_count(1)
            expect(rows.first).to_have_attribute("data-event-id", "msg_e2e_dead")

            # Search by data.id, open the event.
            page.goto(f"{base}/admin/events")
            page.fill("input[name=q]", "model_e2e")
            page.click(".filters button[type=submit]")
            expect(rows).to_have_count(1)
            page.click("a:text('msg_e2e_dead')")
            expect(page).to_have_url(f"{base}/admin/events/msg_e2e_dead")
            status = page.locator("#live-region .status-line .badge")
            expect(status).to_have_text("dead")
            expect(page.locator(".timeline .attempt")).to_have_count(3)
            expect(page.locator(".attempt-error").first).to_contain_text("planned failure")
            page.screenshot(path=str(ARTIFACTS / "admin-event-detail.png"), full_page=True)

            # Replay it, then watch it succeed without reloading the page.
            page.click("#replay-button")
            expect(page.locator(".flash")).to_contain_text("Replay queued")
            page.evaluate("window.__sameDocument = true")
            expect(status).to_have_text("succeeded", timeout=30_000)
            assert page.evaluate("window.__sameDocument") is True
            expect(page.locator(".timeline .attempt")).to_have_count(4)
            expect(page.locator(".timeline .attempt").nth(3)).to_contain_text("attempt #4")
            page.screenshot(path=str(ARTIFACTS / "admin-event-replayed.png"), full_page=True)

            # A <script> in a payload is text.
            page.goto(f"{base}/admin/events/msg_e2e_xss")
            expect(page.locator("#payload")).to_contain_text(XSS.replace('"', '\\"'))
            assert page.locator("#payload script, #payload img").count() == 0
            assert page.evaluate("window.__xss") is None

            # A form posted without its CSRF token is refused.
            page.goto(f"{base}/admin/events/msg_e2e_ok")
            page.evaluate(
                "document.querySelector('form[action$=\"/delete\"] input[name=csrf_token]')"
                ".remove()"
            )
            with page.expect_response(lambda r: r.url.endswith("/delete")) as answer:
                page.click("button.danger")
            assert answer.value.status == 400
            expect(page.locator(".error")).to_contain_text("CSRF")
            assert api_status(base, "msg_e2e_ok") == "succeeded"  # still there
        finally:
            browser.close()
