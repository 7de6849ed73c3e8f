"""GET /metrics counts what happened; log lines are JSON, carry the event id, and no secret."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from tests.support.signing import TEST_SECRET, delivery
from webhooks_app import create_app
from webhooks_app.config import Settings
from webhooks_app.service import Service

METRICS_TOKEN = "test-metrics-token"


@pytest.fixture
def metrics_app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings.replace(metrics_token=METRICS_TOKEN))
    yield app
    app.extensions["webhooks"].db.dispose()


def scrape(app: Flask) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = app.test_client().get(
        "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_the_token(metrics_app: Flask, app: Flask) -> None:
    client = metrics_app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    # Without METRICS_TOKEN the endpoint does not exist.
    assert app.test_client().get("/metrics").status_code == 404


def test_metrics_count_deliveries_handlers_and_the_backlog(metrics_app: Flask) -> None:
    service: Service = metrics_app.extensions["webhooks"]
    client = metrics_app.test_client()
    before = scrape(metrics_app)

    def post(*args: Any, **kwargs: Any) -> int:
        body, headers = delivery(*args, **kwargs)
        return client.post("/webhooks/events", data=body, headers=headers).status_code

    assert post(msg_id="m_obs_1") == 200
    assert post(msg_id="m_obs_2") == 200
    assert post(msg_id="m_obs_1") == 200  # a duplicate
    assert post(msg_id="m_obs_3", secret="whsec_" + "A" * 32) == 401
    assert post("model.failed", {"id": "x", "fail_handler": "alert"}, msg_id="m_obs_4") == 200
    assert post("embedding.created", {"id": "e"}, msg_id="m_obs_5") == 200  # no handler
    service.relay.relay_once()
    after = scrape(metrics_app)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    received = "webhooks_events_received_total"
    assert delta(received, type="chat.completion", outcome="accepted") == 2
    assert delta(received, type="chat.completion", outcome="duplicate") == 1
    assert delta(received, type="model.failed", outcome="accepted") == 1
    assert delta(received, type="unknown", outcome="unauthorized") == 1
    assert delta("webhooks_signature_failures_total", reason="no_matching_signature") == 1
    assert delta("webhooks_intake_seconds_count") == 6

    outcomes = service.dispatcher.process_events(["m_obs_1", "m_obs_2", "m_obs_4", "m_obs_5"])
    assert sum(len(o.ran) for o in outcomes.values()) == 3
    after_run = scrape(metrics_app)
    record = "tests.support.handlers.record"
    alert = "tests.support.handlers.alert"
    attempts = "webhooks_handler_attempts_total"
    assert (
        value(after_run, attempts, handler=record, outcome="succeeded")
        - value(after, attempts, handler=record, outcome="succeeded")
        == 2
    )
    assert (
        value(after_run, attempts, handler=alert, outcome="failed")
        - value(after, attempts, handler=alert, outcome="failed")
        == 1
    )
    assert (
        value(after_run, "webhooks_handler_seconds_count", handler=record)
        - value(after, "webhooks_handler_seconds_count", handler=record)
        == 2
    )
    assert (
        value(after_run, "webhooks_events_finished_total", status="succeeded")
        - value(after, "webhooks_events_finished_total", status="succeeded")
        == 2
    )
    assert (
        value(after_run, "webhooks_events_finished_total", status="skipped")
        - value(after, "webhooks_events_finished_total", status="skipped")
        == 1
    )
    # Read from the store at scrape time: nothing is waiting for the relay, nothing is dead.
    assert value(after_run, "webhooks_events_awaiting_handoff") == 0
    assert value(after_run, "webhooks_events_dead") == 0


def read_log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    lines = []
    for line in capsys.readouterr().err.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_log_lines_carry_the_event_id_and_no_secret(
    client: Any,
    service: Service,
    post_event: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    marker = "a-body-value-that-must-not-be-logged"
    post_event("multi.step", {"id": "x", "note": marker, "fail_handler": "step_one"}, msg_id="log1")
    body, headers = delivery(msg_id="log_bad")
    headers["webhook-signature"] = "v1,AAAA"
    client.post("/webhooks/events", data=body, headers=headers)
    service.dispatcher.process_events(["log1"])
    lines = read_log_lines(capsys)
    text = json.dumps(lines)
    assert TEST_SECRET not in text
    assert TEST_SECRET[6:] not in text
    assert marker not in text
    assert "v1,AAAA" not in text

    received = [line for line in lines if line["event"] == "event received"]
    assert received
    assert received[0]["event_id"] == "log1"
    assert received[0]["type"] == "multi.step"
    refused = [line for line in lines if line["event"] == "delivery refused"]
    assert refused
    assert refused[0]["event_id"] == "log_bad"
    assert refused[0]["reason"] == "no_matching_signature"
    # The failing handler's own (stdlib) log line carries the event and the handler.
    failed = [line for line in lines if line["event"].startswith("handler failed")]
    assert failed
    assert failed[0]["event_id"] == "log1"
    assert failed[0]["handler"] == "tests.support.handlers.step_one"
    recorded = [line for line in lines if line["event"] == "handler attempt recorded"]
    assert {line["handler"] for line in recorded} == {
        "tests.support.handlers.step_one",
        "tests.support.handlers.step_two",
    }
    assert all(line["event_id"] == "log1" for line in recorded)
    assert all("timestamp" in line and "level" in line for line in lines)


def test_secret_looking_fields_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    import structlog

    capsys.readouterr()
    structlog.get_logger("test").warning(
        "oops", event_id="e1", secret="whsec_x", authorization="Bearer y", body="{...}"
    )
    (line,) = read_log_lines(capsys)
    assert line["event_id"] == "e1"
    assert line["secret"] == line["authorization"] == line["body"] == "[redacted]"
