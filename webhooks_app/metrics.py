"""Prometheus metrics, multiprocess-safe under gunicorn and Celery's prefork pool.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``gunicorn.conf.py`` and ``workers/celery_app.py`` set
one when it is not), every process writes its samples to files in that directory, and a scrape
adds them up. Without it (tests, ``flask run``) the metrics live in the process.

``GET /metrics`` on the web app needs ``Authorization: Bearer $METRICS_TOKEN`` (404 while the
token is unset). Celery workers serve their own on ``WORKER_METRICS_PORT`` when it is set.

Updates on the hot path are a dictionary lookup and a ``float`` add on an mmap'd file: label
children are cached, never looked up by name per request.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from webhooks_app import store
from webhooks_app.dispatch import DispatchObserver
from webhooks_app.errors import ApiError
from webhooks_app.service import current_service

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EVENTS_RECEIVED = Counter(
    "webhooks_events_received_total",
    "Deliveries to /webhooks/events by event type and outcome "
    "(accepted, duplicate, invalid, unauthorized, unstorable, unavailable).",
    ["type", "outcome"],
)
SIGNATURE_FAILURES = Counter(
    "webhooks_signature_failures_total",
    "Deliveries refused by signature verification, by reason.",
    ["reason"],
)
INTAKE_SECONDS = Histogram(
    "webhooks_intake_seconds",
    "Time to answer a delivery to /webhooks/events (verification, durable commit, hand-off).",
    buckets=_LATENCY_BUCKETS,
)
HANDLER_SECONDS = Histogram(
    "webhooks_handler_seconds",
    "Time spent in a handler function, by handler.",
    ["handler"],
    buckets=_LATENCY_BUCKETS,
)
HANDLER_ATTEMPTS = Counter(
    "webhooks_handler_attempts_total",
    "Recorded handler attempts by handler and outcome (succeeded, failed, abandoned).",
    ["handler", "outcome"],
)
EVENTS_FINISHED = Counter(
    "webhooks_events_finished_total",
    "Events that reached a final status (succeeded, dead, skipped).",
    ["status"],
)

_MAX_TYPE_LABEL = 64


class _Cached:
    """Label children created once: ``labels()`` parses its arguments on every call."""

    def __init__(self) -> None:
        self._children: dict[tuple[Any, ...], Any] = {}

    def get(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


_cache = _Cached()


def event_received(event_type: str, outcome: str) -> None:
    _cache.get(EVENTS_RECEIVED, event_type[:_MAX_TYPE_LABEL], outcome).inc()


def signature_failed(reason: str) -> None:
    _cache.get(SIGNATURE_FAILURES, reason).inc()
    _cache.get(EVENTS_RECEIVED, "unknown", "unauthorized").inc()


def observe_intake(seconds: float) -> None:
    INTAKE_SECONDS.observe(seconds)


class MetricsObserver(DispatchObserver):
    """What the dispatcher reports, as metrics."""

    def handler_ran(self, handler: str, seconds: float, error: BaseException | None) -> None:
        _cache.get(HANDLER_SECONDS, handler).observe(seconds)

    def attempt_recorded(self, handler: str, status: str) -> None:
        _cache.get(HANDLER_ATTEMPTS, handler, status).inc()

    def event_finished(self, status: str) -> None:
        _cache.get(EVENTS_FINISHED, status).inc()


class StoreCollector(Collector):
    """Gauges read from the database at scrape time (index-only counts, one query)."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self._counts()
        except Exception:
            return
        yield GaugeMetricFamily(
            "webhooks_events_awaiting_handoff",
            "Stored events not yet handed to the broker (status received).",
            value=counts.get(store.EventStatus.RECEIVED.value, 0),
        )
        yield GaugeMetricFamily(
            "webhooks_events_dead",
            "Events with a handler that exhausted its attempts (status dead).",
            value=counts.get(store.EventStatus.DEAD.value, 0),
        )


def _store_counts() -> dict[str, int]:
    events = store.events
    wanted = [store.EventStatus.RECEIVED.value, store.EventStatus.DEAD.value]
    with current_service().db.sessions() as session:
        rows = session.execute(
            select(events.c.status, func.count())
            .where(events.c.status.in_(wanted))
            .group_by(events.c.status)
        )
        return {status: count for status, count in rows}


def render(counts: Callable[[], dict[str, int]] | None = None) -> bytes:
    """The exposition text: every process's samples, plus the store gauges if given."""
    registry = CollectorRegistry()
    if MULTIPROCESS:
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY if counts is None else _with_default(registry)
    if counts is not None:
        registry.register(StoreCollector(counts))
    return generate_latest(registry)


def _with_default(registry: CollectorRegistry) -> CollectorRegistry:
    from prometheus_client import REGISTRY

    class _Default(Collector):
        def collect(self) -> Iterator[Any]:
            yield from REGISTRY.collect()

    registry.register(_Default())
    return registry


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    token = current_service().settings.metrics_token
    if token is None:
        raise ApiError(404, "Not found.", code="not_found")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise ApiError(
            401,
            "Send Authorization: Bearer <METRICS_TOKEN>.",
            code="invalid_token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Response(render(_store_counts), mimetype=CONTENT_TYPE_LATEST)


def mark_process_dead(pid: int) -> None:
    """Call when a worker process exits (gunicorn ``child_exit``, Celery shutdown)."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def serve_worker_metrics(port: int) -> None:
    """A metrics endpoint for a Celery worker host (no web app there); a separate port."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry()
    if MULTIPROCESS:
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, registry=registry)
    else:
        start_http_server(port)
