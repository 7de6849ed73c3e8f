"""A real stack for end-to-end tests: gunicorn, a Celery worker and beat, on the session's
PostgreSQL database and a private redis-server that tests may stop and start."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, ADMIN_USERNAME
from tests.support import processes
from tests.support.processes import Process
from tests.support.signing import TEST_SECRET, delivery
from webhooks_app.config import Settings


@dataclass
class Stack:
    env: dict[str, str]
    base_url: str
    log_dir: Path
    redis_port: int
    handler_log: Path
    redis: Process
    web: Process
    worker: Process
    beat: Process
    extra: list[Process] = field(default_factory=list)

    def post(
        self, event_type: str = "chat.completion", data: dict[str, Any] | None = None, **kwargs: Any
    ) -> httpx.Response:
        body, headers = delivery(event_type, data, **kwargs)
        return httpx.post(
            f"{self.base_url}/webhooks/events", content=body, headers=headers, timeout=20
        )

    def event(self, event_id: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.base_url}/api/events/{event_id}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def status(self, event_id: str) -> str:
        return str(self.event(event_id)["status"])

    def runs(self, event_id: str) -> list[dict[str, Any]]:
        if not self.handler_log.exists():
            return []
        lines = [json.loads(line) for line in self.handler_log.read_text().splitlines() if line]
        return [line for line in lines if line["event"] == event_id]

    def wait_for_status(self, event_id: str, status: str, timeout: float) -> None:
        processes.wait_until(
            lambda: self.status(event_id) == status,
            timeout,
            0.2,
            what=f"{event_id} to be {status}\n--- worker log:\n{self.worker.output()[-3000:]}",
        )

    def restart_redis(self) -> None:
        self.redis = processes.redis_server(self.redis_port, self.log_dir, self.log_dir)

    def start_worker(self, name: str) -> Process:
        self.worker = processes.celery_worker(self.env, self.log_dir, name=name)
        self.extra.append(self.worker)
        return self.worker


@pytest.fixture(scope="module")
def stack(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("e2e")
    redis_port = processes.free_port()
    redis = processes.redis_server(redis_port, log_dir, log_dir)
    handler_log = log_dir / "handler-runs.jsonl"
    env = {
        "DATABASE_URL": postgres_url,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "WEBHOOK_SECRETS": TEST_SECRET,
        "HANDLERS_MODULE": "tests.support.handlers",
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "SECRET_KEY": "e2e",
        "INSTANCE_DIR": str(log_dir / "instance"),
        "TEST_HANDLER_LOG": str(handler_log),
        # Compressed timings so recovery paths finish in seconds.
        "HANDLER_LEASE_SECONDS": "3",
        "BROKER_VISIBILITY_TIMEOUT": "10",
        "SWEEP_INTERVAL_SECONDS": "1",
        "HANDOFF_GRACE_SECONDS": "1",
        "WEB_CONCURRENCY": "4",
    }
    port = processes.free_port()
    web = processes.gunicorn(env, port, log_dir)
    worker = processes.celery_worker(env, log_dir)
    beat = processes.Process(
        "beat",
        [
            "python",
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "beat",
            "--loglevel=INFO",
        ],
        env,
        log_dir,
    ).start()
    stack = Stack(
        env, f"http://127.0.0.1:{port}", log_dir, redis_port, handler_log, redis, web, worker, beat
    )
    yield stack
    for process in [stack.beat, stack.worker, *stack.extra, stack.web, stack.redis]:
        process.stop()


@pytest.fixture
def outside_pytest_tmp() -> Iterator[Path]:
    """As root the wheel runs PostgreSQL as its own system user, which must traverse the path
    to its data; pytest keeps /tmp/pytest-of-root private (0700) and resets it each session."""
    path = Path(tempfile.mkdtemp(prefix="webhooks-make-run-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def service_env(settings: Settings, tmp_path: Path, admin_password_hash: str) -> dict[str, str]:
    """The environment of a real service process on this session's database and Redis, with
    the admin page and the API on; tests add what they need."""
    return {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.broker_url,
        "WEBHOOK_SECRETS": TEST_SECRET,
        "HANDLERS_MODULE": "tests.support.handlers",
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "SECRET_KEY": "e2e-secret-key",
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "ADMIN_USERNAME": ADMIN_USERNAME,
        "ADMIN_PASSWORD_HASH": admin_password_hash,
        "WEB_CONCURRENCY": "2",
    }
