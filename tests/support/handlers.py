"""Handlers the tests register (HANDLERS_MODULE=tests.support.handlers).

Each run appends a JSON line to $TEST_HANDLER_LOG (when set) so tests in other processes can
count runs. The event's ``data`` steers them: ``sleep`` (seconds), ``fail_handler`` (a short
handler name, or ``*``) with ``fail_times`` (fail while attempt <= fail_times; default always).
"""

from __future__ import annotations

import json
import os
import time

from webhooks_app import Event, on


def record_run(event: Event, name: str) -> None:
    path = os.environ.get("TEST_HANDLER_LOG")
    if path:
        line = json.dumps(
            {"event": event.id, "handler": name, "attempt": event.attempt, "pid": os.getpid()}
        )
        with open(path, "a", encoding="utf-8") as log:
            log.write(line + "\n")
    data = event.data
    if data.get("sleep"):
        time.sleep(float(data["sleep"]))
    if data.get("fail_handler") in (name, "*") and event.attempt <= int(
        data.get("fail_times", 10**6)
    ):
        raise RuntimeError(f"planned failure of {name} on attempt {event.attempt}")


@on("chat.completion")
def record(event: Event) -> None:
    record_run(event, "record")


@on("model.failed", max_attempts=3)
def alert(event: Event) -> None:
    record_run(event, "alert")


@on("multi.step")
def step_one(event: Event) -> None:
    record_run(event, "step_one")


@on("multi.step")
def step_two(event: Event) -> None:
    record_run(event, "step_two")
