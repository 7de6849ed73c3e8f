"""The Celery app, built from settings in ``create_app`` (the database handle: ``database``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery, Task
from flask import Flask

from webhooks_app import broker
from webhooks_app.config import Settings

PROCESS_EVENT_TASK = "workers.tasks.process_event"
PROCESS_EVENTS_TASK = "workers.tasks.process_events"
SWEEP_TASK = "workers.tasks.sweep"
ROTATE_SUBSCRIPTIONS_TASK = "workers.tasks.rotate_subscriptions"
PURGE_TASK = "workers.tasks.purge_expired_events"
PURGE_INTERVAL_SECONDS = 3600.0


EMBEDDED_BROKER_POLL_SECONDS = 0.1


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings: late acks and a short visibility timeout make a killed worker's events
    come back within about a minute; the database, not the broker, prevents a second run."""
    config: dict[str, Any] = {
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": "webhooks",
        "worker_prefetch_multiplier": 4,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        # Publishing happens off the request path; when the broker is down, give up quickly:
        # the event stays ``received`` and the sweep hands it over later.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.2,
        },
        "beat_schedule": {
            "sweep": {"task": SWEEP_TASK, "schedule": settings.sweep_interval_seconds},
            # Starts rotations every ROTATION_DAYS and finishes those whose window has passed.
            "rotate-subscriptions": {
                "task": ROTATE_SUBSCRIPTIONS_TASK,
                "schedule": settings.rotation_check_seconds,
            },
        },
        # In memory: no schedule file, so beat starts wherever it runs (a fresh deploy has no
        # instance/, a container's code directory is read-only). Every entry is a short
        # interval whose task looks at the database, so nothing is lost by forgetting when
        # each last ran: the first of each comes one interval after beat starts.
        "beat_scheduler": "celery.beat:Scheduler",
        "include": ["workers.tasks"],
    }
    if settings.event_retention_days is not None:
        config["beat_schedule"]["purge_expired_events"] = {
            "task": PURGE_TASK,
            "schedule": PURGE_INTERVAL_SECONDS,
        }
    if settings.uses_embedded_broker:
        queue_dir = settings.instance_dir / "broker"
        for sub in ("queue", "processed", "control"):
            (queue_dir / sub).mkdir(parents=True, exist_ok=True)
        # The host is ignored by this transport; naming one keeps Kombu from warning.
        config["broker_url"] = "filesystem://localhost//"
        config["broker_transport_options"] = {
            "data_folder_in": str(queue_dir / "queue"),
            "data_folder_out": str(queue_dir / "queue"),
            "processed_folder": str(queue_dir / "processed"),
            # Exchange bindings; Kombu's default is ./control, in the current directory.
            "control_folder": str(queue_dir / "control"),
            "store_processed": False,
            # How often a worker looks for new messages (Kombu's default: every second, which
            # would start a delivery's handlers up to a second after it was stored).
            "polling_interval": EMBEDDED_BROKER_POLL_SECONDS,
        }
    else:
        config["broker_url"] = settings.broker_url
        if settings.broker_url.startswith(("redis://", "rediss://")):
            config["broker_transport"] = broker.TRANSPORT
        config["broker_transport_options"] = {
            "visibility_timeout": settings.broker_visibility_timeout,
            # Scan for abandoned (unacked) messages every few seconds, not every 100 s.
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            "socket_timeout": 5,
            "socket_connect_timeout": 3,
        }
    return config


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    """Build the Celery app from the Flask app (as in Flask's own Celery example)."""

    class FlaskTask(Task):  # type: ignore[type-arg]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app: Celery = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(celery_config(settings))
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def celery_publisher(celery_app: Celery, batch_size: int = 50) -> Callable[[Sequence[str]], None]:
    """Publish ``process_events`` messages of up to ``batch_size`` ids each, over one broker
    connection: one message (and one broker round trip and ack) for many events.
    """

    def publish(event_ids: Sequence[str]) -> None:
        with celery_app.producer_or_acquire() as producer:
            for start in range(0, len(event_ids), batch_size):
                chunk = list(event_ids[start : start + batch_size])
                celery_app.send_task(PROCESS_EVENTS_TASK, args=[chunk], producer=producer)

    return publish
