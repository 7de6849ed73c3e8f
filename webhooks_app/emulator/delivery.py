"""Delivering events to subscribers, signed per subscription, retried on a schedule."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from webhooks_app.signatures import sign_headers

log = logging.getLogger(__name__)

# The Standard Webhooks (Svix) schedule: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h.
STANDARD_SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)


@dataclass
class PendingDelivery:
    msg_id: str
    subscription_id: str
    body: bytes
    attempt: int = 1


@dataclass(frozen=True)
class AttemptRecord:
    msg_id: str
    subscription_id: str
    attempt: int
    status_code: int | None
    error: str | None
    at: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "msg_id": self.msg_id,
            "subscription_id": self.subscription_id,
            "attempt": self.attempt,
            "status_code": self.status_code,
            "error": self.error,
            "at": self.at,
        }


# Looks a subscription up at send time: a subscription deleted meanwhile gets nothing more.
Target = Callable[[str], tuple[str, str] | None]  # id -> (url, secret)


class Deliverer:
    """One background thread sending due deliveries; retries wait on a heap, not a thread."""

    def __init__(
        self,
        target: Target,
        *,
        schedule: tuple[float, ...] = STANDARD_SCHEDULE,
        compression: float = 1.0,
        timeout: float = 15.0,
    ) -> None:
        self._target = target
        self._delays = tuple(delay / compression for delay in schedule)
        self._timeout = timeout
        self._heap: list[tuple[float, int, PendingDelivery]] = []
        self._sequence = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._in_flight = 0
        self.attempts: list[AttemptRecord] = []

    def enqueue(self, delivery: PendingDelivery) -> None:
        self._schedule(delivery, self._delays[0])

    def _schedule(self, delivery: PendingDelivery, delay: float) -> None:
        with self._wake:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._sequence), delivery))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="emulator-delivery", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def idle(self) -> bool:
        """Nothing queued and nothing being sent (scheduled retries count as queued)."""
        with self._wake:
            return not self._heap and not self._in_flight

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        with httpx.Client(timeout=self._timeout, follow_redirects=False) as http:
            while True:
                with self._wake:
                    while not self._stopped and (
                        not self._heap or self._heap[0][0] > time.monotonic()
                    ):
                        wait = self._heap[0][0] - time.monotonic() if self._heap else None
                        self._wake.wait(wait)
                    if self._stopped:
                        return
                    _, _, delivery = heapq.heappop(self._heap)
                    self._in_flight += 1
                try:
                    self._attempt(http, delivery)
                finally:
                    with self._wake:
                        self._in_flight -= 1

    def _attempt(self, http: httpx.Client, delivery: PendingDelivery) -> None:
        target = self._target(delivery.subscription_id)
        if target is None:
            return
        url, secret = target
        # Each attempt is signed afresh: the timestamp is part of what is signed.
        headers = sign_headers(secret, delivery.msg_id, delivery.body)
        headers["Content-Type"] = "application/json"
        headers["User-Agent"] = "Assisters-Webhooks-Emulator/1"
        status_code: int | None = None
        error: str | None = None
        try:
            response = http.post(url, content=delivery.body, headers=headers)
            status_code = response.status_code
            if not response.is_success:
                error = f"answered {status_code}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        self.attempts.append(
            AttemptRecord(
                delivery.msg_id,
                delivery.subscription_id,
                delivery.attempt,
                status_code,
                error,
                datetime.now(UTC).isoformat(),
            )
        )
        if error is None:
            return
        if delivery.attempt >= len(self._delays):
            log.warning("gave up delivering %s to %s", delivery.msg_id, delivery.subscription_id)
            return
        delay = self._delays[delivery.attempt]
        log.info(
            "delivery of %s to %s failed (%s); attempt %d in %.1fs",
            delivery.msg_id,
            delivery.subscription_id,
            error,
            delivery.attempt + 1,
            delay,
        )
        delivery.attempt += 1
        self._schedule(delivery, delay)
