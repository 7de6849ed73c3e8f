"""How the benchmark reads the CPU of the processes it does not start itself."""

from __future__ import annotations

import psycopg

from bench import stack
from tests.support.services import POSTGRES_ADMIN_URL


def _busy_backend_then_gone() -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL.replace("+psycopg", "")) as connection:
        connection.execute("SELECT count(*) FROM generate_series(1, 3000000)").fetchone()


def test_postgres_cpu_includes_backends_that_have_exited() -> None:
    before = stack.postgres_cpu_seconds()
    _busy_backend_then_gone()
    # The backend has exited: only the postmaster's reaped children still hold its CPU.
    stack.wait_until(
        lambda: stack.postgres_cpu_seconds() - before >= 0.1, 10, "the backend's CPU to count"
    )
