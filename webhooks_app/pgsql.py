"""The hot paths' statements on PostgreSQL, sent through the driver (psycopg).

The intake's insert, the outbox relay's hand-off and the dispatcher's batch path
(``Dispatcher.process_events``: every pending handler of a message's events claimed in one
transaction, the successes recorded in a second) run a few fixed statements per request, cycle
or message, whatever the batch size: ids travel as arrays (``= ANY``, ``unnest``), so the text
never changes and psycopg prepares each statement on the server once. Building, compiling and
running a dozen SQLAlchemy statements per message cost several times the database's own work
(``bench/``, README "Benchmark"). Round trips are counted too: on this kind of machine each
costs the worker and the server about 0.1 ms of CPU apiece, more than most statements' own
work, and under load a wait for a busy core besides. So a claim starts its attempt in the same
statement, a success records its attempt in the same statement, and the dispatcher runs its
transactions in psycopg's pipeline mode (``Database.pipelined_transaction``): a statement is
sent when it is made, and the worker waits only where it reads rows. BEGIN goes out with the
first read; the claims and a write nobody reads (``set_statuses``) go with the COMMIT: a
message takes 4 round trips. Every function here works the same outside pipeline mode, one
round trip per statement.

The statements keep the rules of the portable code in ``store`` and the one-event path: events
are locked first, in id order (``store.lock_events``); a claim is a conditional write that only
one worker can make; a success is recorded only under the claim's token. SQLite, one writer at
a time, runs the portable code only.

Each function but ``insert_event`` (autocommit) takes the psycopg connection of the caller's
transaction; the caller commits. Each sends all its statements before it reads any result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg

from webhooks_app.extensions import Prepared
from webhooks_app.store import NewEvent

Row = tuple[Any, ...]
# Runs a prepared statement in autocommit mode; returns its rows (Database.execute_autocommit).
Execute = Callable[[Prepared, Sequence[bytes | None]], list[tuple[bytes | None, ...]]]

# Run in autocommit mode: the statement is its own transaction, durable (synchronous_commit
# stays on) when it returns. The payload goes in as the verified body's own text, cast to JSONB
# by the server; the body itself as binary.
_INSERT_EVENT = Prepared(
    name="webhooks_insert_event",
    sql="""
INSERT INTO events (id, type, status, payload, raw_body, headers, data_id,
                    webhook_timestamp, received_at, updated_at, due_at)
VALUES ($1, $2, 'received', $3::jsonb, $4, $5::jsonb, $6, $7, $8, $8, $9)
ON CONFLICT (id) DO NOTHING
RETURNING id
""",
    binary=frozenset({3}),
)

_TAKE_RECEIVED = """
UPDATE events SET status = 'queued', updated_at = %(now)s, due_at = %(due_at)s
WHERE id IN (
    SELECT id FROM events WHERE status = 'received'
    ORDER BY received_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""

_LOCK_EVENTS = """
SELECT id, type, received_at FROM events
WHERE id = ANY(%(ids)s::text[])
ORDER BY id
FOR UPDATE
"""

_LOCK_AND_LOAD_EVENTS = """
SELECT id, type, received_at, payload::text FROM events
WHERE id = ANY(%(ids)s::text[])
ORDER BY id
FOR UPDATE
"""

# Read after the lock, in a statement of its own: a statement that waited for the lock would
# still see the states of before the wait.
_READ_STATES = """
SELECT event_id, handler, status, lease_until, next_attempt_at FROM event_handlers
WHERE event_id = ANY(%(ids)s::text[])
"""

# Each claim starts its attempt in the same statement. Attempt numbers continue across runs
# (a replay starts a new run).
_START_ATTEMPTS = """
, started AS (
    INSERT INTO handler_attempts (event_id, handler, number, run, status, started_at)
    SELECT c.event_id, c.handler,
           COALESCE((SELECT max(a.number) FROM handler_attempts a
                     WHERE a.event_id = c.event_id AND a.handler = c.handler), 0) + 1,
           c.run, 'running', %(now)s
    FROM claimed c
    RETURNING id, event_id, handler, number
)
SELECT c.event_id, c.handler, c.attempts, c.run, c.max_attempts, s.id, s.number
FROM claimed c JOIN started s ON s.event_id = c.event_id AND s.handler = c.handler
"""

# A handler seen for the first time is created already claimed: one write instead of two.
_CLAIMED_NEW = """
WITH claimed AS (
    INSERT INTO event_handlers
        (event_id, handler, status, attempts, max_attempts, run, lease_until, updated_at)
    SELECT b.event_id, b.handler, 'running', 1, b.max_attempts, 1, %(lease_until)s, %(now)s
    FROM unnest(%(event_ids)s::text[], %(handlers)s::text[], %(max_attempts)s::int[])
        AS b(event_id, handler, max_attempts)
    ORDER BY b.event_id, b.handler
    ON CONFLICT DO NOTHING
    RETURNING event_id, handler, attempts, run, max_attempts
)"""
_CLAIM_NEW = _CLAIMED_NEW + _START_ATTEMPTS

# Of two racing workers, the UPDATE of one matches a pending row: the claim.
_CLAIMED_PENDING = """
WITH claimed AS (
    UPDATE event_handlers s
    SET status = 'running', attempts = s.attempts + 1, lease_until = %(lease_until)s,
        next_attempt_at = NULL, updated_at = %(now)s
    FROM unnest(%(event_ids)s::text[], %(handlers)s::text[]) AS b(event_id, handler)
    WHERE s.event_id = b.event_id AND s.handler = b.handler AND s.status = 'pending'
    RETURNING s.event_id, s.handler, s.attempts, s.run, s.max_attempts
)"""
_CLAIM_PENDING = _CLAIMED_PENDING + _START_ATTEMPTS

# Guarded by the claim tokens: a claim whose lease ran out and was taken over matches nothing,
# and its attempt is recorded abandoned; in the same statement.
_FINISH_SUCCEEDED = """
WITH ours AS (
    UPDATE event_handlers s
    SET status = 'succeeded', lease_until = NULL, next_attempt_at = NULL, updated_at = %(now)s
    FROM unnest(%(event_ids)s::text[], %(handlers)s::text[], %(runs)s::int[], %(tokens)s::int[])
        AS b(event_id, handler, run, token)
    WHERE s.event_id = b.event_id AND s.handler = b.handler AND s.run = b.run
      AND s.attempts = b.token AND s.status = 'running'
    RETURNING s.event_id, s.handler
), recorded AS (
    UPDATE handler_attempts a
    SET status = CASE WHEN o.event_id IS NULL THEN 'abandoned' ELSE 'succeeded' END,
        error = CASE WHEN o.event_id IS NULL THEN %(abandoned_error)s END,
        finished_at = %(now)s
    FROM unnest(%(attempt_ids)s::bigint[], %(event_ids)s::text[], %(handlers)s::text[])
        AS d(id, event_id, handler)
    LEFT JOIN ours o ON o.event_id = d.event_id AND o.handler = d.handler
    WHERE a.id = d.id
)
SELECT event_id, handler FROM ours
"""

_SET_STATUSES = """
UPDATE events e
SET status = b.status, due_at = b.due_at, updated_at = %(now)s
FROM unnest(%(ids)s::text[], %(statuses)s::text[], %(due_ats)s::timestamptz[])
    AS b(id, status, due_at)
WHERE e.id = b.id
"""


def insert_event(execute: Execute, event: NewEvent) -> bool:
    """Store the event unless its id is already stored; True if this stored it. ``execute``
    runs a prepared statement in autocommit mode (``Database.execute_autocommit``): the row is
    durable when this returns. The unique key decides between racing duplicates."""
    rows = execute(
        _INSERT_EVENT,
        [
            event.id.encode(),
            event.type.encode(),
            event.raw_body,  # valid UTF-8 JSON: its own text
            event.raw_body,
            orjson.dumps(event.headers),
            None if event.data_id is None else event.data_id.encode(),
            str(event.webhook_timestamp).encode(),
            event.received_at.isoformat().encode(),
            event.due_at.isoformat().encode(),
        ],
    )
    return bool(rows)


@dataclass(frozen=True)
class LockedEvent:
    id: str
    type: str
    received_at: datetime
    payload: dict[str, Any] | None  # when loaded


@dataclass(frozen=True)
class Claimed:
    event_id: str
    handler: str
    token: int  # the attempt counter after the claim
    run: int
    max_attempts: int
    attempt_id: int = 0
    number: int = 0


@dataclass(frozen=True)
class State:
    """One ``event_handlers`` row, as much of it as an event's status is derived from."""

    event_id: str
    handler: str
    status: str
    lease_until: datetime | None
    next_attempt_at: datetime | None


def take_received(connection: Any, *, limit: int, now: datetime, due_at: datetime) -> list[str]:
    """``store.take_received``: mark up to ``limit`` received events queued, return their ids."""
    rows = _send(connection, _TAKE_RECEIVED, {"limit": limit, "now": now, "due_at": due_at})
    return [event_id for (event_id,) in rows.fetchall()]


def lock_and_load(connection: Any, ids: Sequence[str]) -> tuple[list[LockedEvent], list[State]]:
    """Lock the events that exist among ``ids``, in id order (see ``store.lock_events``), and
    load them with their handler states, read after the lock."""
    locked = _send(connection, _LOCK_AND_LOAD_EVENTS, {"ids": sorted(ids)})
    states = _send(connection, _READ_STATES, {"ids": list(ids)})
    return (
        [LockedEvent(i, t, at, orjson.loads(p)) for i, t, at, p in locked.fetchall()],
        [State(*row) for row in states.fetchall()],
    )


class SentClaims:
    """Claims sent to the server; ``claimed()`` reads what they claimed. In pipeline mode,
    read them after the transaction: the statements that follow (the statuses, the COMMIT)
    then go with them, in the same round trip."""

    def __init__(self, cursors: Sequence[psycopg.Cursor[Row]]) -> None:
        self._cursors = cursors

    def claimed(self) -> list[Claimed]:
        return [Claimed(*row) for cursor in self._cursors for row in cursor.fetchall()]


def claim(
    connection: Any,
    new: Sequence[tuple[str, str, int]],
    pending: Sequence[tuple[str, str]],
    *,
    now: datetime,
    lease_until: datetime,
) -> SentClaims:
    """Claim handlers: ``new`` (event id, handler, max attempts) have no state row yet and are
    created running; ``pending`` ones have a row and are taken if it is still ``pending``.
    A pair another worker holds is simply not returned."""
    times = {"now": now, "lease_until": lease_until}
    sent: list[psycopg.Cursor[Row]] = []
    if new:
        sent.append(
            _send(
                connection,
                _CLAIM_NEW,
                {**times, **_columns(("event_ids", "handlers", "max_attempts"), new)},
            )
        )
    if pending:
        sent.append(
            _send(
                connection,
                _CLAIM_PENDING,
                {**times, **_columns(("event_ids", "handlers"), pending)},
            )
        )
    return SentClaims(sent)


def lock_and_record_successes(
    connection: Any, done: Sequence[Claimed], *, now: datetime, abandoned_error: str
) -> tuple[list[LockedEvent], set[tuple[str, str]], list[State]]:
    """Record these successful attempts: lock their events, record the attempts, and read the
    events' handler states after it. Returns the locked events, the (event, handler) pairs
    still ours, and the states. An attempt whose claim was taken over is recorded
    ``abandoned`` with ``abandoned_error``."""
    event_ids = sorted({c.event_id for c in done})
    locked = _send(connection, _LOCK_EVENTS, {"ids": event_ids})
    ours = _send(
        connection,
        _FINISH_SUCCEEDED,
        {
            "now": now,
            "abandoned_error": abandoned_error,
            **_columns(
                ("event_ids", "handlers", "runs", "tokens", "attempt_ids"),
                [(c.event_id, c.handler, c.run, c.token, c.attempt_id) for c in done],
            ),
        },
    )
    states = _send(connection, _READ_STATES, {"ids": event_ids})
    return (
        [LockedEvent(i, t, at, None) for i, t, at in locked.fetchall()],
        {(event_id, handler) for event_id, handler in ours.fetchall()},
        [State(*row) for row in states.fetchall()],
    )


def set_statuses(
    connection: Any, statuses: Sequence[tuple[str, str, datetime | None]], *, now: datetime
) -> None:
    """Write events' (id, status, due_at), derived by the caller from the locked states. Nothing
    is read back: in pipeline mode the write goes with the caller's COMMIT."""
    if statuses:
        _send(
            connection,
            _SET_STATUSES,
            {"now": now, **_columns(("ids", "statuses", "due_ats"), statuses)},
        )


def _columns(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, list[Any]]:
    """Rows as one array per column: the parameters of an ``unnest``."""
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _send(connection: Any, sql: str, params: dict[str, Any]) -> psycopg.Cursor[Row]:
    """Execute a statement, prepared on the server; its rows are read from the cursor. In
    pipeline mode this only sends it: reading the rows waits for them."""
    cursor: psycopg.Cursor[Row] = connection.execute(sql, params, prepare=True)
    return cursor
