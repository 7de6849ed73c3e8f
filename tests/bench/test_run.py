"""The benchmark's own arithmetic: where the CPU of a phase went, and how two revisions'
figures are compared (``--against``)."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median
from typing import Any

import pytest

from bench.run import Report, _cpu_spent, _cpu_split, _order, compare, side_by_side, write_results


def test_cpu_spent_counts_each_process_since_the_first_reading() -> None:
    before = {"web": {10: 1.0, 11: 2.0}, "postgres": {20: 5.0}}
    after = {
        "web": {10: 1.5, 11: 2.25},
        # 20 went away (its last share is lost, not subtracted); 21 started in between.
        "postgres": {21: 0.4},
    }
    spent = _cpu_spent(before, after)
    assert spent == {"web": pytest.approx(0.75), "postgres": pytest.approx(0.4)}


def test_the_split_reads_as_a_sum_with_the_machine_load() -> None:
    e2e = {
        "cpu_ms_per_event": {"web": 0.5, "relay": 0.1, "postgres": 0.25, "client": 0.1},
        "machine_busy": 0.784,
    }
    assert _cpu_split(e2e) == (
        "web 0.50 + relay 0.10 + PostgreSQL 0.25 + load generator 0.10 = 0.95 ms; machine 78% busy"
    )


def _phases(rates: list[float], cpu: list[float], p50: float, p99: float) -> dict[str, Any]:
    """The figures the comparison reads, in the shape of a run's ``phases``."""
    return {
        "intake": {
            "requests_per_second": median(rates),
            "rounds": [{"requests_per_second": r} for r in rates],
        },
        "e2e": {
            "target_rate": 500.0,
            "pipeline_cpu_ms_per_event": sum(cpu) / len(cpu),
            "e2e_p50_ms": p50,
            "e2e_p99_ms": p99,
            "rounds": [
                {"pipeline_cpu_ms_per_event": c, "e2e_p50_ms": p50, "e2e_p99_ms": p99} for c in cpu
            ],
        },
    }


def _report(new: dict[str, Any], old: dict[str, Any], *, old_ok: bool = True) -> Report:
    report = Report(phases=new, checks={"accepted": 900, "ok": True}, machine={"revision": "new1"})
    checks = {"accepted": 800, "ok": True} if old_ok else {"accepted": 800, "lost": 1}
    report.against = {"revision": "old1", "phases": old, "ratios": {}, "checks": checks}
    return report


def test_the_comparison_reads_each_budget_line_new_over_old() -> None:
    report = _report(
        _phases([950, 1000, 1050], cpu=[2.0, 2.2], p50=12.0, p99=60.0),
        _phases([1000, 1100, 1200], cpu=[2.0, 2.0], p50=10.0, p99=50.0),
    )
    assert report.against is not None
    c = compare(report, report.against)
    intake = c["intake_requests_per_second"]
    assert (intake["new"], intake["old"]) == (1000, 1100)
    assert intake["new_range"] == [950, 1050]
    assert intake["old_range"] == [1000, 1200]
    assert intake["ratio"] == pytest.approx(1000 / 1100, abs=0.001)
    # Round by round: each side's round i ran next to the other's.
    assert intake["ratio_per_round"] == [0.95, round(1000 / 1100, 3), 0.875]
    assert intake["ok"]  # 0.909 >= 0.90
    cpu = c["e2e_cpu_ms_per_event"]
    assert cpu["ratio"] == pytest.approx(1.05)
    assert cpu["ok"]
    assert c["e2e_p50_ms"]["ok"]  # the latency lines judge the new side alone
    assert c["e2e_p99_ms"]["ok"]
    assert c["exactly_once"] == {"new": 900, "old": 800, "ok": True}
    assert c["e2e_target_rate"] == 500.0
    assert c["ok"]


def test_the_comparison_says_which_line_is_missed() -> None:
    report = _report(
        _phases([800, 850, 900], cpu=[2.3, 2.3], p50=25.0, p99=100.0),
        _phases([1000, 1000, 1000], cpu=[2.0, 2.0], p50=10.0, p99=50.0),
        old_ok=False,
    )
    assert report.against is not None
    c = compare(report, report.against)
    assert not c["intake_requests_per_second"]["ok"]  # 0.85 < 0.90
    assert not c["e2e_cpu_ms_per_event"]["ok"]  # 1.15 > 1.10
    assert not c["e2e_p50_ms"]["ok"]  # 25 >= 20
    assert not c["e2e_p99_ms"]["ok"]  # 100 is not < 100
    assert not c["exactly_once"]["ok"]  # the old side lost one
    assert not c["ok"]


def test_the_summary_shows_both_sides_their_ranges_and_the_ratio() -> None:
    report = _report(
        _phases([950, 1000, 1050], cpu=[2.0, 2.2], p50=12.0, p99=60.0),
        _phases([1000, 1100, 1200], cpu=[2.0, 2.0], p50=10.0, p99=50.0),
    )
    assert report.against is not None
    report.against["comparison"] = compare(report, report.against)
    summary = side_by_side(report)
    intake = next(line for line in summary.splitlines() if "intake req/s" in line)
    cells = [cell.strip() for cell in intake.split("|")[1:-1]]
    assert cells == [
        "intake req/s",
        "1000 [950-1050]",
        "1100 [1000-1200]",
        "0.91x [0.88-0.95]",
        "ratio >= 0.9: ok",
    ]
    assert "new new1" in summary
    assert "old old1" in summary
    assert "e2e CPU ms/event at 500/s" in summary
    assert "both: ok" in summary
    assert summary.endswith("within the budget)")


def test_rounds_alternate_which_side_goes_first() -> None:
    sides = ["new", "old"]
    assert [_order(sides, i) for i in range(3)] == [sides, ["old", "new"], sides]  # type: ignore[arg-type]


def test_the_json_has_against_only_when_a_revision_was_compared(tmp_path: Path) -> None:
    alone = write_results(Report(phases={"intake": {}}), tmp_path / "alone.json")
    assert "against" not in json.loads(alone.read_text())
    report = _report(_phases([1.0], [1.0], 1.0, 1.0), _phases([1.0], [1.0], 1.0, 1.0))
    both = json.loads(write_results(report, tmp_path / "both.json").read_text())
    assert both["against"]["revision"] == "old1"
    assert both["against"]["phases"].keys() == both["phases"].keys()
