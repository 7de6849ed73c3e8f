"""Your event handlers. Edit freely: each ``@on`` function runs in a worker, once per event.

A handler receives a plain, read-only ``Event`` (``id``, ``type``, ``data``, ``payload``,
``received_at``, ``attempt``). Raise to fail the attempt: it is retried with exponential
backoff (about 1 s, 2 s, 4 s, ...) up to ``max_attempts`` times, then the event is ``dead``
and waits for a replay. Handlers should be idempotent, keyed on ``event.id``: delivery is
exactly-once per handler under normal operation, but a handler that outlives its lease (a
worker frozen for longer than HANDLER_LEASE_SECONDS) may be run again.
"""

from __future__ import annotations

import logging

from webhooks_app import Event, on

log = logging.getLogger("handlers")


@on("chat.completion")
def record_completion(event: Event) -> None:
    """A chat completion finished: record what it cost, or hand it to your own pipeline."""
    data = event.data
    usage = data.get("usage") or {}
    log.info(
        "chat completion %s finished with status %s (model %s, %s tokens)",
        data.get("id"),
        data.get("status"),
        data.get("model", "unknown"),
        usage.get("total_tokens", "?"),
    )


@on("model.failed", max_attempts=5)
def alert_on_failure(event: Event) -> None:
    """A model call failed: alert whoever is on call (replace the log line with your pager)."""
    data = event.data
    error = data.get("error") or {}
    log.error(
        "model %s failed for request %s: %s",
        data.get("model", "unknown"),
        data.get("id"),
        error.get("message", "no message"),
    )
