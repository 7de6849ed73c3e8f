"""Running stored events' handlers, once each: claim, run, finish, over a batch of ids.

One algorithm for every message: one event is a batch of one. The dispatcher claims every due
handler of the batch's events in one transaction (``engine.claim``), runs the claimed handlers
outside any transaction while a keeper thread renews their leases, and records all outcomes in
a second transaction (``engine.finish``). A second delivery of the same ids finds the claims
taken or the handlers finished and does nothing; a worker killed mid-handler stops renewing,
and whoever delivers the event after its lease ran out takes it over.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from webhooks_app import engine
from webhooks_app.config import Settings
from webhooks_app.database import Database
from webhooks_app.engine import Claim, Ran
from webhooks_app.logs import log_context, log_event
from webhooks_app.registry import Registry
from webhooks_app.store import TERMINAL_STATUSES, HandlerStatus, utcnow

log = logging.getLogger(__name__)


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with jitter: about 1 s, 2 s, 4 s, ... (plus up to half again)."""
    delay: float = min(cap, base * 2.0 ** (attempt - 1))
    return delay + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not cryptography


@dataclass(frozen=True)
class FollowUp:
    """Deliver the event again in ``delay`` seconds: ``handler``'s retry is due, or the lease of
    the worker holding it runs out, then."""

    handler: str
    delay: float


@dataclass
class Outcome:
    """What one delivery did for one event."""

    ran: list[str] = field(default_factory=list)
    follow_ups: list[FollowUp] = field(default_factory=list)


class LeaseKeeper:
    """Renews the leases of the handlers this process is running, from one daemon thread."""

    def __init__(self, db: Database, lease: timedelta) -> None:
        self._db = db
        self._lease = lease
        self._held: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def hold(self, claim: Claim) -> None:
        self._ensure_thread()
        with self._lock:
            self._held[(claim.event.id, claim.handler)] = claim.token

    def release(self, claim: Claim) -> None:
        with self._lock:
            self._held.pop((claim.event.id, claim.handler), None)

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid() or self._thread is None:
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        interval = max(self._lease.total_seconds() / 3, 0.2)
        stop = threading.Event()
        while not stop.wait(interval):
            with self._lock:
                held = [
                    (event_id, handler, token) for (event_id, handler), token in self._held.items()
                ]
            if held:
                try:
                    with self._db.begin() as connection:
                        engine.renew_leases(connection, held, lease_until=utcnow() + self._lease)
                except Exception:
                    log.warning("could not renew handler leases", exc_info=True)


class Dispatcher:
    """Runs the registered handlers of stored events; every step is safe to repeat."""

    def __init__(self, db: Database, registry: Registry, settings: Settings) -> None:
        self._db = db
        self._registry = registry
        self._settings = settings
        self._lease = timedelta(seconds=settings.handler_lease_seconds)
        self._grace = timedelta(seconds=settings.handoff_grace_seconds)
        self.leases = LeaseKeeper(db, self._lease)
        self.observer: DispatchObserver = _NO_OBSERVER

    def process_events(self, event_ids: Sequence[str]) -> dict[str, Outcome]:
        """Claim, run and finish the due handlers of these events; what it did for each."""
        outcomes = {event_id: Outcome() for event_id in event_ids}
        registered = engine.Registered.of(self._registry.all(), self._settings.default_max_attempts)
        with self._db.begin() as connection:
            claimed = engine.claim(
                connection,
                event_ids,
                registered,
                now=utcnow(),
                lease=self._lease,
                grace=self._grace,
            )
        self._settled(claimed.settled)
        for event_id in outcomes.keys() - claimed.found:
            log_event("event no longer exists; nothing to do", event_id=event_id)
        now = utcnow()
        for held in claimed.held:
            # Held elsewhere: come back when its lease runs out, in case its worker died.
            wait = max((held.lease_until - now).total_seconds(), 0.0) + 1
            outcomes[held.event_id].follow_ups.append(FollowUp(held.handler, wait))
        for claim in claimed.claims:
            self.leases.hold(claim)
        try:
            ran = [self._run(claim) for claim in claimed.claims]
        finally:
            # If the worker is stopped mid-batch, claims it never ran must not be kept alive:
            # their leases run out and another delivery takes them over.
            for claim in claimed.claims:
                self.leases.release(claim)
        if not ran:
            return outcomes
        with self._db.begin() as connection:
            done = engine.finish(
                connection, ran, registered, now=utcnow(), lease=self._lease, grace=self._grace
            )
        self._settled(done.settled)
        for finished in done.finished:
            claim = finished.ran.claim
            self._recorded(finished)
            outcome = outcomes[claim.event.id]
            outcome.ran.append(claim.handler)
            if finished.state == HandlerStatus.FAILED and finished.ran.retry_in is not None:
                outcome.follow_ups.append(FollowUp(claim.handler, finished.ran.retry_in))
        return outcomes

    def _run(self, claim: Claim) -> Ran:
        started = time.perf_counter()
        error: BaseException | None = None
        handler = self._registry.get(claim.handler)
        with log_context(event_id=claim.event.id, handler=claim.handler):
            try:
                if handler is None:  # unregistered since the claim: cannot happen in a worker
                    raise LookupError(f"handler {claim.handler!r} is not registered")
                handler.func(claim.event)
            except Exception as exc:
                log.warning("handler failed: %r", exc, exc_info=exc)
                error = exc
            finally:
                self.leases.release(claim)
        seconds = time.perf_counter() - started
        self.observer.handler_ran(claim.handler, seconds, error)
        duration_ms = round(seconds * 1000, 3)
        if error is None:
            return Ran(claim, duration_ms=duration_ms)
        retry_in = backoff_seconds(
            claim.token,
            base=self._settings.retry_base_seconds,
            cap=self._settings.retry_max_seconds,
        )
        return Ran(claim, _describe(error), _format_traceback(error), retry_in, duration_ms)

    def _recorded(self, finished: engine.Finished) -> None:
        claim = finished.ran.claim
        self.observer.attempt_recorded(claim.handler, finished.attempt.value)
        log_event(
            "handler attempt recorded",
            event_id=claim.event.id,
            handler=claim.handler,
            status=finished.attempt.value,
            attempt=claim.number,
            duration_ms=finished.ran.duration_ms,
        )

    def _settled(self, settled: dict[str, str]) -> None:
        for status in settled.values():
            if status in TERMINAL_STATUSES:
                self.observer.event_finished(status)


class DispatchObserver:
    """Hooks for metrics; the default does nothing."""

    def handler_ran(self, handler: str, seconds: float, error: BaseException | None) -> None:
        return None

    def attempt_recorded(self, handler: str, status: str) -> None:
        return None

    def event_finished(self, status: str) -> None:
        return None


_NO_OBSERVER = DispatchObserver()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


def _format_traceback(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))[-20000:]
