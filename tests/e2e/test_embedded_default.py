"""The README's first command, as `make run` runs it: the Procfile's web, worker and beat under
honcho, on SQLite and the filesystem broker (no server at all), through the production code paths:
gunicorn with its outbox relay process and a real Celery worker, not eager mode."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support.processes import Process, answers, flask, free_port, wait_until
from tests.support.signing import TEST_SECRET, delivery

pytestmark = pytest.mark.e2e


def test_make_run_receives_and_processes_an_event_with_no_server(tmp_path: Path) -> None:
    port = free_port()
    runs = tmp_path / "runs.jsonl"
    env = {
        # Empty means unset: SQLite and the filesystem broker under INSTANCE_DIR.
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "CELERY_BROKER_URL": "",
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "WEBHOOK_SECRETS": TEST_SECRET,
        "HANDLERS_MODULE": "tests.support.handlers",
        "TEST_HANDLER_LOG": str(runs),
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "WEB_CONCURRENCY": "2",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    migrate = flask(env, "db", "upgrade")
    assert migrate.returncode == 0, migrate.stderr
    service = Process(
        "honcho",
        [sys.executable, "-m", "honcho", "start", "--port", str(port), "web", "worker", "beat"],
        env,
        tmp_path,
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers(f"{base}/healthz"), 60, 0.2, "the web process")
        body, headers = delivery(data={"id": "chat_embedded"}, msg_id="msg_embedded")
        response = httpx.post(f"{base}/webhooks/events", content=body, headers=headers, timeout=10)
        assert response.json() == {"id": "msg_embedded", "status": "accepted"}

        def status() -> str | None:
            answer = httpx.get(
                f"{base}/api/events/msg_embedded",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=5,
            )
            return answer.json().get("status") if answer.status_code == 200 else None

        wait_until(
            lambda: status() == "succeeded", 60, 0.3, f"the handler:\n{service.output()[-3000:]}"
        )
        lines = [json.loads(line) for line in runs.read_text().splitlines()]
        assert [(line["event"], line["handler"]) for line in lines] == [("msg_embedded", "record")]
        assert (tmp_path / "instance" / "webhooks.sqlite3").exists()
    finally:
        service.stop()
