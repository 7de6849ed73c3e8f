"""The README's first command on a fresh copy of the repository: ``make run`` with nothing set
starts the embedded PostgreSQL (no server installed), the filesystem broker, and the
Procfile's web, worker and beat; prints ``Ready:`` with a login link that signs in; processes an
event; stops everything on Ctrl-C; and finds its data again on the next start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support.processes import free_port, fresh_copy, wait_until
from tests.support.signing import TEST_SECRET, delivery

pytestmark = pytest.mark.e2e

VENV = Path(sys.executable).parent.parent


class MakeRun:
    def __init__(
        self,
        clone: Path,
        port: int,
        log: Path,
        target: str = "run",
        *args: str,
        handlers: str = "tests.support.handlers",
    ) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "INSTANCE_DIR"}
        }
        env.update(
            WEBHOOK_SECRETS=TEST_SECRET,
            HANDLERS_MODULE=handlers,
            ADMIN_API_TOKEN=ADMIN_TOKEN,
            WEB_CONCURRENCY="1",
            # Its own temporary directory, to see what a run leaves behind there.
            TMPDIR=str(clone.parent / "tmp"),
        )
        (clone.parent / "tmp").mkdir(exist_ok=True)
        self.log = log
        with log.open("ab") as out:
            # -o: the venv is this one, already installed; make must not reinstall it.
            self.popen = subprocess.Popen(
                [
                    "make",
                    "-o",
                    f"{VENV}/bin/.installed",
                    target,
                    f"VENV={VENV}",
                    f"PORT={port}",
                    *args,
                ],
                cwd=clone,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ready_line(self) -> str | None:
        found = re.search(r"^Ready: (\S+)", self.output(), re.MULTILINE)
        return found.group(1) if found else None

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to the terminal's foreground group (make and the launcher)."""
        os.killpg(self.popen.pid, signal.SIGINT)
        return self.popen.wait(60)


def test_make_run_on_a_fresh_copy_with_no_server(outside_pytest_tmp: Path) -> None:
    tmp_path = outside_pytest_tmp
    clone = fresh_copy(tmp_path / "clone")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    first = MakeRun(clone, port, tmp_path / "first.log")
    try:
        wait_until(
            lambda: first.ready_line() or first.popen.poll() is not None,
            90,
            0.3,
            "the Ready: line",
        )
        link = first.ready_line()
        assert link is not None, first.output()[-4000:]
        assert link.startswith(f"{base}/admin/login?token=")
        assert f"Listening at: http://127.0.0.1:{port}" in first.output()
        with httpx.Client(follow_redirects=True, timeout=10) as browser:
            page = browser.get(link)
            assert page.status_code == 200
            assert str(page.url) == f"{base}/admin/events"
        body, headers = delivery(data={"id": "chat_embedded"}, msg_id="msg_embedded")
        response = httpx.post(f"{base}/webhooks/events", content=body, headers=headers, timeout=10)
        assert response.json() == {"id": "msg_embedded", "status": "accepted"}
        wait_until(
            lambda: status(base) == "succeeded", 60, 0.3, f"the handler:\n{first.output()[-3000:]}"
        )
        assert (clone / "instance" / "postgres" / "PG_VERSION").exists()
        first.interrupt()
    finally:
        if first.popen.poll() is None:
            os.killpg(first.popen.pid, signal.SIGKILL)
    # Stopped with it: no postmaster left, and the URL file for side commands is gone.
    assert "PostgreSQL (embedded) stopped" in first.output()
    assert not (clone / "instance" / "postgres" / "postmaster.pid").exists()
    assert not (clone / "instance" / "postgres.url").exists()
    assert not list((tmp_path / "tmp").glob("webhooks-*metrics*"))

    second = MakeRun(clone, port, tmp_path / "second.log")
    try:
        wait_until(lambda: second.ready_line(), 90, 0.3, "the second Ready: line")
        assert status(base) == "succeeded"  # the data survived the restart
        assert second.ready_line() != link  # a new login link each start
    finally:
        second.interrupt()
    deadline = time.monotonic() + 10
    while (clone / "instance" / "postgres" / "postmaster.pid").exists():
        assert time.monotonic() < deadline, "the embedded server outlived make run"
        time.sleep(0.2)


def status(base: str) -> str | None:
    answer = httpx.get(
        f"{base}/api/events/msg_embedded",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=5,
    )
    return answer.json().get("status") if answer.status_code == 200 else None
