"""Getting committed events to the broker, and back to it when they go astray.

* The **relay** hands stored events to the broker after their commit: the events table is the
  outbox. It runs in every Celery worker process (a bootstep, ``workers.celery_app``), waits
  on PostgreSQL's ``LISTEN`` for the ``NOTIFY`` the web processes send after storing events
  (``RelayWaker``), and, in one transaction, marks a
  batch of ``received`` events ``queued`` (``FOR UPDATE SKIP LOCKED``, so the relays of several
  workers and hosts share the work), publishes their ids, and only then commits. A failed
  publish rolls the mark back: the events stay ``received`` and the next cycle tries again.
* The **sweep** (Celery beat) publishes again every event whose ``due_at`` has passed: never
  handed off, lost by the broker, waiting for a retry too far off for a countdown, or held by
  a worker that died.

A message carries event ids only; the dispatcher claims their handlers, so a message published
twice runs nothing twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from webhooks_app import engine
from webhooks_app.config import Settings
from webhooks_app.database import Database
from webhooks_app.store import utcnow

log = logging.getLogger(__name__)

# Sends event ids to the workers (``extensions.celery_publisher``: messages of several ids).
Publish = Callable[[Sequence[str]], None]

RELAY_BATCH = 500
# How often a waiting relay checks whether it is being stopped.
STOP_CHECK_SECONDS = 0.5
SWEEP_BATCH = 1000


class Relay:
    """The outbox relay: hands ``received`` events to the broker, in batches."""

    def __init__(self, db: Database, publish: Publish, settings: Settings) -> None:
        self._db = db
        self._publish = publish
        self._settings = settings
        self._requeue_after = timedelta(seconds=settings.requeue_after_seconds)
        self.stopping = threading.Event()
        self.listening = threading.Event()  # set while it waits on LISTEN

    def relay_once(self, limit: int = RELAY_BATCH) -> int:
        """Hand off up to ``limit`` stored events; returns how many."""
        with self._db.begin() as connection:
            ids = engine.take_for_handoff(
                connection, now=utcnow(), limit=limit, requeue_after=self._requeue_after
            )
            if ids:
                self._publish(ids)  # raising rolls the mark back
        return len(ids)

    def serve(self) -> None:
        """Relay until ``stopping`` is set: on every notification, and every
        ``RELAY_POLL_SECONDS`` without one (a notification lost with its connection)."""
        failures = 0
        listener: psycopg.Connection[Any] | None = None
        while not self.stopping.is_set():
            try:
                if listener is None or listener.closed:
                    listener = self._listen()
                while self.relay_once() >= RELAY_BATCH:
                    pass  # more waiting: go on at once
                failures = 0
                self._wait(listener)
            except Exception:
                failures += 1
                log.warning("hand-off failed; retrying", exc_info=True)
                self.listening.clear()
                if listener is not None:
                    listener.close()
                    listener = None
                self.stopping.wait(min(0.1 * 2**failures, 5.0))
        if listener is not None:
            listener.close()

    def _listen(self) -> psycopg.Connection[Any]:
        url = make_url(self._settings.database_url).set(drivername="postgresql")
        listener = psycopg.connect(
            url.render_as_string(hide_password=False), autocommit=True, connect_timeout=5
        )
        listener.execute(f"LISTEN {engine.CHANNEL}")
        self.listening.set()
        return listener

    def _wait(self, listener: psycopg.Connection[Any]) -> None:
        """Until a notification, ``RELAY_POLL_SECONDS`` or ``stopping``, whichever is first."""
        deadline = time.monotonic() + self._settings.relay_poll_seconds
        notified = False
        while not notified and not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            slice_ = min(left, STOP_CHECK_SECONDS)
            notified = any(True for _ in listener.notifies(timeout=slice_, stop_after=1))
        if notified and not self.stopping.is_set():
            # Under load, let a few milliseconds of events gather: one cycle (a statement and
            # a publish) then carries many, instead of one cycle per event.
            self.stopping.wait(self._settings.relay_linger_seconds)
            for _ in listener.notifies(timeout=0):
                pass  # every pending wake-up at once: this cycle takes their events


class RelayWaker:
    """Wakes the relays after the intake stored events, from one thread of this process.

    The request path only sets a flag; the thread sends one ``NOTIFY`` for every event stored
    since its last one, and at most one per ``RELAY_LINGER_MS`` (a woken relay lingers that long
    before it takes the events anyway): under load one round trip wakes the relays for many
    events instead of one per event. A lost wake-up costs an event at most the relays' poll
    interval.
    """

    def __init__(self, db: Database, pause: float) -> None:
        self._db = db
        self._pause = pause
        self._pending = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def wake(self) -> None:
        if self._pid != os.getpid():
            self._start()  # a thread does not survive fork(): one per process, on first use
        self._pending.set()

    def _start(self) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._pending = threading.Event()
                self._thread = threading.Thread(target=self._run, name="relay-waker", daemon=True)
                self._pid = os.getpid()
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._pending.wait()
            self._pending.clear()
            try:
                engine.wake_relays(self._db.execute_autocommit)
            except Exception:
                log.warning("could not wake the relays; they will poll", exc_info=True)
                time.sleep(1.0)
            time.sleep(self._pause)


class RelayThread:
    """The relay on a daemon thread of this process, started and stopped with it."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._relay.stopping.clear()
        self._thread = threading.Thread(target=self._relay.serve, name="outbox-relay", daemon=True)
        self._thread.start()
        log.info("outbox relay started")

    def stop(self, timeout: float = 10.0) -> None:
        self._relay.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)


def sweep(db: Database, publish: Publish, settings: Settings, *, limit: int = SWEEP_BATCH) -> int:
    """Publish the overdue events again; returns how many. Safe to run anywhere, any number of
    times; a failed publish rolls back and leaves them overdue."""
    with db.begin() as connection:
        overdue = engine.take_overdue(
            connection,
            now=utcnow(),
            limit=limit,
            requeue_after=timedelta(seconds=settings.requeue_after_seconds),
        )
        if overdue:
            publish(overdue)
    if overdue:
        log.info("sweep re-published %d overdue events", len(overdue))
    return len(overdue)
