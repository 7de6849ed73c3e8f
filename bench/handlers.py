"""The benchmark's handler module (HANDLERS_MODULE=bench.handlers): one no-op handler, so the
handler throughput measures the machinery (claim, run, record), not user code."""

from __future__ import annotations

from webhooks_app import Event, on


@on("chat.completion", name="bench.noop")
def noop(event: Event) -> None:
    return None
