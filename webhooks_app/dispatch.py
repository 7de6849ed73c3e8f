"""Running stored events' handlers, once each (how events reach the broker: ``handoff``).

The **dispatcher** claims each (event, handler) with a conditional UPDATE and a lease that a
keeper thread renews while the handler runs. A second delivery of the same event therefore
finds the claim taken, or the handler already succeeded, and does nothing; a worker killed
mid-handler stops renewing, and the next delivery takes over once the lease runs out. On
PostgreSQL ``process_events`` claims and records a whole message's pending handlers in two
transactions (``pgsql``); ``process_event`` is the one-event path for everything else, and for
every event on SQLite.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from webhooks_app import pgsql, store
from webhooks_app.config import Settings
from webhooks_app.events import Event
from webhooks_app.logs import log_context, log_event
from webhooks_app.registry import WILDCARD, Handler, Registry
from webhooks_app.store import (
    TERMINAL_STATUSES,
    AttemptStatus,
    EventStatus,
    HandlerStatus,
    utcnow,
)

log = logging.getLogger(__name__)


# --- running handlers -------------------------------------------------------------------------


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff with jitter: about 1 s, 2 s, 4 s, ... (plus up to half again)."""
    delay: float = min(cap, base * 2.0 ** (attempt - 1))
    return delay + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not cryptography


@dataclass(frozen=True)
class FollowUp:
    """Run ``handler`` again in ``delay`` seconds: a retry, or a claim held elsewhere."""

    handler: str
    delay: float


@dataclass
class Outcome:
    ran: list[str] = field(default_factory=list)
    follow_ups: list[FollowUp] = field(default_factory=list)


@dataclass(frozen=True)
class _Claim:
    handler: Handler
    # (run, attempt counter after the claim): proves the claim is still ours. The run is part of
    # it because a replay starts a new run and resets the counter.
    run: int
    token: int
    max_attempts: int
    number: int
    attempt_id: int


class _Row(Protocol):
    """What an event's status is derived from: a handler state row, of any query."""

    @property
    def handler(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def lease_until(self) -> datetime | None: ...
    @property
    def next_attempt_at(self) -> datetime | None: ...


class LeaseKeeper:
    """Renews the leases of the handlers this process is running, from one daemon thread."""

    def __init__(self, sessions: sessionmaker[Session], lease: timedelta) -> None:
        self._sessions = sessions
        self._lease = lease
        self._held: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def hold(self, event_id: str, handler: str, token: int) -> None:
        self._ensure_thread()
        with self._lock:
            self._held[(event_id, handler)] = token

    def release(self, event_id: str, handler: str) -> None:
        with self._lock:
            self._held.pop((event_id, handler), None)

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
                held = dict(self._held)
            if held:
                try:
                    self.renew(held)
                except Exception:
                    log.warning("could not renew handler leases", exc_info=True)

    def renew(self, held: dict[tuple[str, str], int]) -> None:
        states = store.handler_states
        with self._sessions.begin() as session:
            store.lock_events(session, sorted({event_id for event_id, _ in held}))
            for (event_id, handler), token in held.items():
                session.execute(
                    update(states)
                    .where(
                        states.c.event_id == event_id,
                        states.c.handler == handler,
                        states.c.status == HandlerStatus.RUNNING.value,
                        states.c.attempts == token,
                    )
                    .values(lease_until=utcnow() + self._lease)
                )


class Dispatcher:
    """Runs the registered handlers of one stored event; every step is safe to repeat."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        registry: Registry,
        settings: Settings,
        *,
        pipelined: pgsql.PipelinedTransaction | None = None,
    ) -> None:
        self._sessions = sessions
        self._pipelined = pipelined or _no_pipelined_transaction
        self._registry = registry
        self._settings = settings
        self._lease = timedelta(seconds=settings.handler_lease_seconds)
        self._grace = timedelta(seconds=settings.handoff_grace_seconds)
        self.leases = LeaseKeeper(sessions, self._lease)
        self.observer: DispatchObserver = _NO_OBSERVER

    def process_events(self, event_ids: Sequence[str]) -> dict[str, Outcome]:
        """Process the events of one message together.

        On PostgreSQL every handler that is simply ``pending`` (a new event, a replay) is
        claimed for all the events in one transaction, run, and recorded, if it succeeded, in
        a second one (``pgsql``). Everything else (a failure, a handler due for a retry, a
        running one whose lease ran out, one held elsewhere) takes the one-event path, which
        decides every case the same way. SQLite, one writer at a time, takes it for all.
        """
        ids = list(dict.fromkeys(event_ids))
        if self._settings.database_url.startswith("sqlite"):
            return {event_id: self.process_event(event_id) for event_id in ids}
        outcomes = {event_id: Outcome() for event_id in ids}
        loaded, claims, unsettled = self._claim_batch(ids)
        try:
            errors = [self._run(event, claim) for event, claim in claims]
        finally:
            # If the worker is stopped mid-batch, claims it never ran must not be kept alive
            # by the lease keeper: their leases run out and another delivery takes them over.
            for event, claim in claims:
                self.leases.release(event.id, claim.handler.name)
        self._record_batch_successes(
            [pair for pair, error in zip(claims, errors, strict=True) if error is None]
        )
        for (event, claim), error in zip(claims, errors, strict=True):
            outcome = outcomes[event.id]
            outcome.ran.append(claim.handler.name)
            if error is not None:
                retry_in = self._record(event, claim, error)
                if retry_in is not None:
                    outcome.follow_ups.append(FollowUp(claim.handler.name, retry_in))
        for event_id in unsettled:
            more = self.process_event(event_id)
            outcomes[event_id].ran.extend(more.ran)
            outcomes[event_id].follow_ups.extend(more.follow_ups)
        for event_id in ids:
            if event_id not in loaded:
                log_event("event no longer exists; nothing to do", event_id=event_id)
        return outcomes

    def _claim_batch(
        self, ids: Sequence[str]
    ) -> tuple[set[str], list[tuple[Event, _Claim]], list[str]]:
        """Claim every pending handler of these events in one transaction, one round trip.

        Returns the ids of the events that exist, the claims (in the order of ``ids``), and
        the events with a registered handler that was not claimed, for the one-event path.
        """
        now = utcnow()
        lease_until = now + self._lease
        registered = self._registry.all()
        with self._pipelined() as pipeline:
            loading = pgsql.lock_and_load(pipeline, ids)
            claiming = pgsql.claim(
                pipeline,
                ids,
                [
                    pgsql.RegisteredHandler(
                        h.event_type, h.name, h.max_attempts or self._settings.default_max_attempts
                    )
                    for h in registered
                ],
                now=now,
                lease_until=lease_until,
                due_at=lease_until + self._grace,
            )
            handled_types = {h.event_type for h in registered}
            skipping = (
                None
                if WILDCARD in handled_types
                else pgsql.skip_unhandled(pipeline, ids, sorted(handled_types), now=now)
            )
        locked, claimed = loading.result(), claiming.result()
        skipped = [] if skipping is None else skipping.result()
        for _ in skipped:
            self.observer.event_finished(EventStatus.SKIPPED.value)

        events = {
            e.id: Event(
                id=e.id,
                type=e.type,
                data=e.payload.get("data", {}),
                payload=e.payload,
                received_at=e.received_at,
            )
            for e in locked
        }
        by_key = {(c.event_id, c.handler): c for c in claimed}
        claims: list[tuple[Event, _Claim]] = []
        unsettled: list[str] = []
        for event_id in ids:
            event = events.get(event_id)
            if event is None:
                continue
            for handler in self._registry.for_type(event.type):
                got = by_key.get((event_id, handler.name))
                if got is None:
                    # Held elsewhere, finished, or failed and waiting for its retry: the
                    # one-event path decides, and writes the event's status.
                    if event_id not in unsettled:
                        unsettled.append(event_id)
                    continue
                claim = _Claim(
                    handler, got.run, got.token, got.max_attempts, got.number, got.attempt_id
                )
                self.leases.hold(event_id, handler.name, claim.token)
                claims.append((event, claim))
        return set(events), claims, unsettled

    def _record_batch_successes(self, done: Sequence[tuple[Event, _Claim]]) -> None:
        """Record the successful attempts of a batch in one transaction, one round trip."""
        if not done:
            return
        succeeded_here = Counter(event.id for event, _ in done)
        whole = {
            event.id: succeeded_here[event.id]
            for event, _ in done
            if succeeded_here[event.id] == len(self._registry.for_type(event.type))
        }
        with self._pipelined() as pipeline:
            recording = pgsql.record_successes(
                pipeline,
                [
                    pgsql.Claimed(
                        event.id,
                        claim.handler.name,
                        claim.token,
                        claim.run,
                        claim.max_attempts,
                        claim.attempt_id,
                        claim.number,
                    )
                    for event, claim in done
                ],
                whole,
                now=utcnow(),
                abandoned_error=_TAKEN_OVER,
            )
        recorded = recording.result()
        for _ in recorded.finished:
            self.observer.event_finished(EventStatus.SUCCEEDED.value)
        for event, claim in done:
            ok = (event.id, claim.handler.name) in recorded.ours
            self._recorded(event, claim, AttemptStatus.SUCCEEDED if ok else AttemptStatus.ABANDONED)

    def process_event(self, event_id: str, only_handler: str | None = None) -> Outcome:
        outcome = Outcome()
        with self._sessions.begin() as session:
            loaded = self._load(session, event_id)
        if loaded is None:
            log_event("event no longer exists; nothing to do", event_id=event_id)
            return outcome
        event, handlers = loaded
        for handler in handlers:
            if only_handler is not None and handler.name != only_handler:
                continue
            claim, wait = self._claim(event, handler)
            if claim is None:
                if wait is not None:
                    outcome.follow_ups.append(FollowUp(handler.name, wait))
                continue
            error = self._run(event, claim)
            retry_in = self._record(event, claim, error)
            outcome.ran.append(handler.name)
            if retry_in is not None:
                outcome.follow_ups.append(FollowUp(handler.name, retry_in))
        return outcome

    def _load(self, session: Session, event_id: str) -> tuple[Event, list[Handler]] | None:
        row = session.execute(
            select(store.events.c.type, store.events.c.payload, store.events.c.received_at)
            .where(store.events.c.id == event_id)
            .with_for_update()  # see store.lock_events
        ).first()
        if row is None:
            return None
        handlers = self._registry.for_type(row.type)
        payload = row.payload
        event = Event(
            id=event_id,
            type=row.type,
            data=payload.get("data", {}),
            payload=payload,
            received_at=row.received_at,
        )
        now = utcnow()
        self._ensure_states(session, event_id, handlers)
        self._refresh_status(session, event_id, now)
        return event, handlers

    def _ensure_states(self, session: Session, event_id: str, handlers: list[Handler]) -> None:
        """Create the event's missing (event, handler) rows, ``pending``, in one statement."""
        if not handlers:
            return
        now = utcnow()
        values = [
            {
                "event_id": event_id,
                "handler": h.name,
                "status": HandlerStatus.PENDING.value,
                "attempts": 0,
                "max_attempts": h.max_attempts or self._settings.default_max_attempts,
                "updated_at": now,
            }
            for h in handlers
        ]
        insert_ = postgresql.insert if store.on_postgresql(session) else sqlite.insert
        session.execute(insert_(store.handler_states).values(values).on_conflict_do_nothing())

    def _claim(self, event: Event, handler: Handler) -> tuple[_Claim | None, float | None]:
        """Take (event, handler) if it is due; returns (claim, None) or (None, seconds to wait)."""
        states = store.handler_states
        now = utcnow()
        key = (states.c.event_id == event.id, states.c.handler == handler.name)
        with self._sessions.begin() as session:
            store.lock_events(session, [event.id])
            before = session.execute(
                select(
                    states.c.status,
                    states.c.attempts,
                    states.c.lease_until,
                    states.c.next_attempt_at,
                    states.c.max_attempts,
                    states.c.run,
                ).where(*key)
            ).first()
            if before is None:
                return None, None
            claimable = (
                before.status == HandlerStatus.PENDING.value
                or (before.status == HandlerStatus.FAILED.value and before.next_attempt_at <= now)
                or (before.status == HandlerStatus.RUNNING.value and before.lease_until <= now)
            )
            if not claimable:
                return None, self._wait_for(before.status, before.lease_until, now)
            token = before.attempts + 1
            # The conditional UPDATE is the claim: of two racing workers, one matches a row.
            claimed = session.execute(
                update(states)
                .where(
                    *key,
                    states.c.status == before.status,
                    states.c.run == before.run,
                    states.c.attempts == before.attempts,
                )
                .values(
                    status=HandlerStatus.RUNNING.value,
                    attempts=token,
                    lease_until=now + self._lease,
                    next_attempt_at=None,
                    updated_at=now,
                )
            )
            if store.affected_rows(claimed) != 1:
                return None, self._lease.total_seconds()
            if before.status == HandlerStatus.RUNNING.value:
                self._abandon_running(session, event.id, handler.name, now)
            number = (
                session.execute(
                    select(func.coalesce(func.max(store.attempts.c.number), 0)).where(
                        store.attempts.c.event_id == event.id,
                        store.attempts.c.handler == handler.name,
                    )
                ).scalar_one()
                + 1
            )
            attempt_id = session.execute(
                insert(store.attempts)
                .values(
                    event_id=event.id,
                    handler=handler.name,
                    number=number,
                    run=before.run,
                    status=AttemptStatus.RUNNING.value,
                    started_at=now,
                )
                .returning(store.attempts.c.id)
            ).scalar_one()
            self._refresh_status(session, event.id, now)
        self.leases.hold(event.id, handler.name, token)
        return _Claim(handler, before.run, token, before.max_attempts, number, attempt_id), None

    @staticmethod
    def _wait_for(status: str, lease_until: datetime | None, now: datetime) -> float | None:
        if status == HandlerStatus.RUNNING.value and lease_until is not None:
            return max((lease_until - now).total_seconds(), 0.0) + 1
        return None  # finished, or failed with its own retry already scheduled

    def _abandon_running(
        self, session: Session, event_id: str, handler: str, now: datetime
    ) -> None:
        session.execute(
            update(store.attempts)
            .where(
                store.attempts.c.event_id == event_id,
                store.attempts.c.handler == handler,
                store.attempts.c.status == AttemptStatus.RUNNING.value,
            )
            .values(
                status=AttemptStatus.ABANDONED.value,
                finished_at=now,
                error="The worker running this attempt stopped (its lease expired).",
            )
        )

    def _run(self, event: Event, claim: _Claim) -> BaseException | None:
        started = time.perf_counter()
        error: BaseException | None = None
        with log_context(event_id=event.id, handler=claim.handler.name):
            try:
                claim.handler.func(
                    Event(
                        event.id,
                        event.type,
                        event.data,
                        event.payload,
                        event.received_at,
                        claim.number,
                    )
                )
            except Exception as exc:
                log.warning("handler failed: %r", exc, exc_info=exc)
                error = exc
            finally:
                self.leases.release(event.id, claim.handler.name)
        self.observer.handler_ran(claim.handler.name, time.perf_counter() - started, error)
        return error

    def _record(self, event: Event, claim: _Claim, error: BaseException | None) -> float | None:
        """Finish the attempt; returns the delay before a retry, if one is due."""
        states = store.handler_states
        now = utcnow()
        retry_in: float | None = None
        if error is None:
            new_status = HandlerStatus.SUCCEEDED
        elif claim.token < claim.max_attempts:
            new_status = HandlerStatus.FAILED
            retry_in = backoff_seconds(
                claim.token,
                base=self._settings.retry_base_seconds,
                cap=self._settings.retry_max_seconds,
            )
        else:
            new_status = HandlerStatus.DEAD
        with self._sessions.begin() as session:
            store.lock_events(session, [event.id])
            # Guarded by the claim token: if our lease ran out and another attempt took the
            # handler over, this matches nothing and that attempt decides.
            next_attempt_at = None if retry_in is None else now + timedelta(seconds=retry_in)
            finished = session.execute(
                update(states)
                .where(
                    states.c.event_id == event.id,
                    states.c.handler == claim.handler.name,
                    states.c.status == HandlerStatus.RUNNING.value,
                    states.c.run == claim.run,
                    states.c.attempts == claim.token,
                )
                .values(
                    status=new_status.value,
                    lease_until=None,
                    next_attempt_at=next_attempt_at,
                    updated_at=now,
                )
            )
            still_ours = store.affected_rows(finished) == 1
            if error is not None:
                attempt_status, message = AttemptStatus.FAILED, _describe(error)
            elif still_ours:
                attempt_status, message = AttemptStatus.SUCCEEDED, None
            else:
                attempt_status, message = AttemptStatus.ABANDONED, _TAKEN_OVER
            session.execute(
                update(store.attempts)
                .where(store.attempts.c.id == claim.attempt_id)
                .values(
                    status=attempt_status.value,
                    finished_at=now,
                    error=message,
                    traceback=None if error is None else _format_traceback(error),
                )
            )
            if not still_ours:
                return None
            self._refresh_status(session, event.id, now)
        self._recorded(event, claim, attempt_status)
        return retry_in

    def _recorded(self, event: Event, claim: _Claim, status: AttemptStatus) -> None:
        self.observer.attempt_recorded(claim.handler.name, status.value)
        log_event(
            "handler attempt recorded",
            event_id=event.id,
            handler=claim.handler.name,
            status=status.value,
            attempt=claim.number,
        )

    def _refresh_status(self, session: Session, event_id: str, now: datetime) -> None:
        self._refresh_statuses(session, [event_id], now)

    def _refresh_statuses(self, session: Session, event_ids: Sequence[str], now: datetime) -> None:
        """Derive events' statuses (and when the sweep should look again) from their handlers."""
        if not event_ids:
            return
        events, states = store.events, store.handler_states
        arrays = store.on_postgresql(session)
        types = store.lock_events(session, event_ids)
        rows: dict[str, list[Any]] = defaultdict(list)  # each: a handler_states row
        for row in session.execute(
            select(
                states.c.event_id,
                states.c.handler,
                states.c.status,
                states.c.lease_until,
                states.c.next_attempt_at,
            ).where(store.one_of(states.c.event_id, list(types), arrays=arrays))
        ):
            rows[row.event_id].append(row)
        groups: dict[tuple[EventStatus, datetime | None], list[str]] = defaultdict(list)
        for event_id, event_type in types.items():
            status, due = self._derive_status(self._registered(event_type, rows[event_id]), now)
            if status in TERMINAL_STATUSES:
                self.observer.event_finished(status.value)
            groups[(status, due)].append(event_id)
        for (status, due), ids in groups.items():
            session.execute(
                update(events)
                .where(store.one_of(events.c.id, ids, arrays=arrays))
                .values(status=status.value, due_at=due, updated_at=now)
            )

    def _registered(self, event_type: str, rows: Sequence[_Row]) -> list[_Row]:
        """A handler since removed from handlers.py keeps its rows, but no longer holds the
        event open: otherwise the sweep would re-publish it forever."""
        names = {h.name for h in self._registry.for_type(event_type)}
        return [row for row in rows if row.handler in names]

    def _derive_status(
        self, rows: Sequence[_Row], now: datetime
    ) -> tuple[EventStatus, datetime | None]:
        statuses = {row.status for row in rows}
        if not rows:
            return EventStatus.SKIPPED, None
        if HandlerStatus.RUNNING.value in statuses or HandlerStatus.PENDING.value in statuses:
            leases = [row.lease_until for row in rows if row.lease_until is not None]
            return EventStatus.PROCESSING, (
                max(leases) if leases else now + self._lease
            ) + self._grace
        if HandlerStatus.FAILED.value in statuses:
            retries = [row.next_attempt_at for row in rows if row.next_attempt_at is not None]
            return EventStatus.FAILED, min(retries) + self._grace
        if HandlerStatus.DEAD.value in statuses:
            return EventStatus.DEAD, None
        return EventStatus.SUCCEEDED, None


def _no_pipelined_transaction() -> AbstractContextManager[Any]:
    raise RuntimeError("the batch path needs PostgreSQL and Database.pipelined_transaction")


class DispatchObserver:
    """Hooks for metrics; the default does nothing."""

    def handler_ran(self, handler: str, seconds: float, error: BaseException | None) -> None:
        return None

    def attempt_recorded(self, handler: str, status: str) -> None:
        return None

    def event_finished(self, status: str) -> None:
        return None


_NO_OBSERVER = DispatchObserver()


_TAKEN_OVER = "Finished after its lease had expired; another attempt took over."


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


def _format_traceback(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))[-20000:]
