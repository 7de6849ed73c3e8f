"""Beat on a fresh deploy: the Procfile's ``beat`` line, run from a fresh clone with
``DATABASE_URL`` and ``REDIS_URL`` set (as on a PaaS: no ``instance/``), stays up and sends the
sweep; and a beat that cannot start says why on its stderr."""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.support.processes import fresh_copy, wait_until

pytestmark = pytest.mark.e2e


def procfile_line(root: Path, name: str) -> list[str]:
    for line in (root / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return shlex.split(line.split(":", 1)[1])
    raise AssertionError(f"no {name} line in the Procfile")


def sent_tasks(client: redis.Redis, queue: str = "webhooks") -> list[str]:
    names = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        names.append(message["headers"]["task"])
        json.loads(base64.b64decode(message["body"]))  # a real Celery message
    return names


def start(args: list[str], cwd: Path, env: dict[str, str], stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as err:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )


def test_the_procfiles_beat_stays_up_on_a_fresh_clone_and_sends_the_sweep(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    clone = fresh_copy(tmp_path / "clone")
    assert not (clone / "instance").exists()
    client = redis.Redis.from_url(redis_url)
    client.delete("webhooks")
    env = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "beat",
        "SWEEP_INTERVAL_SECONDS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("INSTANCE_DIR", None)
    stderr = tmp_path / "beat.stderr"
    beat = start(procfile_line(clone, "beat"), clone, env, stderr)
    try:
        wait_until(
            lambda: sent_tasks(client).count("workers.tasks.sweep") >= 2 or beat.poll() is not None,
            30,
            0.2,
            "beat to send the sweep twice",
        )
        assert beat.poll() is None, stderr.read_text()[-3000:]
        time.sleep(1)
        assert beat.poll() is None, stderr.read_text()[-3000:]
        assert "Sending due task sweep" in stderr.read_text()
    finally:
        beat.terminate()
        beat.wait(20)
        client.delete("webhooks")


def test_a_beat_that_cannot_start_says_why_on_stderr(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    # The old default: a schedule file in a directory that does not exist.
    missing = tmp_path / "no-such-dir" / "celerybeat-schedule"
    env = {**os.environ, "DATABASE_URL": postgres_url, "REDIS_URL": redis_url, "SECRET_KEY": "b"}
    stderr = tmp_path / "beat.stderr"
    args = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat"]
    args += ["--scheduler", "celery.beat:PersistentScheduler", "--schedule", str(missing)]
    beat = start(args, Path(__file__).resolve().parents[2], env, stderr)
    try:
        beat.wait(30)
    finally:
        if beat.poll() is None:
            beat.kill()
            beat.wait(5)
    text = stderr.read_text()
    assert "No such file or directory" in text, text[-3000:]
    assert str(missing) in text or "no-such-dir" in text, text[-3000:]
