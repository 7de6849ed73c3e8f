"""The provider emulator and the service as real HTTP servers on threads of the test process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from webhooks_app.emulator import EmulatorConfig, EmulatorState, create_emulator_app

# Fast enough for tests: 0 s, 5 ms, 0.3 s, 1.8 s, ...
TEST_RETRY_COMPRESSION = 1000.0


class Crash(Exception):
    """Stands for the process dying at that point: nothing in the client catches it."""


class CrashingTransport(httpx.BaseTransport):
    """Dies once at the first request of ``method``: ``before`` sending it, or ``after`` the
    provider acted on it but before its answer was seen."""

    def __init__(self, method: str, when: str) -> None:
        self.method = method
        self.when = when
        self.armed = True
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.armed and request.method == self.method:
            self.armed = False
            if self.when == "before":
                raise Crash(f"died before {request.method} {request.url.path}")
            self.inner.handle_request(request).read()
            raise Crash(f"died after {request.method} {request.url.path}")
        return self.inner.handle_request(request)


@contextmanager
def served(app: Flask | None = None) -> Iterator[BaseWSGIServer]:
    """Serve ``app`` (or set ``server.app`` later) on a free port until the block ends."""
    server = make_server("127.0.0.1", 0, app or Flask("placeholder"), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def server_url(server: BaseWSGIServer) -> str:
    return f"http://127.0.0.1:{server.server_port}"


@dataclass
class RunningEmulator:
    url: str
    state: EmulatorState

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    @property
    def api_key(self) -> str:
        return self.state.config.api_key

    @property
    def api_key_id(self) -> str:
        return self.state.config.api_key_id

    def fault(self, status: int, count: int = 1, retry_after: int | None = None) -> None:
        httpx.post(
            self.url + "/_emulator/faults",
            json={"status": status, "count": count, "retry_after": retry_after},
        ).raise_for_status()

    def requests(self, method: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = httpx.get(self.url + "/_emulator/requests").json()["requests"]
        return [
            r
            for r in seen
            if (method is None or r["method"] == method) and (path is None or r["path"] == path)
        ]

    def created(self, path: str) -> int:
        """How many creates the provider really did (replays excluded)."""
        return sum(
            1 for r in self.requests("POST", path) if r["status"] == 201 and not r["replayed"]
        )

    def secrets(self) -> dict[str, str]:
        with self.state.lock:
            return {s.id: s.secret for s in self.state.subscriptions.values()}


@contextmanager
def running_emulator(**overrides: Any) -> Iterator[RunningEmulator]:
    config = EmulatorConfig(
        **{"rate_limit": 0, "retry_compression": TEST_RETRY_COMPRESSION, **overrides}
    )
    app = create_emulator_app(config)
    state: EmulatorState = app.extensions["emulator"]
    with served(app) as server:
        try:
            yield RunningEmulator(server_url(server), state)
        finally:
            state.deliverer.stop()
