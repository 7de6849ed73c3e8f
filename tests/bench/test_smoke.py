"""A few seconds of the real benchmark: it runs, and loses or double-runs nothing.

No speed is asserted here, ever: figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median

import pytest

from bench.__main__ import main
from tests.support.services import POSTGRES_ADMIN_URL, temporary_postgres_database

pytestmark = pytest.mark.e2e


def test_the_benchmark_runs_and_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with temporary_postgres_database():  # skips (or fails on CI) without PostgreSQL
        pass
    output = tmp_path / "result.json"
    code = main(["--smoke", "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    report = json.loads(output.read_text())
    checks = report["checks"]
    assert checks["ok"] is True
    assert checks["lost"] == 0
    assert checks["not_exactly_once"] == 0
    assert checks["not_succeeded"] == 0
    assert checks["accepted"] > 0
    phases = report["phases"]
    assert phases["intake"]["errors"] == 0
    # Each intake round is paired with the bare round run just before it.
    paired = [
        intake["requests_per_second"] / bare["requests_per_second"]
        for intake, bare in zip(phases["intake"]["rounds"], phases["bare"]["rounds"], strict=True)
    ]
    ratios = report["ratios"]
    assert ratios["intake_vs_bare_per_round"] == [round(r, 3) for r in paired]
    assert ratios["intake_vs_bare_paired_median"] == pytest.approx(median(paired), abs=0.001)
    for round_ in phases["bare"]["rounds"] + phases["intake"]["rounds"]:
        shares = round_["worker_cpu_shares"]  # one per gunicorn worker, relay excluded
        assert len(shares) in (0, report["options"]["web_concurrency"])
        assert shares == sorted(shares, reverse=True)
        assert not shares or sum(shares) == pytest.approx(1.0, abs=0.03)
    for e2e in (phases["e2e"], phases["e2e_quarter"]):
        cpu = e2e["cpu_ms_per_event"]
        assert set(cpu) == {"web", "relay", "worker", "postgres", "client"}
        # Every part of the pipeline did some work for these events, and none is counted
        # backwards (a process gone between the two readings would make a part negative).
        assert all(v > 0 for v in cpu.values()), cpu
        assert 0 < e2e["machine_busy"] <= 1.05
    assert phases["burst"]["accepted"] == phases["burst"]["requests"] > 0
    assert phases["handlers"]["succeeded"] == phases["handlers"]["events"]
    assert "| intake" in capsys.readouterr().out
    assert POSTGRES_ADMIN_URL  # the run used (and dropped) a database of its own there
