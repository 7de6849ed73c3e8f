"""The hot paths' statements on PostgreSQL, sent through the driver (psycopg).

The intake's insert, the outbox relay's hand-off and the dispatcher's batch path
(``Dispatcher.process_events``: every pending handler of a message's events claimed in one
transaction, the successes recorded in a second) run a few fixed statements per request, cycle
or message, whatever the batch size: ids travel as arrays (``= ANY``, ``unnest``), so the text
never changes and psycopg prepares each statement on the server once. Building, compiling and
running a dozen SQLAlchemy statements per message cost several times the database's own work
(``bench/``, README "Benchmark"). Round trips are counted too: on this kind of machine each
costs the worker and the server about 0.1 ms of CPU apiece, more than most statements' own
work, and under load a wait for a busy core besides. So the dispatcher's transactions run in
psycopg's pipeline mode (``Database.pipelined_transaction``), and each is one round trip: its
statements are sent together with BEGIN and COMMIT, and none needs the rows of another. The
claim finds the handlers to claim itself, from the worker's registry passed as arrays; it
starts their attempts and marks their events ``processing`` in the same statement; a success
records its attempt, and the event's ``succeeded`` when it was the last handler, in the same
statement too. A message takes 2 round trips. Every function here works the same outside
pipeline mode, one round trip per statement.

The statements keep the rules of the portable code in ``store`` and the one-event path: events
are locked first, in id order (``store.lock_events``); a claim is a conditional write that only
one worker can make; a success is recorded only under the claim's token. Whatever these
statements leave undecided (a handler held elsewhere, finished, or waiting for a retry; a
failure) the one-event path decides, and it writes the event's status. SQLite, one writer at a
time, runs the portable code only.

Each function but ``insert_event`` (autocommit) takes the psycopg connection of the caller's
transaction; the caller commits. Those that return ``Sent`` only send their statement: its rows
are read with ``Sent.result()``, after the transaction in pipeline mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson
import psycopg

from webhooks_app.extensions import Prepared
from webhooks_app.store import NewEvent

Row = tuple[Any, ...]
T = TypeVar("T")
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
SELECT id FROM events
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

# The handlers the worker's registry has for each event's type (``"*"``: every type, as in
# ``Registry.for_type``) are claimed in one statement: created already running if the event
# has no row for the handler (one write instead of two), taken if its row is ``pending`` (of
# two racing workers, the UPDATE of one matches it). A handler in any other state is left
# alone, and its event takes the one-event path. The two never meet: the UPDATE does not see
# the rows the INSERT makes. It follows the lock as a statement of its own: a statement that
# waited for the lock would still see the rows of before the wait. Each claim starts its
# attempt, and each event with a claim is marked ``processing``, due for the sweep when the
# lease has run out. Attempt numbers continue across runs (a replay starts a new run).
_CLAIM = """
WITH wanted AS (
    SELECT e.id AS event_id, r.handler, r.max_attempts
    FROM events e
    JOIN unnest(%(types)s::text[], %(handlers)s::text[], %(max_attempts)s::int[])
        AS r(type, handler, max_attempts) ON r.type IN (e.type, '*')
    WHERE e.id = ANY(%(ids)s::text[])
), created AS (
    INSERT INTO event_handlers
        (event_id, handler, status, attempts, max_attempts, run, lease_until, updated_at)
    SELECT w.event_id, w.handler, 'running', 1, w.max_attempts, 1, %(lease_until)s, %(now)s
    FROM wanted w
    ORDER BY w.event_id, w.handler
    ON CONFLICT DO NOTHING
    RETURNING event_id, handler, attempts, run, max_attempts
), taken AS (
    UPDATE event_handlers s
    SET status = 'running', attempts = s.attempts + 1, lease_until = %(lease_until)s,
        next_attempt_at = NULL, updated_at = %(now)s
    FROM wanted w
    WHERE s.event_id = w.event_id AND s.handler = w.handler AND s.status = 'pending'
    RETURNING s.event_id, s.handler, s.attempts, s.run, s.max_attempts
), claimed AS (
    SELECT * FROM created UNION ALL SELECT * FROM taken
), marked AS (
    UPDATE events e
    SET status = 'processing', due_at = %(due_at)s, updated_at = %(now)s
    WHERE e.id IN (SELECT event_id FROM claimed)
), started AS (
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

# An event of a type no handler is registered for is finished: ``skipped``.
_SKIP_UNHANDLED = """
UPDATE events SET status = 'skipped', due_at = NULL, updated_at = %(now)s
WHERE id = ANY(%(ids)s::text[]) AND type <> ALL(%(types)s::text[]) AND status <> 'skipped'
RETURNING id
"""

# Guarded by the claim tokens: a claim whose lease ran out and was taken over matches nothing,
# and its attempt is recorded abandoned; in the same statement. An event all of whose
# registered handlers (``whole_ids``, with how many) succeeded here, all still ours, is
# ``succeeded``; any other event's status is written by whoever settles its other handlers
# (a failure's record, the one-event path, the worker that took a claim over).
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
), finished AS (
    UPDATE events e
    SET status = 'succeeded', due_at = NULL, updated_at = %(now)s
    FROM (
        SELECT o.event_id
        FROM ours o
        JOIN unnest(%(whole_ids)s::text[], %(whole_counts)s::int[]) AS w(event_id, handlers)
            ON w.event_id = o.event_id
        GROUP BY o.event_id, w.handlers
        HAVING count(*) = w.handlers
    ) f
    WHERE e.id = f.event_id
    RETURNING e.id
)
SELECT o.event_id, o.handler, f.id IS NOT NULL
FROM ours o LEFT JOIN finished f ON f.id = o.event_id
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
    payload: dict[str, Any]


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
class RegisteredHandler:
    """A row of the worker's handler registry, as the claim statement matches it."""

    event_type: str  # or "*"
    name: str
    max_attempts: int


@dataclass(frozen=True)
class Successes:
    ours: set[tuple[str, str]]  # (event id, handler) recorded succeeded; the rest abandoned
    finished: set[str]  # events marked succeeded


class Sent(Generic[T]):
    """A statement sent to the server; ``result()`` reads what it returned. In pipeline mode,
    read it after the transaction: the statements that follow it, and the COMMIT, then go in
    the same round trip."""

    def __init__(self, cursor: psycopg.Cursor[Row], read: Callable[[list[Row]], T]) -> None:
        self._cursor = cursor
        self._read = read

    def result(self) -> T:
        return self._read(self._cursor.fetchall())


def take_received(connection: Any, *, limit: int, now: datetime, due_at: datetime) -> list[str]:
    """``store.take_received``: mark up to ``limit`` received events queued, return their ids."""
    rows = _send(connection, _TAKE_RECEIVED, {"limit": limit, "now": now, "due_at": due_at})
    return [event_id for (event_id,) in rows.fetchall()]


def lock_and_load(connection: Any, ids: Sequence[str]) -> Sent[list[LockedEvent]]:
    """Lock the events that exist among ``ids``, in id order (see ``store.lock_events``), and
    load them."""
    return Sent(
        _send(connection, _LOCK_AND_LOAD_EVENTS, {"ids": sorted(ids)}),
        lambda rows: [LockedEvent(i, t, at, orjson.loads(p)) for i, t, at, p in rows],
    )


def claim(
    connection: Any,
    ids: Sequence[str],
    registered: Sequence[RegisteredHandler],
    *,
    now: datetime,
    lease_until: datetime,
    due_at: datetime,
) -> Sent[list[Claimed]]:
    """Claim the ``registered`` handlers of these (locked) events that have no state yet or a
    ``pending`` one, mark the events they belong to ``processing`` (due for the sweep at
    ``due_at``), and start an attempt of each. A pair another worker holds, or one already
    finished, is simply not returned."""
    return Sent(
        _send(
            connection,
            _CLAIM,
            {
                "ids": list(ids),
                "now": now,
                "lease_until": lease_until,
                "due_at": due_at,
                **_columns(
                    ("types", "handlers", "max_attempts"),
                    [(h.event_type, h.name, h.max_attempts) for h in registered],
                ),
            },
        ),
        lambda rows: [Claimed(*row) for row in rows],
    )


def skip_unhandled(
    connection: Any, ids: Sequence[str], handled_types: Sequence[str], *, now: datetime
) -> Sent[list[str]]:
    """Mark ``skipped`` those of these (locked) events whose type is not among
    ``handled_types``; returns their ids (not those skipped before)."""
    return Sent(
        _send(
            connection,
            _SKIP_UNHANDLED,
            {"ids": list(ids), "types": list(handled_types), "now": now},
        ),
        lambda rows: [event_id for (event_id,) in rows],
    )


def record_successes(
    connection: Any,
    done: Sequence[Claimed],
    whole: Mapping[str, int],
    *,
    now: datetime,
    abandoned_error: str,
) -> Sent[Successes]:
    """Record these successful attempts under their claims' tokens, their events locked first.
    ``whole`` maps the events all of whose registered handlers are among ``done`` to how many
    they are: those whose claims were all still ours are marked ``succeeded``. An attempt whose
    claim was taken over is recorded ``abandoned`` with ``abandoned_error``."""
    _send(connection, _LOCK_EVENTS, {"ids": sorted({c.event_id for c in done})})
    return Sent(
        _send(
            connection,
            _FINISH_SUCCEEDED,
            {
                "now": now,
                "abandoned_error": abandoned_error,
                **_columns(
                    ("event_ids", "handlers", "runs", "tokens", "attempt_ids"),
                    [(c.event_id, c.handler, c.run, c.token, c.attempt_id) for c in done],
                ),
                **_columns(("whole_ids", "whole_counts"), list(whole.items())),
            },
        ),
        lambda rows: Successes(
            ours={(event_id, handler) for event_id, handler, _ in rows},
            finished={event_id for event_id, _, finished in rows if finished},
        ),
    )


def _columns(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, list[Any]]:
    """Rows as one array per column: the parameters of an ``unnest``."""
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _send(connection: Any, sql: str, params: dict[str, Any]) -> psycopg.Cursor[Row]:
    """Execute a statement, prepared on the server; its rows are read from the cursor. In
    pipeline mode this only sends it: reading the rows waits for them."""
    cursor: psycopg.Cursor[Row] = connection.execute(sql, params, prepare=True)
    return cursor
