"""The delivery state machine: every transition of an event and its handlers, written once.

An event is stored ``received``; the relay takes it for hand-off (``queued``) and publishes its
id; a worker claims its handlers (each (event, handler) state becomes ``running`` under a lease
and a claim token, and an attempt row starts), runs them outside any transaction, and finishes
the claims (``succeeded``, ``failed`` with a retry time, or ``dead``). Every event that is not
finished carries a ``due_at``; the sweep takes the overdue ones and publishes them again. A
replay starts a new run of chosen handlers.

Each function is one transition: a few fixed statements run straight through psycopg on the
caller's connection, inside the caller's transaction (the caller commits: ``Database.begin``,
in pipeline mode, so that a transition's statements and its BEGIN travel in one round trip);
the intake's ``store`` runs in autocommit mode (``Database.execute_autocommit``). Ids and
registries travel as arrays, so a statement's text never changes, whatever the batch, and
psycopg prepares it on the server. Status values in the SQL come from the enums in ``store``.

Rules every transition keeps:
- **One writer per event.** A transition that changes handler states first locks the events'
  rows, in id order (``_LOCK``), and reads the states in a later statement (one that waited
  for the lock would still see the rows of before the wait). Two batches sharing events wait
  for each other instead of deadlocking.
- **A claim is a conditional write** (of two racing workers, one matches the row) and a
  finish is guarded by the claim's token: an attempt whose lease ran out and was taken over
  records ``abandoned`` and changes nothing else.
- **An event's status follows from its registered handlers' states** (``_settling``), derived
  in the same statement by every transition that changes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
import psycopg
from psycopg.rows import namedtuple_row

from webhooks_app.events import Event
from webhooks_app.registry import WILDCARD, Handler
from webhooks_app.store import AttemptStatus, EventStatus, HandlerStatus, NewEvent

# PostgreSQL NOTIFY channel: stored events are announced on it, the relays listen.
CHANNEL = "webhooks_events"

TAKEN_OVER = "Finished after its lease had expired; another attempt took over."
ABANDONED = "The worker running this attempt stopped (its lease expired)."

E, H, A = EventStatus, HandlerStatus, AttemptStatus
# A connection of the caller's, in a transaction of the caller's (``Database.begin``).
Connection = psycopg.Connection[Any]


def _run(connection: Connection, sql: str, params: Mapping[str, Any]) -> psycopg.Cursor[Any]:
    """Send a statement; its rows (named) are read when the caller fetches them. In the
    pipeline mode of ``Database.begin``, statements sent one after the other travel together
    until the first fetch."""
    return connection.cursor(row_factory=namedtuple_row).execute(sql, params)


# --- store -----------------------------------------------------------------------------------

# psycopg's own parameter style: the intake runs these straight through the driver
# (``Database.execute_autocommit``).
_STORE = f"""
INSERT INTO events (id, type, status, payload, raw_body, headers, data_id,
                    webhook_timestamp, received_at, updated_at, due_at)
VALUES (%(id)s, %(type)s, '{E.RECEIVED}', %(payload)s::jsonb, %(raw_body)s,
        %(headers)s::jsonb, %(data_id)s, %(webhook_timestamp)s, %(received_at)s,
        %(received_at)s, %(due_at)s)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

_COUNT_DIFFERING_DUPLICATE = """
UPDATE events SET differing_duplicates = differing_duplicates + 1
WHERE id = %(id)s AND raw_body <> %(raw_body)s
RETURNING id
"""

# Run in autocommit mode: one statement, its own transaction.
ExecuteAutocommit = Callable[[str, Mapping[str, Any]], list[tuple[Any, ...]]]


class Stored(StrEnum):
    """What ``store`` did with a delivery."""

    CREATED = "accepted"
    DUPLICATE = "duplicate"  # the same id with the same body: a provider's retry
    DIFFERING_DUPLICATE = "duplicate_differing"  # the same id with another body: kept, counted


def store(execute: ExecuteAutocommit, event: NewEvent) -> Stored:
    """Store the event unless its id is already stored; a ``Stored`` value.

    Run in autocommit mode: the insert is its own durable transaction (the caller then wakes
    the relays, ``wake_relays``). ``INSERT ... ON CONFLICT DO NOTHING`` lets the unique key decide
    between racing duplicates. A duplicate whose body differs from the stored one is not stored
    (the first body stays) but counted on the event.
    """
    created = execute(
        _STORE,
        {
            "id": event.id,
            "type": event.type,
            "payload": event.raw_body.decode(),  # verified, valid UTF-8 JSON: its own text
            "raw_body": event.raw_body,
            "headers": orjson.dumps(event.headers).decode(),
            "data_id": event.data_id,
            "webhook_timestamp": event.webhook_timestamp,
            "received_at": event.received_at,
            "due_at": event.due_at,
        },
    )
    if created:
        return Stored.CREATED
    differing = execute(_COUNT_DIFFERING_DUPLICATE, {"id": event.id, "raw_body": event.raw_body})
    return Stored.DIFFERING_DUPLICATE if differing else Stored.DUPLICATE


# --- hand-off and the sweep ------------------------------------------------------------------

# Not part of the insert: a NOTIFY in a transaction takes a database-wide lock until that
# transaction's commit is durable, which would let one intake commit flush at a time.
_WAKE_RELAYS = f"NOTIFY {CHANNEL}"


def wake_relays(execute: ExecuteAutocommit) -> None:
    """Tell the listening relays that events await hand-off (autocommit: at once)."""
    execute(_WAKE_RELAYS, {})


_TAKE_FOR_HANDOFF = f"""
UPDATE events SET status = '{E.QUEUED}', updated_at = %(now)s, due_at = %(due_at)s
WHERE id IN (
    SELECT id FROM events WHERE status = '{E.RECEIVED}'
    ORDER BY received_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""

_TAKE_OVERDUE = f"""
UPDATE events
SET due_at = %(due_at)s, updated_at = %(now)s,
    status = CASE WHEN status = '{E.RECEIVED}' THEN '{E.QUEUED}' ELSE status END
WHERE id IN (
    SELECT id FROM events WHERE due_at <= %(now)s
    ORDER BY due_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""


def take_for_handoff(
    connection: Connection, *, now: datetime, limit: int, requeue_after: timedelta
) -> list[str]:
    """Mark up to ``limit`` stored events ``queued``, oldest first, and return their ids.

    The caller publishes them before it commits: a failed publish rolls the mark back, and
    rows another relay holds are skipped (``SKIP LOCKED``), so several relays share the work.
    If the message is lost the sweep publishes them again after ``requeue_after``.
    """
    rows = _run(
        connection,
        _TAKE_FOR_HANDOFF,
        {"now": now, "due_at": now + requeue_after, "limit": limit},
    )
    return [row.id for row in rows]


def take_overdue(
    connection: Connection, *, now: datetime, limit: int, requeue_after: timedelta
) -> list[str]:
    """Postpone up to ``limit`` overdue events by ``requeue_after`` and return their ids, for
    the caller to publish again before it commits: never handed off, lost by the broker,
    waiting for a retry too far off for a countdown, or held by a worker that died."""
    rows = _run(
        connection, _TAKE_OVERDUE, {"now": now, "due_at": now + requeue_after, "limit": limit}
    )
    return [row.id for row in rows]


# --- claim, finish, renew --------------------------------------------------------------------


@dataclass(frozen=True)
class Registered:
    """Handlers as the statements take them (``"*"``: every type), each with its attempt budget,
    the service's default where the handler names none: the worker's registry for claims, the
    chosen handlers for a replay."""

    types: tuple[str, ...]
    names: tuple[str, ...]
    max_attempts: tuple[int, ...]

    @classmethod
    def of(cls, handlers: Sequence[Handler], default_max_attempts: int) -> Registered:
        return cls(
            tuple(h.event_type for h in handlers),
            tuple(h.name for h in handlers),
            tuple(h.max_attempts or default_max_attempts for h in handlers),
        )

    def params(self) -> dict[str, Any]:
        return {
            "types": list(self.types),
            "names": list(self.names),
            "max_attempts": list(self.max_attempts),
        }


_LOCK = "SELECT id FROM events WHERE id = ANY(CAST(%(ids)s AS text[])) ORDER BY id FOR UPDATE"

_LOCK_AND_LOAD = """
SELECT id, type, received_at, payload::text AS payload FROM events
WHERE id = ANY(CAST(%(ids)s AS text[])) ORDER BY id FOR UPDATE
"""


# An event's status, derived from its registered handlers' states (a handler since removed
# from handlers.py keeps its rows but no longer holds the event open): none: ``skipped``; one
# pending or running: ``processing``, due when the last lease has run out; one failed:
# ``failed``, due at its retry; one dead: ``dead``; else ``succeeded``. Due times include the
# grace the worker gets before the sweep steps in. The CTEs below end a statement that changed
# some states (``changed``: their new rows): with the statement's own snapshot, taken after the
# events' lock, they see every other state as it is. ``settled`` holds the events whose status
# or due time changed.
def _settling(changed: str) -> str:
    return f"""
effective AS (
    SELECT s.event_id, s.handler, s.status, s.lease_until, s.next_attempt_at
    FROM event_handlers s
    WHERE s.event_id = ANY(CAST(%(ids)s AS text[])) AND NOT EXISTS (
        SELECT 1 FROM {changed} c WHERE c.event_id = s.event_id AND c.handler = s.handler)
    UNION ALL
    SELECT event_id, handler, status, lease_until, next_attempt_at FROM {changed}
), states AS (
    SELECT f.* FROM effective f
    JOIN events e ON e.id = f.event_id
    JOIN unnest(CAST(%(types)s AS text[]), CAST(%(names)s AS text[])) AS r(type, handler)
        ON r.handler = f.handler AND r.type IN (e.type, '{WILDCARD}')
), derived AS (
    SELECT e.id,
        CASE
            WHEN count(s.event_id) = 0 THEN '{E.SKIPPED}'
            WHEN bool_or(s.status IN ('{H.PENDING}', '{H.RUNNING}')) THEN '{E.PROCESSING}'
            WHEN bool_or(s.status = '{H.FAILED}') THEN '{E.FAILED}'
            WHEN bool_or(s.status = '{H.DEAD}') THEN '{E.DEAD}'
            ELSE '{E.SUCCEEDED}'
        END AS status,
        CASE
            WHEN bool_or(s.status IN ('{H.PENDING}', '{H.RUNNING}'))
                THEN COALESCE(max(s.lease_until), %(lease_until)s) + %(grace)s
            WHEN bool_or(s.status = '{H.FAILED}') THEN min(s.next_attempt_at) + %(grace)s
        END AS due_at
    FROM events e LEFT JOIN states s ON s.event_id = e.id
    WHERE e.id = ANY(CAST(%(ids)s AS text[]))
    GROUP BY e.id
), settled AS (
    UPDATE events e SET status = d.status, due_at = d.due_at, updated_at = %(now)s
    FROM derived d
    WHERE e.id = d.id AND (e.status <> d.status OR e.due_at IS DISTINCT FROM d.due_at)
    RETURNING e.id, e.status
)"""


# The registered handlers of the (locked) events are claimed in one statement: created already
# running if the event has no row for the handler yet, taken if its row is pending, failed and
# due for its retry, or running under a lease that ran out (the attempt of the worker that held
# it is recorded abandoned). Each claim counts an attempt (the token) and starts an attempt row;
# attempt numbers continue across runs (a replay starts a new run). A handler another worker
# holds is returned with the end of its lease, for the caller to come back then; the events
# are settled in the same statement.
_CLAIM = f"""
WITH wanted AS (
    SELECT e.id AS event_id, r.handler, r.max_attempts
    FROM events e
    JOIN unnest(CAST(%(types)s AS text[]), CAST(%(names)s AS text[]),
                CAST(%(max_attempts)s AS int[])) AS r(type, handler, max_attempts)
        ON r.type IN (e.type, '{WILDCARD}')
    WHERE e.id = ANY(CAST(%(ids)s AS text[]))
), created AS (
    INSERT INTO event_handlers
        (event_id, handler, status, attempts, max_attempts, run, lease_until, updated_at)
    SELECT event_id, handler, '{H.RUNNING}', 1, max_attempts, 1, %(lease_until)s, %(now)s
    FROM wanted
    ORDER BY event_id, handler
    ON CONFLICT DO NOTHING
    RETURNING event_id, handler, status, lease_until, next_attempt_at, attempts, run,
              max_attempts
), taken AS (
    UPDATE event_handlers s
    SET status = '{H.RUNNING}', attempts = s.attempts + 1, lease_until = %(lease_until)s,
        next_attempt_at = NULL, updated_at = %(now)s
    FROM wanted w
    WHERE s.event_id = w.event_id AND s.handler = w.handler AND (
        s.status = '{H.PENDING}'
        OR (s.status = '{H.FAILED}' AND s.next_attempt_at <= %(now)s)
        OR (s.status = '{H.RUNNING}' AND s.lease_until <= %(now)s))
    RETURNING s.event_id, s.handler, s.status, s.lease_until, s.next_attempt_at, s.attempts,
              s.run, s.max_attempts
), claimed AS (
    SELECT * FROM created UNION ALL SELECT * FROM taken
), abandoned AS (
    UPDATE handler_attempts a
    SET status = '{A.ABANDONED}', finished_at = %(now)s, error = %(abandoned)s
    FROM taken t
    WHERE a.event_id = t.event_id AND a.handler = t.handler AND a.status = '{A.RUNNING}'
), started AS (
    INSERT INTO handler_attempts (event_id, handler, number, run, status, started_at)
    SELECT c.event_id, c.handler,
           COALESCE((SELECT max(a.number) FROM handler_attempts a
                     WHERE a.event_id = c.event_id AND a.handler = c.handler), 0) + 1,
           c.run, '{A.RUNNING}', %(now)s
    FROM claimed c
    RETURNING id, event_id, handler, number
), {_settling("claimed")}
SELECT 'claim' AS kind, c.event_id, c.handler, c.attempts, c.run, c.max_attempts,
       s.id AS attempt_id, s.number, NULL AS until, NULL AS status
FROM claimed c JOIN started s ON s.event_id = c.event_id AND s.handler = c.handler
UNION ALL
SELECT 'held', h.event_id, h.handler, NULL, NULL, NULL, NULL, NULL, h.lease_until, NULL
FROM event_handlers h JOIN wanted w ON w.event_id = h.event_id AND w.handler = h.handler
WHERE h.status = '{H.RUNNING}' AND h.lease_until > %(now)s
UNION ALL
SELECT 'settled', id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, status FROM settled
ORDER BY 1, 2, 3
"""

# Guarded by the claim tokens: a claim that was taken over matches nothing, and its attempt is
# recorded abandoned (or failed, if it failed). A failure is ``failed`` until the current run's
# attempts reach its budget, then ``dead``.
_FINISH = f"""
WITH outcome AS (
    SELECT * FROM unnest(
        CAST(%(event_ids)s AS text[]), CAST(%(handlers)s AS text[]), CAST(%(runs)s AS int[]),
        CAST(%(tokens)s AS int[]), CAST(%(attempt_ids)s AS bigint[]), CAST(%(errors)s AS text[]),
        CAST(%(tracebacks)s AS text[]), CAST(%(retry_at)s AS timestamptz[]))
        AS o(event_id, handler, run, token, attempt_id, error, traceback, retry_at)
), ours AS (
    UPDATE event_handlers s
    SET status = CASE
            WHEN o.error IS NULL THEN '{H.SUCCEEDED}'
            WHEN s.attempts < s.max_attempts THEN '{H.FAILED}'
            ELSE '{H.DEAD}'
        END,
        next_attempt_at = CASE
            WHEN o.error IS NOT NULL AND s.attempts < s.max_attempts THEN o.retry_at
        END,
        lease_until = NULL, updated_at = %(now)s
    FROM outcome o
    WHERE s.event_id = o.event_id AND s.handler = o.handler AND s.run = o.run
      AND s.attempts = o.token AND s.status = '{H.RUNNING}'
    RETURNING s.event_id, s.handler, s.status, s.lease_until, s.next_attempt_at
), recorded AS (
UPDATE handler_attempts a
SET status = CASE
        WHEN o.error IS NOT NULL THEN '{A.FAILED}'
        WHEN ours.event_id IS NULL THEN '{A.ABANDONED}'
        ELSE '{A.SUCCEEDED}'
    END,
    error = COALESCE(o.error, CASE WHEN ours.event_id IS NULL THEN %(taken_over)s END),
    traceback = o.traceback,
    finished_at = %(now)s
FROM outcome o LEFT JOIN ours ON ours.event_id = o.event_id AND ours.handler = o.handler
WHERE a.id = o.attempt_id
RETURNING a.event_id, a.handler, a.status, ours.status AS state
), {_settling("ours")}
SELECT 'attempt' AS kind, event_id, handler, status, state FROM recorded
UNION ALL
SELECT 'settled', id, NULL, status, NULL FROM settled
"""

_RENEW = f"""
UPDATE event_handlers s SET lease_until = %(lease_until)s
FROM unnest(CAST(%(event_ids)s AS text[]), CAST(%(handlers)s AS text[]), CAST(%(tokens)s AS int[]))
    AS h(event_id, handler, token)
WHERE s.event_id = h.event_id AND s.handler = h.handler AND s.attempts = h.token
  AND s.status = '{H.RUNNING}'
"""


@dataclass(frozen=True)
class Claim:
    """A handler of an event this worker may run: its token proves the claim is still ours."""

    event: Event
    handler: str
    run: int
    token: int  # the run's attempt counter after the claim
    max_attempts: int
    attempt_id: int
    number: int  # the attempt's number, across runs


@dataclass(frozen=True)
class Held:
    """A handler of an event another worker is running, until ``lease_until`` at least."""

    event_id: str
    handler: str
    lease_until: datetime


@dataclass(frozen=True)
class Claimed:
    claims: list[Claim]
    held: list[Held]
    found: set[str]  # the ids that exist
    settled: dict[str, str]  # event id -> its new status, where it changed


@dataclass(frozen=True)
class Ran:
    """What running a claim gave: ``error`` is None for a success."""

    claim: Claim
    error: str | None = None
    traceback: str | None = None
    retry_in: float | None = None  # seconds until the next attempt, if the budget allows
    duration_ms: float | None = None  # how long the handler ran, for the attempt's log line


@dataclass(frozen=True)
class Finished:
    ran: Ran
    attempt: AttemptStatus
    state: HandlerStatus | None  # None: the claim had been taken over


@dataclass(frozen=True)
class FinishedBatch:
    finished: list[Finished]
    settled: dict[str, str]


def claim(
    connection: Connection,
    event_ids: Sequence[str],
    registered: Registered,
    *,
    now: datetime,
    lease: timedelta,
    grace: timedelta,
) -> Claimed:
    """Lock and load the events, claim every registered handler of theirs that is due (new,
    pending, due for a retry, or under a lease that ran out), and settle their statuses."""
    ids = sorted(set(event_ids))
    # Both statements go out before either's rows are read: one round trip in pipeline mode.
    loaded = _run(connection, _LOCK_AND_LOAD, {"ids": ids})
    rows = _run(
        connection,
        _CLAIM,
        {
            "ids": ids,
            "now": now,
            "lease_until": now + lease,
            "grace": grace,
            "abandoned": ABANDONED,
            **registered.params(),
        },
    )
    events = {
        row.id: Event(
            id=row.id,
            type=row.type,
            data=(payload := orjson.loads(row.payload)).get("data", {}),
            payload=payload,
            received_at=row.received_at,
        )
        for row in loaded
    }
    claims: list[Claim] = []
    held: list[Held] = []
    settled: dict[str, str] = {}
    for row in rows:
        if row.kind == "settled":
            settled[row.event_id] = row.status
        elif row.kind == "held":
            held.append(Held(row.event_id, row.handler, row.until))
        else:
            event = events[row.event_id]
            claims.append(
                Claim(
                    event=Event(
                        event.id,
                        event.type,
                        event.data,
                        event.payload,
                        event.received_at,
                        row.number,
                    ),
                    handler=row.handler,
                    run=row.run,
                    token=row.attempts,
                    max_attempts=row.max_attempts,
                    attempt_id=row.attempt_id,
                    number=row.number,
                )
            )
    return Claimed(claims, held, set(events), settled)


def finish(
    connection: Connection,
    outcomes: Sequence[Ran],
    registered: Registered,
    *,
    now: datetime,
    lease: timedelta,
    grace: timedelta,
) -> FinishedBatch:
    """Record the attempts' outcomes under their claims' tokens, and settle the events."""
    if not outcomes:
        return FinishedBatch([], {})
    ids = sorted({o.claim.event.id for o in outcomes})
    _run(connection, _LOCK, {"ids": ids})
    rows = _run(
        connection,
        _FINISH,
        {
            "event_ids": [o.claim.event.id for o in outcomes],
            "handlers": [o.claim.handler for o in outcomes],
            "runs": [o.claim.run for o in outcomes],
            "tokens": [o.claim.token for o in outcomes],
            "attempt_ids": [o.claim.attempt_id for o in outcomes],
            "errors": [o.error for o in outcomes],
            "tracebacks": [o.traceback for o in outcomes],
            "retry_at": [
                None if o.retry_in is None else now + timedelta(seconds=o.retry_in)
                for o in outcomes
            ],
            "taken_over": TAKEN_OVER,
            "ids": ids,
            "now": now,
            "lease_until": now + lease,
            "grace": grace,
            "types": list(registered.types),
            "names": list(registered.names),
        },
    )
    by_key = {(o.claim.event.id, o.claim.handler): o for o in outcomes}
    finished: list[Finished] = []
    settled: dict[str, str] = {}
    for row in rows:
        if row.kind == "settled":
            settled[row.event_id] = row.status
        else:
            finished.append(
                Finished(
                    ran=by_key[(row.event_id, row.handler)],
                    attempt=AttemptStatus(row.status),
                    state=None if row.state is None else HandlerStatus(row.state),
                )
            )
    return FinishedBatch(finished, settled)


def renew_leases(
    connection: Connection, held: Sequence[tuple[str, str, int]], *, lease_until: datetime
) -> None:
    """Extend the leases of these (event id, handler, token) claims, if still ours."""
    if not held:
        return
    _run(connection, _LOCK, {"ids": sorted({event_id for event_id, _, _ in held})})
    _run(
        connection,
        _RENEW,
        {
            "event_ids": [event_id for event_id, _, _ in held],
            "handlers": [handler for _, handler, _ in held],
            "tokens": [token for _, _, token in held],
            "lease_until": lease_until,
        },
    )


# --- replay ------------------------------------------------------------------------------------

_START_RUN = f"""
WITH chosen AS (
    SELECT * FROM unnest(CAST(%(names)s AS text[]), CAST(%(max_attempts)s AS int[]))
        AS c(handler, max_attempts)
), created AS (
    INSERT INTO event_handlers (event_id, handler, status, attempts, max_attempts, run,
                                updated_at)
    SELECT CAST(%(event_id)s AS text), handler, '{H.PENDING}', 0, max_attempts, 1, %(now)s
    FROM chosen
    ON CONFLICT DO NOTHING
    RETURNING handler
), restarted AS (
    UPDATE event_handlers s
    SET status = '{H.PENDING}', attempts = 0, run = s.run + 1, max_attempts = c.max_attempts,
        lease_until = NULL, next_attempt_at = NULL, updated_at = %(now)s
    FROM chosen c
    WHERE s.event_id = %(event_id)s AND s.handler = c.handler AND s.status <> '{H.RUNNING}'
    RETURNING s.handler
)
SELECT handler FROM created UNION ALL SELECT handler FROM restarted
"""

# A replayed event awaits hand-off like a new one: the relays are woken when this commits, and
# the sweep hands it over once due if that fails.
_AWAIT_HANDOFF = f"""
WITH marked AS (
    UPDATE events SET status = '{E.RECEIVED}', updated_at = %(now)s, due_at = %(due_at)s
    WHERE id = %(event_id)s
    RETURNING id
)
SELECT pg_notify('{CHANNEL}', '') FROM marked
"""


def start_run(
    connection: Connection,
    event_id: str,
    handlers: Registered,
    *,
    now: datetime,
    grace: timedelta,
) -> set[str]:
    """Start a new run of these handlers of a locked event: each ``pending`` with a fresh
    attempt budget, attempt numbers carrying on, history kept; the event awaits hand-off.
    Returns the handlers restarted; one still running is not (the caller decides whether to go
    on)."""
    restarted = _run(
        connection,
        _START_RUN,
        {
            "event_id": event_id,
            "names": list(handlers.names),
            "max_attempts": list(handlers.max_attempts),
            "now": now,
        },
    )
    names = {row.handler for row in restarted}
    if names:
        _run(connection, _AWAIT_HANDOFF, {"event_id": event_id, "now": now, "due_at": now + grace})
    return names
