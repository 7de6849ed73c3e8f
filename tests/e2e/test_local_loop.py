"""The README's local loop with real processes: gunicorn, the emulator, a Celery worker and the
``flask`` commands, with no WEBHOOK_SECRETS: the stored secret alone verifies deliveries."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ENCRYPTION_KEY
from tests.support.processes import (
    Process,
    answers,
    celery_worker,
    flask,
    free_port,
    gunicorn,
    wait_until,
)
from webhooks_app.emulator.app import DEFAULT_API_KEY, DEFAULT_API_KEY_ID

pytestmark = pytest.mark.e2e


@pytest.fixture
def loop_env(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    emulator_port, web_port = free_port(), free_port()
    env = {
        "DATABASE_URL": postgres_url,
        "REDIS_URL": redis_url,
        "ENCRYPTION_KEYS": ENCRYPTION_KEY,
        "ASSISTERS_API_BASE": f"http://127.0.0.1:{emulator_port}/v1",
        "ASSISTERS_API_KEY": DEFAULT_API_KEY,
        "ASSISTERS_API_KEY_ID": DEFAULT_API_KEY_ID,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
        "EMULATOR_URL": f"http://127.0.0.1:{emulator_port}",
        "EMULATOR_PORT": str(emulator_port),
        "EMULATOR_RETRY_COMPRESSION": "1000",
        "HANDLERS_MODULE": "tests.support.handlers",
        "TEST_HANDLER_LOG": str(tmp_path / "handlers.log"),
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "WEBHOOK_SECRETS": "",
        "PORT": str(web_port),
    }
    yield env
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(
            text("TRUNCATE subscriptions, api_keys, rotations, events, event_handlers CASCADE")
        )
    engine.dispose()


def test_register_trigger_and_the_handler_runs(loop_env: dict[str, str], tmp_path: Path) -> None:
    processes: list[Process] = []
    try:
        emulator = Process(
            "emulator", [sys.executable, "-m", "webhooks_app.emulator", "serve"], loop_env, tmp_path
        ).start()
        processes.append(emulator)
        wait_until(
            lambda: answers(loop_env["EMULATOR_URL"] + "/_emulator/health"), 30, what="emulator"
        )
        processes.append(gunicorn(loop_env, int(loop_env["PORT"]), tmp_path))
        processes.append(celery_worker(loop_env, tmp_path, concurrency=1))

        registered = flask(loop_env, "subscriptions", "register")
        assert registered.returncode == 0, registered.stderr + registered.stdout
        assert "registered wh_" in registered.stdout

        triggered = flask(loop_env, "emulator", "trigger", "chat.completion")
        assert triggered.returncode == 0, triggered.stderr + triggered.stdout
        match = re.search(r"msg_[0-9a-f]+", triggered.stdout)
        assert match, triggered.stdout
        log_path = Path(loop_env["TEST_HANDLER_LOG"])

        def handled() -> bool:
            if not log_path.exists():
                return False
            runs = [json.loads(line) for line in log_path.read_text().splitlines()]
            return any(r["event"] == match.group() and r["handler"] == "record" for r in runs)

        wait_until(handled, 60, what="the handler to run")
        outputs = "".join(p.output() for p in processes) + registered.stdout
        assert ENCRYPTION_KEY not in outputs
    finally:
        for process in reversed(processes):
            process.stop()
