"""The finished admin page in a real headless Chromium, against gunicorn, a Celery worker and
the provider emulator: handler summaries and relative times on the list, runs on the detail,
the failed-handlers replay, the subscriptions page's Rotate now, a 390 px viewport, dark mode,
the `/` shortcut, and no CSP violation anywhere. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.conftest import ADMIN_PASSWORD, ADMIN_TOKEN, ADMIN_USERNAME, ENCRYPTION_KEY
from tests.e2e.test_admin_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    api_status,
    post,
    require_chromium,
)
from tests.support.emulator import RunningEmulator
from tests.support.processes import ROOT, celery_worker, free_port, gunicorn, wait_until

pytestmark = pytest.mark.e2e

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture
def stack(
    app: Flask,
    service_env: dict[str, str],
    tmp_path: Path,
    emulator: RunningEmulator,
) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **service_env,
        "ENCRYPTION_KEYS": ENCRYPTION_KEY,
        "ASSISTERS_API_BASE": emulator.api_base,
        "ASSISTERS_API_KEY": emulator.api_key,
        "ASSISTERS_API_KEY_ID": emulator.api_key_id,
        "PUBLIC_BASE_URL": base,
        # Other tests' failed logins from 127.0.0.1 count in the same Redis for a minute.
        "ADMIN_LOGIN_RATE_LIMIT": "1000 per minute",
        "HANDLER_MAX_ATTEMPTS": "20",  # step_two keeps failing (and retrying) during the test
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    web = gunicorn(env, port, logs)
    worker = celery_worker(env, logs)
    try:
        yield base, env
    finally:
        worker.stop()
        web.stop()


def api_event(base: str, event_id: str) -> dict[str, Any]:
    import httpx

    response = httpx.get(
        f"{base}/api/events/{event_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    body: dict[str, Any] = response.json()
    return body


def no_sideways_scroll(page: Any) -> None:
    page.wait_for_load_state("load")  # measured with the stylesheet applied
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    wide = page.evaluate(
        """[...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth)
            .slice(0, 5)
            .map(e => e.tagName + '.' + e.className + ': ' + e.textContent.slice(0, 60))"""
    )
    assert overflow <= 0, f"{page.url} scrolls sideways by {overflow}px at 390 px: {wide}"


def test_the_finished_admin_pages_in_chromium(stack: tuple[str, dict[str, str]]) -> None:
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    base, env = stack
    post(base, "model.failed", {"id": "m", "fail_handler": "alert", "fail_times": 3}, "msg_dead")
    post(base, "multi.step", {"id": "s", "fail_handler": "step_two"}, "msg_half")
    post(base, "chat.completion", {"id": "chat_ok"}, "msg_ok")
    wait_until(lambda: api_status(base, "msg_dead") == "dead", 60, 0.5, "msg_dead to die")
    wait_until(lambda: api_status(base, "msg_ok") == "succeeded", 30, 0.5, "msg_ok")
    wait_until(
        lambda: len(api_event(base, "msg_half")["attempts"]) >= 2, 30, 0.5, "msg_half to run"
    )
    registered = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "webhooks_app", "subscriptions", "register"],
        env={**env, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert registered.returncode == 0, registered.stderr
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        violations: list[str] = []

        def new_page(**options: Any) -> Any:
            context = browser.new_context(**options)
            page = context.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            page.on(
                "console",
                lambda m: (
                    violations.append(m.text) if "Content Security Policy" in m.text else None
                ),
            )
            page.goto(f"{base}/admin/login")
            page.fill("input[name=username]", ADMIN_USERNAME)
            page.fill("input[name=password]", ADMIN_PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{base}/admin/events")
            return page

        try:
            # --- the list at 1280 px: summaries, last error, relative times, "/" ---------------
            page = new_page(viewport=DESKTOP)
            summary = page.locator("tr[data-event-id=msg_half] td.summary")
            expect(summary).to_contain_text("1/2 ok")
            expect(summary.locator(".last-error")).to_contain_text("planned failure of step_two")
            expect(page.locator("tr[data-event-id=msg_ok] td.summary")).to_contain_text("1/1 ok")
            expect(page.locator("tr[data-event-id=msg_dead] td.summary")).to_contain_text("0/1 ok")
            moment = page.locator("tr[data-event-id=msg_ok] td.when time")
            expect(moment).to_have_attribute("title", re.compile(r" UTC$"))
            expect(moment).to_have_text(re.compile(r"^(just now|\d+ (s|min) ago)$"))
            page.keyboard.press("/")
            assert page.evaluate("document.activeElement.id") == "search"
            page.keyboard.type("chat_ok")
            page.keyboard.press("Enter")
            expect(page.locator("table.events tbody tr[data-event-id]")).to_have_count(1)
            page.goto(f"{base}/admin/events")
            page.screenshot(path=str(ARTIFACTS / "admin-list-1280.png"), full_page=True)

            # --- the detail: runs, collapsed tracebacks, replay of the failed handlers --------
            page.goto(f"{base}/admin/events/msg_dead")
            runs = page.locator("#live-region section.run")
            expect(runs).to_have_count(1)
            expect(runs.first.locator(".attempt")).to_have_count(3)
            expect(page.locator("#live-region pre.traceback")).to_have_count(1)
            expect(page.locator(".same-stack")).to_have_count(2)
            expect(page.locator("#replay-choice")).to_have_value("failed")
            page.screenshot(path=str(ARTIFACTS / "admin-detail-1280.png"), full_page=True)
            page.click("#replay-button")
            expect(page.locator(".flash")).to_contain_text(
                "Replay queued: tests.support.handlers.alert"
            )
            expect(page.locator("#live-region .status-line .badge")).to_have_text(
                "succeeded", timeout=30_000
            )
            expect(runs).to_have_count(2)
            expect(runs.nth(1)).to_contain_text("Run 2")

            # --- subscriptions: the page, then Rotate now -------------------------------------
            page.click("nav a:text('Subscriptions')")
            expect(page).to_have_url(f"{base}/admin/subscriptions")
            subscriptions = page.locator("table.subscriptions tbody tr[data-subscription-id]")
            expect(subscriptions).to_have_count(1)
            expect(subscriptions.first).to_contain_text("whsec_…")
            expect(page.locator("table.api-keys")).to_contain_text("current")
            page.click("#rotate-subscriptions")
            expect(page.locator(".flash")).to_contain_text("both secrets are accepted until")
            expect(subscriptions).to_have_count(2)
            expect(page.locator("tr[data-rotation-step=retire_old]")).to_have_count(1)
            page.screenshot(path=str(ARTIFACTS / "admin-subscriptions-1280.png"), full_page=True)

            # --- 390 px: every page fits ------------------------------------------------------
            phone = new_page(viewport=PHONE, is_mobile=True, device_scale_factor=2)
            no_sideways_scroll(phone)
            phone.screenshot(path=str(ARTIFACTS / "admin-list-390.png"), full_page=True)
            for path, name in (
                ("/admin/events/msg_dead", "admin-detail-390.png"),
                ("/admin/subscriptions", "admin-subscriptions-390.png"),
                ("/admin/audit", None),
            ):
                phone.goto(base + path)
                no_sideways_scroll(phone)
                if name:
                    phone.screenshot(path=str(ARTIFACTS / name), full_page=True)

            # --- dark mode --------------------------------------------------------------------
            dark = new_page(viewport=DESKTOP, color_scheme="dark")
            background = dark.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == "rgb(11, 17, 32)", background
            dark.screenshot(path=str(ARTIFACTS / "admin-list-dark.png"), full_page=True)
            dark.goto(f"{base}/admin/events/msg_half")
            dark.screenshot(path=str(ARTIFACTS / "admin-detail-dark.png"), full_page=True)
            light = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert light == "rgb(248, 250, 252)", light

            assert violations == []
        finally:
            browser.close()
