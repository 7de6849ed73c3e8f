"""The Celery entry point, built from the Flask app so both read one configuration."""

from __future__ import annotations

import os
import tempfile

# Metrics of the prefork pool's processes are added up through files in this directory; it
# must be set before prometheus_client is imported (through webhooks_app).
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="webhooks-worker-metrics-")
)

from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from webhooks_app import create_app, metrics
from webhooks_app.relay import RelayThread
from webhooks_app.service import Service

flask_app = create_app()
celery: Celery = flask_app.extensions["celery"]
app = celery


class OutboxRelay(bootsteps.StartStopStep):
    """Every worker runs the outbox relay (``webhooks_app.relay``) on a thread of its main
    process, started and stopped with the worker; relays of several workers share the work."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        service: Service = flask_app.extensions["webhooks"]
        self.relay = RelayThread(service.relay)

    def start(self, parent: Any) -> None:
        self.relay.start()

    def stop(self, parent: Any) -> None:
        self.relay.stop()


celery.steps["worker"].add(OutboxRelay)


@worker_process_init.connect
def _reset_pool_after_fork(**_: Any) -> None:
    service: Service = flask_app.extensions["webhooks"]
    service.db.after_fork()


@worker_process_shutdown.connect
def _mark_metrics_dead(pid: int | None = None, **_: Any) -> None:
    metrics.mark_process_dead(pid or os.getpid())


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    port = os.environ.get("WORKER_METRICS_PORT", "").strip()
    if port:
        metrics.serve_worker_metrics(int(port))
