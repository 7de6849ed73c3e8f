"""The events list's handler summaries (one bounded query per page), relative times, and the
detail page's attempts grouped by run with repeated tracebacks collapsed."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import event

from webhooks_app import replay
from webhooks_app.admin.presenting import relative, stack_of
from webhooks_app.config import Settings
from webhooks_app.service import Service

PostEvent = Callable[..., Any]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.replace(retry_base_seconds=0.0)  # retries are due at once


def row_of(html: str, event_id: str) -> str:
    found = re.search(rf'<tr data-event-id="{event_id}">(.*?)</tr>', html, re.S)
    assert found, f"no row for {event_id}"
    return found.group(1)


@contextmanager
def counting_statements(service: Service) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    event.listen(service.db.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(service.db.engine, "before_cursor_execute", count)


def test_rows_show_the_handler_summary_and_the_last_error(
    admin_client: FlaskClient, post_event: PostEvent, service: Service
) -> None:
    post_event("multi.step", {"id": "a", "fail_handler": "step_two"}, msg_id="msg_half")
    service.dispatcher.process_events(["msg_half"])
    service.dispatcher.process_events(["msg_half"])  # a second failure: the newer error shows
    post_event("multi.step", {"id": "b"}, msg_id="msg_whole")
    service.dispatcher.process_events(["msg_whole"])
    post_event("chat.completion", {"id": "c"}, msg_id="msg_waiting")

    html = admin_client.get("/admin/events").get_data(as_text=True)
    half = row_of(html, "msg_half")
    assert "1/2 ok" in half
    assert "planned failure of step_two on attempt 2" in half
    whole = row_of(html, "msg_whole")
    assert "2/2 ok" in whole
    assert "last-error" not in whole
    assert "ok</span>" not in row_of(html, "msg_waiting")  # no handler has run yet

    # Once the failing handler succeeds on a replay, its old error is no longer "last".
    with service.db.transaction() as session:
        replay.reset_for_replay(
            session, "msg_half", registry=service.registry, settings=service.settings
        )
    service.relay.relay_once()
    with service.db.transaction() as session:
        from webhooks_app.store import EventRow

        row = session.get(EventRow, "msg_half")
        assert row is not None
        row.payload = {**row.payload, "data": {"id": "a"}}
    service.dispatcher.process_events(["msg_half"])
    half = row_of(admin_client.get("/admin/events").get_data(as_text=True), "msg_half")
    assert "2/2 ok" in half
    assert "last-error" not in half


def test_the_list_costs_the_same_statements_for_3_or_30_events(
    admin_client: FlaskClient, post_event: PostEvent, service: Service
) -> None:
    def statements_for_page() -> int:
        with counting_statements(service) as seen:
            assert admin_client.get("/admin/events").status_code == 200
        return len(seen)

    for n in range(3):
        post_event("multi.step", {"id": f"s{n}", "fail_handler": "step_one"}, msg_id=f"m{n}")
        service.dispatcher.process_events([f"m{n}"])
    few = statements_for_page()
    for n in range(3, 30):
        post_event("multi.step", {"id": f"s{n}", "fail_handler": "step_one"}, msg_id=f"m{n}")
        service.dispatcher.process_events([f"m{n}"])
    html = admin_client.get("/admin/events").get_data(as_text=True)
    assert html.count("1/2 ok") == 30
    assert statements_for_page() == few


def test_times_are_relative_with_the_utc_moment_on_hover(
    admin_client: FlaskClient, post_event: PostEvent
) -> None:
    post_event("chat.completion", {"id": "t"}, msg_id="msg_time")
    cell = row_of(admin_client.get("/admin/events").get_data(as_text=True), "msg_time")
    found = re.search(r'<time datetime="([^"]+)" title="([^"]+)">([^<]+)</time>', cell)
    assert found, cell
    iso, title, text = found.groups()
    assert iso.endswith("Z")
    assert title.endswith(" UTC")
    assert title.startswith(iso[:10])
    assert text == "just now" or text.endswith(" s ago")


def test_relative() -> None:
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    cases = {
        timedelta(0): "just now",
        timedelta(seconds=12): "12 s ago",
        timedelta(minutes=5, seconds=59): "5 min ago",
        timedelta(hours=3): "3 h ago",
        timedelta(days=2, hours=23): "2 d ago",
        timedelta(seconds=-5): "in 5 s",
    }
    for ago, text in cases.items():
        assert relative(now - ago, now) == text


def test_attempts_are_grouped_by_run_and_repeated_tracebacks_collapsed(
    admin_client: FlaskClient, post_event: PostEvent, service: Service
) -> None:
    post_event(
        "model.failed", {"id": "m", "fail_handler": "alert", "fail_times": 4}, msg_id="msg_runs"
    )
    for _ in range(3):
        service.dispatcher.process_events(["msg_runs"])  # run 1: three failures, dead
    with service.db.transaction() as session:
        replay.reset_for_replay(
            session, "msg_runs", registry=service.registry, settings=service.settings
        )
    service.relay.relay_once()
    service.dispatcher.process_events(["msg_runs"])  # run 2: fails (attempt 4), then succeeds
    service.dispatcher.process_events(["msg_runs"])

    html = admin_client.get("/admin/events/msg_runs").get_data(as_text=True)
    runs = re.findall(r'<section class="run" data-run="(\d+)">(.*?)</section>', html, re.S)
    assert [n for n, _ in runs] == ["1", "2"]
    first, second = runs[0][1], runs[1][1]
    assert "3 failed" in first
    assert first.count('class="attempt ') == 3
    assert "1 failed, 1 succeeded" in second
    # One full traceback for the failing line; the others point at it; messages stay.
    assert html.count('<pre class="traceback">') == 1
    assert html.count("Same traceback as attempt #1.") == 3
    for n in (1, 2, 3, 4):
        assert f"planned failure of alert on attempt {n}" in html


def test_stack_of_drops_only_the_message_line() -> None:
    one = 'Traceback (most recent call last):\n  File "h.py", line 3\nRuntimeError: a 1\n'
    two = 'Traceback (most recent call last):\n  File "h.py", line 3\nRuntimeError: a 2\n'
    elsewhere = 'Traceback (most recent call last):\n  File "h.py", line 9\nRuntimeError: a 1\n'
    assert stack_of(one) == stack_of(two) != stack_of(elsewhere)
