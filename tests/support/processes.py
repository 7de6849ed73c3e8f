"""Starting the real processes (gunicorn, Celery worker, a private redis-server) in tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

# One process helper for the tests and the benchmark: output in a log file, own session.
from bench.stack import Process as Process
from bench.stack import answers as answers
from bench.stack import free_port as free_port
from bench.stack import port_open

ROOT = Path(__file__).resolve().parents[2]


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def gunicorn(env: Mapping[str, str], port: int, log_dir: Path) -> Process:
    process = Process(
        "gunicorn",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            "webhooks_app.wsgi:app",
        ],
        {**env, "PORT": str(port), "WEB_CONCURRENCY": env.get("WEB_CONCURRENCY", "2")},
        log_dir,
    ).start()
    wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), 30, what="gunicorn to answer")
    return process


def celery_worker(
    env: Mapping[str, str], log_dir: Path, name: str = "worker", concurrency: int = 2
) -> Process:
    return Process(
        name,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            f"--hostname={name}@%h",
        ],
        env,
        log_dir,
    ).start()


def redis_server(port: int, log_dir: Path, data_dir: Path) -> Process:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    process = Process(
        f"redis-{port}",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--dir",
            str(data_dir),
        ],
        {},
        log_dir,
    ).start()
    wait_until(lambda: port_open(port), 10, what="redis-server")
    return process


def flask(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run a ``flask --app webhooks_app`` command as a user would, and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "webhooks_app", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def fresh_copy(destination: Path) -> Path:
    """The checkout as a fresh clone has it: tracked (and new, not ignored) files only, so no
    instance/, .venv or caches; uncommitted edits included, so it tests the tree as it is."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination
