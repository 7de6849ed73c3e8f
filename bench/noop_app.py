"""Celery's own limit: a no-op task on the same broker with the same Celery settings.

``celery -A bench.noop_app worker`` drains ``bench.noop`` messages; the benchmark compares the
handler throughput with this drain rate (same concurrency, prefetch, late acks).
"""

from __future__ import annotations

import os

from celery import Celery

from webhooks_app.config import Settings
from webhooks_app.extensions import celery_config

NOOP_QUEUE = "bench-noop"
NOOP_TASK = "bench.noop"

# The broker's settings only: this worker never opens the database, so any URL stands in.
_env = {**os.environ, "DATABASE_URL": os.environ.get("DATABASE_URL") or "postgresql://unused/"}
CONFIG = celery_config(Settings.from_env(_env))
CONFIG.update(task_default_queue=NOOP_QUEUE, include=[], beat_schedule={})

app = Celery("bench-noop")
app.config_from_object(CONFIG)


@app.task(name=NOOP_TASK)
def noop() -> None:
    return None
