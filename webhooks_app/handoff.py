"""Getting committed events to the broker, and back to it when they go astray.

* The **relay** hands committed events to the broker after the commit, in batches: under
  gunicorn the outbox relay process (``OutboxRelay``, run by ``webhooks_app.outbox``),
  elsewhere a background thread of each process (``Relay``). If the broker is down, the events
  simply stay ``received``.
* The **sweep** (Celery beat) re-publishes every event whose ``due_at`` has passed: never handed
  off, lost by the broker, or waiting for a retry that was too far off for a countdown.

What a message carries is event ids only; the dispatcher (``dispatch``) loads the events and
claims their handlers, so a message published twice runs nothing twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select as select_module
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from webhooks_app import pgsql, store
from webhooks_app.config import Settings
from webhooks_app.store import utcnow

log = logging.getLogger(__name__)

# Sends event ids to the workers (``Service.publish``: Celery messages of several ids).
Publish = Callable[[Sequence[str]], None]


class Relay:
    """Publishes stored event ids from a per-process background thread, in batches."""

    def __init__(
        self, sessions: sessionmaker[Session], publish: Publish, settings: Settings
    ) -> None:
        self._sessions = sessions
        self._publish = publish
        self._requeue_after = timedelta(seconds=settings.requeue_after_seconds)
        # Under gunicorn an outbox relay process does the hand-off (see OutboxRelay); this
        # process only wakes it up by writing a byte to a pipe.
        self._wakeup_fd = settings.relay_wakeup_fd
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, event_id: str) -> None:
        if self._wakeup_fd is not None:
            # A full pipe means the relay has wake-ups pending anyway; a dead one is
            # restarted, and meanwhile its poll and the sweep pick the event up.
            with contextlib.suppress(OSError):
                os.write(self._wakeup_fd, b"\0")
            return
        self._ensure_thread()
        self._idle.clear()
        self._queue.put(event_id)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything submitted so far was handled (tests and shutdown)."""
        return self._idle.wait(timeout)

    def _ensure_thread(self) -> None:
        # A thread does not survive fork(): start one per process, on first use.
        if self._pid == os.getpid() and self._thread is not None:
            return
        with self._lock:
            if self._pid != os.getpid() or self._thread is None:
                self._queue = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, name="event-relay", daemon=True)
                self._pid = os.getpid()
                self._thread.start()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < 500:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            ids = [event_id for event_id in batch if event_id is not None]
            try:
                self.hand_off(ids)
            except Exception:
                # Nothing is lost: the events stay ``received`` and the sweep hands them over.
                log.warning(
                    "hand-off of %d events failed; the sweep will retry", len(ids), exc_info=True
                )
            if self._queue.empty():
                self._idle.set()

    def hand_off(self, event_ids: Sequence[str]) -> None:
        if not event_ids:
            return
        self._publish(event_ids)
        with self._sessions.begin() as session:
            store.mark_queued(session, event_ids, requeue_after=self._requeue_after)


class OutboxRelay:
    """The hand-off as its own process: the events table is the outbox.

    gunicorn's master starts one per web host (``gunicorn.conf.py``). Web workers only commit
    and write a byte to a pipe; the relay wakes up, marks up to a batch of ``received`` events
    ``queued`` in one statement (``FOR UPDATE SKIP LOCKED``, so several relays share the work),
    publishes them in messages of several ids, and only then commits. A failed publish rolls
    the mark back: the events stay ``received`` (what an operator sees while the broker is
    down) and the next cycle tries again. A worker that gets a message before the commit waits
    for it on the row lock, a millisecond or so. If the relay dies after publishing and before
    committing, the events are still ``received``; the worker processes them, and at worst the
    sweep publishes them once more, which the handler claims make harmless.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        publish: Publish,
        settings: Settings,
        *,
        batch: int = 500,
        pipelined: pgsql.PipelinedTransaction | None = None,
    ) -> None:
        self._sessions = sessions
        self._pipelined = pipelined
        self._publish = publish
        self._requeue_after = timedelta(seconds=settings.requeue_after_seconds)
        self._poll = settings.relay_poll_seconds
        self._linger = settings.relay_linger_seconds
        self._batch = batch
        self.stopping = threading.Event()

    def relay_once(self) -> int:
        """Hand off up to one batch of received events; returns how many."""
        if self._pipelined is not None:  # PostgreSQL
            with self._pipelined() as pipeline:
                now = utcnow()
                ids = pgsql.take_received(
                    pipeline, limit=self._batch, now=now, due_at=now + self._requeue_after
                )
                if ids:
                    self._publish(ids)  # raising rolls the mark back
            return len(ids)
        with self._sessions.begin() as session:
            ids = store.take_received(session, limit=self._batch, requeue_after=self._requeue_after)
            if ids:
                self._publish(ids)
        return len(ids)

    def serve(self, wakeup_fd: int | None, parent_pid: int | None = None) -> None:
        failures = 0
        while not self.stopping.is_set():
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("the process that started the relay is gone; stopping")
                return
            try:
                handed = self.relay_once()
                failures = 0
            except Exception:
                failures += 1
                log.warning("hand-off failed; retrying", exc_info=True)
                self.stopping.wait(min(0.1 * 2**failures, 5.0))
                continue
            if handed >= self._batch:
                continue  # more waiting: no need to sleep
            if handed:
                # Under load, let a few milliseconds of events gather: one cycle (a statement
                # and a publish) then carries many, instead of one cycle per event.
                self.stopping.wait(self._linger)
            if wakeup_fd is None:
                self.stopping.wait(self._poll)
                continue
            ready, _, _ = select_module.select([wakeup_fd], [], [], self._poll)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wakeup_fd, 65536)  # every pending wake-up at once


def sweep(
    sessions: sessionmaker[Session], publish: Publish, settings: Settings, *, limit: int = 1000
) -> int:
    """Re-publish overdue events; returns how many. Safe to run anywhere, any number of times."""
    now = utcnow()
    with sessions.begin() as session:
        overdue = store.overdue_event_ids(session, now=now, limit=limit)
    if not overdue:
        return 0
    publish(overdue)
    with sessions.begin() as session:
        store.postpone_due(
            session, overdue, until=now + timedelta(seconds=settings.requeue_after_seconds)
        )
        store.mark_queued(
            session, overdue, requeue_after=timedelta(seconds=settings.requeue_after_seconds)
        )
    log.info("sweep re-published %d overdue events", len(overdue))
    return len(overdue)
