"""The deploy files, checked without Docker: what the image leaves out, how it is layered and
who runs it, the compose file's settings and its worker healthcheck against a real worker, and
what a Heroku-style Python buildpack needs to detect and pin the app."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import ROOT

PRODUCTION_VARIABLES = (
    "DATABASE_URL",
    "REDIS_URL",
    "SECRET_KEY",
    "ENCRYPTION_KEYS",
    "PUBLIC_BASE_URL",
    "ASSISTERS_API_KEY",
    "WEBHOOK_SECRETS",
)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's rule: Go's filepath.Match per segment, ``**`` for any number of segments."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + "$")


def ignored(path: str) -> bool:
    """A path is left out when it, or a directory above it, matches the last pattern that
    applies (``!`` patterns bring paths back)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negate
    return result


@pytest.mark.parametrize(
    "path",
    [
        "instance/secret_key",
        "instance/encryption.key",
        "instance/postgres/base/1/1259",
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "bench/results/run-1.json",
        "tests/artifacts/admin-events.png",
        "webhooks_app/__pycache__/config.cpython-311.pyc",
        "assisters_webhooks.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/nodeids",
    ],
)
def test_the_image_leaves_out_local_state_and_history(path: str) -> None:
    assert ignored(path)


@pytest.mark.parametrize(
    "path",
    [
        "webhooks_app/__init__.py",
        "webhooks_app/admin/templates/admin/base.html",
        "workers/celery_app.py",
        "handlers.py",
        "migrations/env.py",
        "migrations/versions/0001_events_handler_states_and_attempts.py",
        "alembic.ini",
        "gunicorn.conf.py",
        "pyproject.toml",
        "Procfile",
    ],
)
def test_the_image_keeps_what_the_service_runs(path: str) -> None:
    assert (ROOT / path).exists()
    assert not ignored(path)


def test_dependencies_have_a_layer_of_their_own_and_the_runtime_user_cannot_write_the_code() -> (
    None
):
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    first_install = next(i for i, line in enumerate(lines) if "pip install" in line)
    copy_all = lines.index("COPY . .")
    copies_before = [line for line in lines[:first_install] if line.startswith("COPY")]
    assert copies_before == ["COPY pyproject.toml ./"], "only the dependency list before pip"
    assert first_install < copy_all
    assert not any("chown" in line for line in lines), "the code stays root's"
    users = [line for line in lines if line.startswith("USER")]
    assert users
    assert users[-1] not in ("USER root", "USER 0")
    assert lines.index(users[-1]) > copy_all


def test_the_dockerfiles_dependency_list_is_pyprojects() -> None:
    text = (ROOT / "Dockerfile").read_text()
    code = re.search(r'python -c "(.+?)" > /tmp/requirements.txt', text)
    assert code is not None
    listed = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [line for line in listed if line] == project["dependencies"]


def test_a_python_buildpack_finds_and_pins_the_app_from_pyproject() -> None:
    requirements = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert requirements == ["."]  # the project itself: pyproject.toml stays the one list
    version = (ROOT / ".python-version").read_text().strip()
    minimum = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert re.fullmatch(r"3\.\d+", version)
    assert tuple(map(int, version.split("."))) >= tuple(map(int, minimum.lstrip(">=").split(".")))
    procfile = (ROOT / "Procfile").read_text()
    assert "release: flask --app webhooks_app db upgrade" in procfile


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_sets_what_production_needs_and_requires_the_secrets() -> None:
    services = compose()["services"]
    for name in ("migrate", "web", "worker", "beat"):
        env = services[name]["environment"]
        assert set(PRODUCTION_VARIABLES) <= set(env), name
        assert ":?" in env["SECRET_KEY"]
        assert ":?" in env["ENCRYPTION_KEYS"]
    assert "--schedule" not in services["beat"]["command"]
    for name in ("web", "worker", "postgres", "redis"):
        assert "healthcheck" in services[name], name


@pytest.mark.e2e
def test_the_compose_worker_healthcheck_passes_against_a_real_worker(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    service = compose()["services"]["worker"]
    kind, command = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    command = command.replace("$$", "$")  # compose's escape for a literal $
    env = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "compose",
        "HOSTNAME": socket.gethostname(),  # what a container's shell has
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            ["sh", "-c", f"exec {service['command']} --concurrency=1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            check = subprocess.run(["sh", "-c", command], cwd=ROOT, env=env, capture_output=True)
            if check.returncode == 0:
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, check.stdout[-2000:] + check.stderr[-2000:]
            time.sleep(1)
        # The check can fail: another node name is not answered.
        wrong = command.replace("celery@", "worker@")
        assert subprocess.run(["sh", "-c", wrong], cwd=ROOT, env=env).returncode != 0
    finally:
        worker.terminate()
        worker.wait(30)
