"""A few seconds of the real benchmark, side by side with the committed tree (``--against
HEAD``): it runs both, and loses or double-runs nothing on either side.

No speed is asserted here, ever: figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from statistics import median
from typing import Any

import pytest

from bench import stack
from bench.__main__ import main
from tests.support.services import POSTGRES_ADMIN_URL, temporary_postgres_database

pytestmark = pytest.mark.e2e


def _shape(value: Any) -> Any:
    """The keys of a result, all the way down, without the figures."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


def _assert_ran_and_lost_nothing(
    phases: dict[str, Any], ratios: dict[str, Any], checks: dict[str, Any], web_concurrency: int
) -> None:
    assert checks["ok"] is True
    assert checks["lost"] == 0
    assert checks["not_exactly_once"] == 0
    assert checks["not_succeeded"] == 0
    assert checks["accepted"] > 0
    assert phases["intake"]["errors"] == 0
    # Each intake round is paired with the bare round run just before it.
    paired = [
        intake["requests_per_second"] / bare["requests_per_second"]
        for intake, bare in zip(phases["intake"]["rounds"], phases["bare"]["rounds"], strict=True)
    ]
    assert ratios["intake_vs_bare_per_round"] == [round(r, 3) for r in paired]
    assert ratios["intake_vs_bare_paired_median"] == pytest.approx(median(paired), abs=0.001)
    for round_ in phases["bare"]["rounds"] + phases["intake"]["rounds"]:
        shares = round_["worker_cpu_shares"]  # one per gunicorn worker, relay excluded
        assert len(shares) in (0, web_concurrency)
        assert shares == sorted(shares, reverse=True)
        assert not shares or sum(shares) == pytest.approx(1.0, abs=0.03)
    for e2e in (phases["e2e"], phases["e2e_quarter"]):
        cpu = e2e["cpu_ms_per_event"]
        assert set(cpu) == {"web", "relay", "worker", "postgres", "client"}
        # Every part of the pipeline did some work for these events, and none is counted
        # backwards (a process gone between the two readings would make a part negative).
        # The relay has a part of its own only where it runs as a process under gunicorn.
        relay_process = phases["intake"]["relay"] == "process under gunicorn"
        assert all(v > 0 for k, v in cpu.items() if k != "relay" or relay_process), cpu
        assert cpu["relay"] >= 0
        pipeline = sum(cpu[k] for k in ("web", "relay", "worker", "postgres"))
        assert e2e["pipeline_cpu_ms_per_event"] == pytest.approx(pipeline, abs=0.01)
        assert 0 < e2e["machine_busy"] <= 1.05
        assert sum(r["requests"] for r in e2e["rounds"]) == e2e["accepted"]
    assert phases["burst"]["accepted"] == phases["burst"]["requests"] > 0
    assert phases["handlers"]["succeeded"] == phases["handlers"]["events"]


def test_the_benchmark_runs_both_sides_and_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with temporary_postgres_database():  # skips (or fails on CI) without PostgreSQL
        pass
    try:
        head = stack.resolve_revision("HEAD")
    except (OSError, ValueError):
        pytest.skip("not in a git checkout: --against has no revision to check out")
    output = tmp_path / "result.json"
    code = main(["--smoke", "--against", "HEAD", "--output", str(output)])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(output.read_text())
    web_concurrency = report["options"]["web_concurrency"]
    _assert_ran_and_lost_nothing(
        report["phases"], report["ratios"], report["checks"], web_concurrency
    )
    against = report["against"]
    assert against["revision"] == head[:7]
    assert _shape(against["phases"]) == _shape(report["phases"])
    _assert_ran_and_lost_nothing(
        against["phases"], against["ratios"], against["checks"], web_concurrency
    )
    # Each side ran on a database of its own: neither saw the other's events.
    assert report["checks"]["stored"] == report["checks"]["accepted"]
    assert against["checks"]["stored"] == against["checks"]["accepted"]
    comparison = against["comparison"]
    assert comparison["exactly_once"] == {
        "new": report["checks"]["accepted"],
        "old": against["checks"]["accepted"],
        "ok": True,
    }
    assert comparison["e2e_target_rate"] == report["phases"]["e2e"]["target_rate"]
    assert against["phases"]["e2e"]["target_rate"] == report["phases"]["e2e"]["target_rate"]
    assert "| intake" in out.out
    assert "every event succeeded exactly once" in out.out
    # The revision's worktree is gone with the run.
    worktrees = subprocess.run(
        ["git", "worktree", "list"], cwd=stack.ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert str(stack.TREES_DIR) not in worktrees
    assert POSTGRES_ADMIN_URL  # the run used (and dropped) databases of its own there
