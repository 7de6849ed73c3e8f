"""The benchmark's own arithmetic: where the CPU of a phase went."""

from __future__ import annotations

import pytest

from bench.run import _cpu_spent, _cpu_split


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
