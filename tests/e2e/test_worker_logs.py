"""What a handler logs reaches the worker's stderr: its own ``logging`` lines, the attempt line
and the traceback of a handler that raised, under a real Celery worker (prefork pool, Celery's
stdout redirection as configured by default), in both log formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import ADMIN_TOKEN
from tests.support.processes import ROOT, free_port, gunicorn, wait_until
from tests.support.signing import TEST_SECRET, delivery
from webhooks_app.config import normalize_database_url
from webhooks_app.store import Base

pytestmark = pytest.mark.e2e

HANDLERS = """
import logging

from webhooks_app import Event, on

log = logging.getLogger("loud_handlers")


@on("chat.completion", max_attempts=1)
def shout(event: Event) -> None:
    log.info("shout saw %s", event.id)
    raise RuntimeError("planned failure: boom-" + event.id)
"""


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_handler_lines_attempt_lines_and_tracebacks_reach_the_workers_stderr(
    postgres_url: str, tmp_path: Path, log_format: str
) -> None:
    (tmp_path / "loud_handlers.py").write_text(HANDLERS)
    env = {
        "DATABASE_URL": postgres_url,
        "REDIS_URL": "",
        "CELERY_BROKER_URL": "",
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "WEBHOOK_SECRETS": TEST_SECRET,
        "HANDLERS_MODULE": "loud_handlers",
        "PYTHONPATH": f"{tmp_path}:{ROOT}",
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "SECRET_KEY": "logs",
        "LOG_FORMAT": log_format,
        "WEB_CONCURRENCY": "1",
    }
    port = free_port()
    web = gunicorn(env, port, tmp_path)
    stderr_path = tmp_path / "worker.stderr"
    with stderr_path.open("wb") as stderr, (tmp_path / "worker.stdout").open("wb") as stdout:
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker"),
                *("--loglevel=INFO", "--concurrency=1"),
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    event_id = f"msg_logs_{log_format}"
    try:
        body, headers = delivery(data={"id": "chat_logs"}, msg_id=event_id)
        base = f"http://127.0.0.1:{port}"
        response = httpx.post(f"{base}/webhooks/events", content=body, headers=headers, timeout=10)
        assert response.json()["status"] == "accepted"

        def status() -> str | None:
            answer = httpx.get(
                f"{base}/api/events/{event_id}",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                timeout=5,
            )
            return answer.json().get("status") if answer.status_code == 200 else None

        wait_until(lambda: status() == "dead", 60, 0.3, "the handler to go dead")
        needle = f"boom-{event_id}"
        wait_until(lambda: needle in stderr_path.read_text(), 10, 0.2, "the traceback")
    finally:
        worker.terminate()
        worker.wait(20)
        web.stop()
        # The session's database is shared: leave it as empty as the next test expects.
        engine = sa.create_engine(normalize_database_url(postgres_url))
        with engine.begin() as connection:
            tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            connection.execute(sa.text(f"TRUNCATE {tables} CASCADE"))
        engine.dispose()
    text = stderr_path.read_text()
    assert f"shout saw {event_id}" in text, text[-3000:]
    assert "Traceback (most recent call last)" in text or '"exception"' in text, text[-3000:]
    assert f"RuntimeError: planned failure: boom-{event_id}" in text, text[-3000:]
    if log_format == "json":
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        said = [line for line in lines if line.get("event") == f"shout saw {event_id}"]
        assert said, text[-3000:]
        assert said[0]["event_id"] == event_id
        assert said[0]["handler"] == "loud_handlers.shout"
        attempts = [line for line in lines if line.get("event") == "handler attempt recorded"]
        assert any(
            a["event_id"] == event_id
            and a["handler"] == "loud_handlers.shout"
            and a["status"] == "failed"
            and a["duration_ms"] >= 0  # how long the handler ran
            for a in attempts
        ), text[-3000:]
        failed = [line for line in lines if line.get("event", "").startswith("handler failed")]
        assert failed
        assert needle in failed[0]["exception"]
    else:
        assert "handler attempt recorded" in text
        assert "Traceback (most recent call last)" in text
