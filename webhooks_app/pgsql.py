"""The hot paths' statements on PostgreSQL, sent straight through libpq.

The intake's insert, the outbox relay's hand-off and the dispatcher's batch path
(``Dispatcher.process_events``: every pending handler of a message's events claimed in one
transaction, the successes recorded in a second) run a few fixed statements per request, cycle
or message, whatever the batch size: ids travel as arrays (``= ANY``, ``unnest``), so the text
never changes and each statement is prepared on the server once. They go straight through
libpq (``libpq``): their parameters encoded here, their values read back in PostgreSQL's binary
format. Building, compiling and running a dozen SQLAlchemy statements per message cost several
times the database's own work, and psycopg's own adaptation and cursors several times what
sending them costs (``bench/``, README "Benchmark"). Round trips are counted too: on this kind
of machine each costs the worker and the server about 0.1 ms of CPU apiece, more than most
statements' own work, and under load a wait for a busy core besides. So the dispatcher's
transactions run in libpq's pipeline mode (``Database.pipelined_transaction``), and each is one
round trip: its statements are sent together with BEGIN and COMMIT, and none needs the rows of
another. The claim finds the handlers to claim itself, from the worker's registry passed as
arrays; it starts their attempts and marks their events ``processing`` in the same statement;
a success records its attempt, and the event's ``succeeded`` when it was the last handler, in
the same statement too. A message takes 2 round trips.

The statements keep the rules of the portable code in ``store`` and the one-event path: events
are locked first, in id order (``store.lock_events``); a claim is a conditional write that only
one worker can make; a success is recorded only under the claim's token. Whatever these
statements leave undecided (a handler held elsewhere, finished, or waiting for a retry; a
failure) the one-event path decides, and it writes the event's status. SQLite, one writer at a
time, runs the portable code only.

Each function but ``insert_event`` (autocommit) takes the ``libpq.Pipeline`` of the caller's
transaction; the caller commits. Those that return ``Sent`` only send their statement: its rows
are read with ``Sent.result()``, after the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import orjson

from webhooks_app.libpq import Pending, Pipeline, Prepared, Values
from webhooks_app.store import NewEvent

T = TypeVar("T")
# Runs a prepared statement in autocommit mode; returns its rows (Database.execute_autocommit).
Execute = Callable[[Prepared, Sequence[bytes | None]], list[Values]]
# Opens a transaction in libpq's pipeline mode, committed on exit (Database.pipelined_transaction).
PipelinedTransaction = Callable[[], AbstractContextManager[Pipeline]]

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

_TAKE_RECEIVED = Prepared(
    name="webhooks_take_received",
    sql="""
UPDATE events SET status = 'queued', updated_at = $2::timestamptz, due_at = $3::timestamptz
WHERE id IN (
    SELECT id FROM events WHERE status = 'received'
    ORDER BY received_at LIMIT $1::int
    FOR UPDATE SKIP LOCKED
)
RETURNING id
""",
)

_LOCK_EVENTS = Prepared(
    name="webhooks_lock_events",
    sql="""
SELECT id FROM events
WHERE id = ANY($1::text[])
ORDER BY id
FOR UPDATE
""",
)

_LOCK_AND_LOAD_EVENTS = Prepared(
    name="webhooks_lock_and_load_events",
    sql="""
SELECT id, type, received_at, payload::text FROM events
WHERE id = ANY($1::text[])
ORDER BY id
FOR UPDATE
""",
)

# The handlers the worker's registry has for each event's type (``"*"``: every type, as in
# ``Registry.for_type``) are claimed in one statement: created already running if the event
# has no row for the handler (one write instead of two), taken if its row is ``pending`` (of
# two racing workers, the UPDATE of one matches it). A handler in any other state is left
# alone, and its event takes the one-event path. The two never meet: the UPDATE does not see
# the rows the INSERT makes. It follows the lock as a statement of its own: a statement that
# waited for the lock would still see the rows of before the wait. Each claim starts its
# attempt, and each event with a claim is marked ``processing``, due for the sweep when the
# lease has run out. Attempt numbers continue across runs (a replay starts a new run).
# Parameters: $1 ids, $2 now, $3 lease_until, $4 due_at, $5-$7 the registry (types,
# handlers, max attempts).
_CLAIM = Prepared(
    name="webhooks_claim",
    sql="""
WITH wanted AS (
    SELECT e.id AS event_id, r.handler, r.max_attempts
    FROM events e
    JOIN unnest($5::text[], $6::text[], $7::int[])
        AS r(type, handler, max_attempts) ON r.type IN (e.type, '*')
    WHERE e.id = ANY($1::text[])
), created AS (
    INSERT INTO event_handlers
        (event_id, handler, status, attempts, max_attempts, run, lease_until, updated_at)
    SELECT w.event_id, w.handler, 'running', 1, w.max_attempts, 1, $3::timestamptz,
           $2::timestamptz
    FROM wanted w
    ORDER BY w.event_id, w.handler
    ON CONFLICT DO NOTHING
    RETURNING event_id, handler, attempts, run, max_attempts
), taken AS (
    UPDATE event_handlers s
    SET status = 'running', attempts = s.attempts + 1, lease_until = $3::timestamptz,
        next_attempt_at = NULL, updated_at = $2::timestamptz
    FROM wanted w
    WHERE s.event_id = w.event_id AND s.handler = w.handler AND s.status = 'pending'
    RETURNING s.event_id, s.handler, s.attempts, s.run, s.max_attempts
), claimed AS (
    SELECT * FROM created UNION ALL SELECT * FROM taken
), marked AS (
    UPDATE events e
    SET status = 'processing', due_at = $4::timestamptz, updated_at = $2::timestamptz
    WHERE e.id IN (SELECT event_id FROM claimed)
), started AS (
    INSERT INTO handler_attempts (event_id, handler, number, run, status, started_at)
    SELECT c.event_id, c.handler,
           COALESCE((SELECT max(a.number) FROM handler_attempts a
                     WHERE a.event_id = c.event_id AND a.handler = c.handler), 0) + 1,
           c.run, 'running', $2::timestamptz
    FROM claimed c
    RETURNING id, event_id, handler, number
)
SELECT c.event_id, c.handler, c.attempts, c.run, c.max_attempts, s.id, s.number
FROM claimed c JOIN started s ON s.event_id = c.event_id AND s.handler = c.handler
""",
)

# An event of a type no handler is registered for is finished: ``skipped``.
_SKIP_UNHANDLED = Prepared(
    name="webhooks_skip_unhandled",
    sql="""
UPDATE events SET status = 'skipped', due_at = NULL, updated_at = $3::timestamptz
WHERE id = ANY($1::text[]) AND type <> ALL($2::text[]) AND status <> 'skipped'
RETURNING id
""",
)

# Guarded by the claim tokens: a claim whose lease ran out and was taken over matches nothing,
# and its attempt is recorded abandoned; in the same statement. An event all of whose
# registered handlers (``whole_ids``, with how many) succeeded here, all still ours, is
# ``succeeded``; any other event's status is written by whoever settles its other handlers
# (a failure's record, the one-event path, the worker that took a claim over).
# Parameters: $1 now, $2 the abandoned attempts' error, $3-$7 the successes (event ids,
# handlers, runs, tokens, attempt ids), $8-$9 whole_ids and their counts.
_FINISH_SUCCEEDED = Prepared(
    name="webhooks_finish_succeeded",
    sql="""
WITH ours AS (
    UPDATE event_handlers s
    SET status = 'succeeded', lease_until = NULL, next_attempt_at = NULL,
        updated_at = $1::timestamptz
    FROM unnest($3::text[], $4::text[], $5::int[], $6::int[])
        AS b(event_id, handler, run, token)
    WHERE s.event_id = b.event_id AND s.handler = b.handler AND s.run = b.run
      AND s.attempts = b.token AND s.status = 'running'
    RETURNING s.event_id, s.handler
), recorded AS (
    UPDATE handler_attempts a
    SET status = CASE WHEN o.event_id IS NULL THEN 'abandoned' ELSE 'succeeded' END,
        error = CASE WHEN o.event_id IS NULL THEN $2::text END,
        finished_at = $1::timestamptz
    FROM unnest($7::bigint[], $3::text[], $4::text[]) AS d(id, event_id, handler)
    LEFT JOIN ours o ON o.event_id = d.event_id AND o.handler = d.handler
    WHERE a.id = d.id
), finished AS (
    UPDATE events e
    SET status = 'succeeded', due_at = NULL, updated_at = $1::timestamptz
    FROM (
        SELECT o.event_id
        FROM ours o
        JOIN unnest($8::text[], $9::int[]) AS w(event_id, handlers)
            ON w.event_id = o.event_id
        GROUP BY o.event_id, w.handlers
        HAVING count(*) = w.handlers
    ) f
    WHERE e.id = f.event_id
    RETURNING e.id
)
SELECT o.event_id, o.handler, f.id IS NOT NULL
FROM ours o LEFT JOIN finished f ON f.id = o.event_id
""",
)


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
            _timestamp(event.received_at),
            _timestamp(event.due_at),
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
    """A statement sent to the server; ``result()`` reads what it returned. Read it after the
    transaction: the statements that follow it, and the COMMIT, then go in the same round
    trip."""

    def __init__(self, pending: Pending, read: Callable[[list[Values]], T]) -> None:
        self._pending = pending
        self._read = read

    def result(self) -> T:
        return self._read(self._pending.rows())


def take_received(pipeline: Pipeline, *, limit: int, now: datetime, due_at: datetime) -> list[str]:
    """``store.take_received``: mark up to ``limit`` received events queued, return their ids."""
    pending = pipeline.send(
        _TAKE_RECEIVED, [str(limit).encode(), _timestamp(now), _timestamp(due_at)]
    )
    return [_text(event_id) for (event_id,) in pending.rows()]


def lock_and_load(pipeline: Pipeline, ids: Sequence[str]) -> Sent[list[LockedEvent]]:
    """Lock the events that exist among ``ids``, in id order (see ``store.lock_events``), and
    load them."""
    return Sent(
        pipeline.send(_LOCK_AND_LOAD_EVENTS, [_text_array(sorted(ids))]),
        lambda rows: [
            LockedEvent(_text(i), _text(t), _timestamptz(at), orjson.loads(_value(p)))
            for i, t, at, p in rows
        ],
    )


def claim(
    pipeline: Pipeline,
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
        pipeline.send(
            _CLAIM,
            [
                _text_array(ids),
                _timestamp(now),
                _timestamp(lease_until),
                _timestamp(due_at),
                _text_array(h.event_type for h in registered),
                _text_array(h.name for h in registered),
                _int_array(h.max_attempts for h in registered),
            ],
        ),
        lambda rows: [
            Claimed(
                _text(event_id),
                _text(handler),
                _int(token),
                _int(run),
                _int(max_attempts),
                _int(attempt_id),
                _int(number),
            )
            for event_id, handler, token, run, max_attempts, attempt_id, number in rows
        ],
    )


def skip_unhandled(
    pipeline: Pipeline, ids: Sequence[str], handled_types: Sequence[str], *, now: datetime
) -> Sent[list[str]]:
    """Mark ``skipped`` those of these (locked) events whose type is not among
    ``handled_types``; returns their ids (not those skipped before)."""
    return Sent(
        pipeline.send(
            _SKIP_UNHANDLED, [_text_array(ids), _text_array(handled_types), _timestamp(now)]
        ),
        lambda rows: [_text(event_id) for (event_id,) in rows],
    )


def record_successes(
    pipeline: Pipeline,
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
    pipeline.send(_LOCK_EVENTS, [_text_array(sorted({c.event_id for c in done}))])
    return Sent(
        pipeline.send(
            _FINISH_SUCCEEDED,
            [
                _timestamp(now),
                abandoned_error.encode(),
                _text_array(c.event_id for c in done),
                _text_array(c.handler for c in done),
                _int_array(c.run for c in done),
                _int_array(c.token for c in done),
                _int_array(c.attempt_id for c in done),
                _text_array(whole),
                _int_array(whole.values()),
            ],
        ),
        lambda rows: Successes(
            ours={(_text(event_id), _text(handler)) for event_id, handler, _ in rows},
            finished={_text(event_id) for event_id, _, finished in rows if _bool(finished)},
        ),
    )


# --- parameters, as PostgreSQL's text input; values, as its binary output -------------------


def _text_array(values: Iterable[str]) -> bytes:
    """A ``text[]`` literal: every element quoted, so any text (commas, braces, quotes,
    backslashes, the word NULL) comes back as it was."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return ("{" + ",".join(quoted) + "}").encode()


def _int_array(values: Iterable[int]) -> bytes:
    return ("{" + ",".join(str(int(v)) for v in values) + "}").encode()


def _timestamp(moment: datetime) -> bytes:
    if moment.tzinfo is None:
        raise ValueError("timestamps sent to PostgreSQL must be timezone-aware")
    return moment.isoformat().encode()


_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _value(value: bytes | None) -> bytes:
    if value is None:
        raise ValueError("unexpected NULL")
    return value


def _text(value: bytes | None) -> str:
    return _value(value).decode()


def _int(value: bytes | None) -> int:  # int2, int4, int8: big-endian two's complement
    return int.from_bytes(_value(value), "big", signed=True)


def _bool(value: bytes | None) -> bool:
    return _value(value) == b"\x01"


def _timestamptz(value: bytes | None) -> datetime:  # microseconds since 2000-01-01 UTC
    return _POSTGRES_EPOCH + timedelta(microseconds=_int(value))
