"""The Celery entry point, built from the Flask app so both read one configuration."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Metrics of the prefork pool's processes are added up through files in this directory; it
# must be set before prometheus_client is imported (through webhooks_app). One made here is
# removed when the process that made it exits (pool children leave through os._exit).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _metrics_dir = tempfile.mkdtemp(prefix="webhooks-worker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
    _creator = os.getpid()

    @atexit.register
    def _remove_metrics_dir() -> None:
        if os.getpid() == _creator:
            shutil.rmtree(_metrics_dir, ignore_errors=True)


from typing import Any

from celery import Celery, bootsteps
from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)

from webhooks_app import create_app, metrics
from webhooks_app.logs import configure_logging
from webhooks_app.relay import RelayThread
from webhooks_app.service import Service

flask_app = create_app()
celery: Celery = flask_app.extensions["celery"]
app = celery


@setup_logging.connect
def _keep_our_logging(**_: Any) -> None:
    """Celery's worker, beat and pool processes log through the service's handler (JSON or
    console, on stderr). With a receiver here Celery installs no handler of its own and does not
    swap sys.stdout/sys.stderr for its LoggingProxy, which dropped the handlers' log lines."""
    settings = flask_app.extensions["webhooks"].settings
    configure_logging(settings.log_level, settings.log_format)


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
