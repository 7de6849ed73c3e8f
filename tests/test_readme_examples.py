"""The README's "Testing handlers" example is a test: extracted, and run by pytest as a user
would run it, against the repository's own handlers.py and a file `flask events export` wrote."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask

ROOT = Path(__file__).resolve().parent.parent


def section_code(title: str, language: str) -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", readme, re.S | re.M)
    assert found, f"README has no section {title!r}"
    return re.findall(rf"^```{language}\n(.*?)^```", found.group(1), re.S | re.M)


def test_the_testing_handlers_example_passes(
    app: Flask, post_event: Callable[..., Any], tmp_path: Path
) -> None:
    blocks = section_code("Testing handlers", "python")
    assert blocks, "the section has no python example"
    (tmp_path / "test_readme_example.py").write_text("\n\n".join(blocks), encoding="utf-8")
    # The fixture file the example loads, written by the export command it documents.
    post_event("chat.completion", {"id": "chat_r", "status": "completed"}, msg_id="msg_r1")
    post_event("model.failed", {"id": "req_r", "error": {"message": "x"}}, msg_id="msg_r2")
    result = app.test_cli_runner().invoke(
        args=["events", "export", "-o", str(tmp_path / "events.jsonl")]
    )
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 2

    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_readme_example.py"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "1 passed" in ran.stdout, ran.stdout
