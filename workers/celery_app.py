"""The Celery entry point, built from the Flask app so both read one configuration."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from webhooks_app import create_app
from webhooks_app.service import Service

flask_app = create_app()
celery: Celery = flask_app.extensions["celery"]
app = celery


@worker_process_init.connect
def _reset_pool_after_fork(**_: Any) -> None:
    service: Service = flask_app.extensions["webhooks"]
    service.db.after_fork()
