"""``make demo`` on a fresh copy: the emulator and the service on the embedded default, the
subscription registered through the emulator, one chat.completion and one model.failed
delivered, the default handlers' log lines in the output, and the admin link printed."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_embedded_default import MakeRun
from tests.support.processes import free_port, fresh_copy, wait_until

pytestmark = pytest.mark.e2e


def test_make_demo_shows_both_events_handled(outside_pytest_tmp: Path) -> None:
    clone = fresh_copy(outside_pytest_tmp / "clone")
    port = free_port()
    demo = MakeRun(
        clone,
        port,
        outside_pytest_tmp / "demo.log",
        "demo",
        f"EMULATOR_PORT={free_port()}",
        handlers="handlers",  # the repository's own handlers.py, as a new user has it
    )
    handled = (
        "chat completion chat_demo_1 finished with status completed",
        "failed for request chat_demo_2: the demo's planned failure",
    )
    try:
        wait_until(
            lambda: all(line in demo.output() for line in handled) or demo.popen.poll() is not None,
            90,
            0.3,
            "both handlers' lines",
        )
        output = demo.output()
        assert all(line in output for line in handled), output[-4000:]
        assert "Demo: registered wh_" in output
        link = re.search(r"^Demo: .*the events: (\S+)$", output, re.MULTILINE)
        assert link is not None, output[-4000:]
        assert link.group(1).startswith(f"http://127.0.0.1:{port}/admin/login?token=")
        page = httpx.get(link.group(1), follow_redirects=True, timeout=10)
        assert page.status_code == 200
        assert "chat_demo_1" in page.text or "chat.completion" in page.text
        assert "\x1b[" not in _emulator_lines(output)  # no raw ANSI colours in the log
    finally:
        demo.interrupt()


def _emulator_lines(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if " emulator | " in line)
