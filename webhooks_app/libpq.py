"""Statements straight through libpq, on a psycopg connection: the hot paths' way to PostgreSQL.

psycopg's ``execute`` adapts every parameter, builds a cursor and, in pipeline mode, flushes
and polls the socket after every statement: about 0.3 ms of Python per transaction of six
small statements on the benchmark's machine, several times what sending them costs. The hot
paths (``pgsql``: the intake's insert, the relay's hand-off, the dispatcher's two transactions
per message) run fixed statements whose parameters they encode themselves, so they go through
psycopg's libpq wrapper (``connection.pgconn``) instead: prepared once per connection, sent,
flushed once, and read back as PostgreSQL's binary values. Errors are psycopg's own classes,
built from the server's error (``psycopg.errors.error_from_result``).

Everything else (the sessions, the admin, migrations) goes through SQLAlchemy and psycopg as
usual; these connections come from SQLAlchemy's pools like the others.
"""

from __future__ import annotations

import select
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

Values = tuple[bytes | None, ...]

TEXT, BINARY = 0, 1


@dataclass(frozen=True)
class Prepared:
    """A statement with ``$1, $2, ...`` parameters, prepared once per connection under
    ``name``. Parameters are sent as text, except those whose (0-based) positions are in
    ``binary``."""

    name: str
    sql: str
    binary: frozenset[int] = frozenset()

    def formats(self, count: int) -> list[int]:
        return [BINARY if i in self.binary else TEXT for i in range(count)]


def refuse_nul(statement: Prepared, params: Sequence[bytes | None]) -> None:
    """libpq reads a text parameter up to its first NUL; psycopg refuses those, so do we."""
    for position, value in enumerate(params):
        if value is not None and position not in statement.binary and b"\x00" in value:
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")


def run_prepared(
    connection: psycopg.Connection[Any],
    prepared: set[str],
    statement: Prepared,
    params: Sequence[bytes | None],
) -> list[Values]:
    """Run ``statement`` in one blocking libpq call (the GIL released once); its rows, as
    text. ``prepared`` names the statements already prepared on this connection; one the
    server no longer has is prepared again, and run again, once."""
    pgconn = connection.pgconn
    refuse_nul(statement, params)
    # None is SQL NULL, as psycopg itself sends it (the stubs only say bytes).
    values: Any = list(params)
    for attempt in (1, 2):
        if statement.name not in prepared:
            check(connection, pgconn.prepare(statement.name.encode(), statement.sql.encode()))
            prepared.add(statement.name)
        result = pgconn.exec_prepared(
            statement.name.encode(), values, statement.formats(len(params))
        )
        error = _error(connection, result)
        if error is None:
            return _rows(result)
        if not _forgotten(error, prepared, statement.name) or attempt == 2:
            raise error
    raise AssertionError("unreachable")


def check(connection: psycopg.Connection[Any], result: pq.abc.PGresult) -> None:
    """Raise the psycopg error a failed ``result`` stands for."""
    error = _error(connection, result)
    if error is not None:
        raise error


def _error(connection: psycopg.Connection[Any], result: pq.abc.PGresult) -> psycopg.Error | None:
    if result.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        return None
    if connection.pgconn.status == pq.ConnStatus.BAD:
        return psycopg.OperationalError(connection.pgconn.error_message.decode(errors="replace"))
    if result.status == pq.ExecStatus.PIPELINE_ABORTED:
        return psycopg.errors.InFailedSqlTransaction("an earlier statement failed")
    return psycopg.errors.error_from_result(result, encoding=connection.info.encoding)


def _forgotten(error: psycopg.Error, prepared: set[str], name: str) -> bool:
    """True if the server no longer has the statement ``name`` we prepared (someone ran
    DEALLOCATE, or a connection pooler moved us to another server connection): it is
    prepared again on its next use."""
    if isinstance(error, psycopg.errors.InvalidSqlStatementName):
        prepared.discard(name)
        return True
    return False


def _rows(result: pq.abc.PGresult) -> list[Values]:
    columns = range(result.nfields)
    return [tuple(result.get_value(row, c) for c in columns) for row in range(result.ntuples)]


class Pending:
    """A statement sent in a ``Pipeline``; ``rows()`` waits for what it returned."""

    def __init__(
        self,
        pipeline: Pipeline,
        statement: str | None = None,
        on_success: Callable[[], None] | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._statement = statement  # the prepared statement's name
        self._on_success = on_success
        self._rows: list[Values] | None = None
        self._error: psycopg.Error | None = None

    @property
    def done(self) -> bool:
        return self._rows is not None or self._error is not None

    def rows(self) -> list[Values]:
        """Its rows, each value in PostgreSQL's binary format (``None`` for NULL); raises the
        statement's error, or the error of an earlier statement that aborted it."""
        if not self.done:
            self._pipeline.read_through(self)
        if self._error is not None:
            raise self._error
        assert self._rows is not None
        return self._rows

    def _settle(self, result: pq.abc.PGresult) -> None:
        pipeline = self._pipeline
        self._error = _error(pipeline.connection, result)
        if self._error is None:
            self._rows = _rows(result)
            if self._on_success is not None:
                self._on_success()
        elif pipeline.first_error is None:
            pipeline.first_error = self._error
            if self._statement is not None:
                _forgotten(self._error, pipeline.prepared, self._statement)
        elif result.status == pq.ExecStatus.PIPELINE_ABORTED:
            self._error = pipeline.first_error  # what aborted it


class Pipeline:
    """One transaction's statements in libpq's pipeline mode, on an autocommit connection.

    ``send`` queues a statement in libpq's buffer, where it waits until a statement's rows
    are wanted (``Pending.rows``) or the transaction ends (``finish``): then everything queued
    goes out with one flush and the caller waits for one answer. Statements
    run in order, each seeing what those before it wrote, and an error aborts the ones after it
    until the end of the transaction, which then rolls back.
    """

    def __init__(self, connection: psycopg.Connection[Any], prepared: set[str]) -> None:
        self.connection = connection
        self._pgconn = connection.pgconn
        self.prepared = prepared  # the statements prepared on this connection
        self._unread: deque[Pending] = deque()  # sent, in order, results not read yet
        self._unsent = False  # statements in libpq's buffer the server was not asked to answer
        self._synced = False  # the end of the pipeline is sent
        self._ended = False  # ... and read
        self.first_error: psycopg.Error | None = None

    @property
    def backend_pid(self) -> int:
        return self._pgconn.backend_pid

    def send(self, statement: Prepared | str, params: Sequence[bytes | None] = ()) -> Pending:
        """Queue ``statement``: a ``Prepared`` one, or SQL text without parameters."""
        pgconn = self._pgconn
        if isinstance(statement, str):
            if params:
                raise TypeError("parameters go with a Prepared statement")
            pgconn.send_query_params(statement.encode(), None, result_format=BINARY)
            return self._queued(Pending(self))
        if statement.name not in self.prepared:
            name = statement.name
            pgconn.send_prepare(name.encode(), statement.sql.encode())
            # Prepared statements outlive transactions; one that failed to prepare does not.
            self._queued(Pending(self, on_success=lambda: self.prepared.add(name)))
        refuse_nul(statement, params)
        values: Any = list(params)
        pgconn.send_query_prepared(
            statement.name.encode(),
            values,
            statement.formats(len(params)),
            result_format=BINARY,
        )
        return self._queued(Pending(self, statement.name))

    def _queued(self, pending: Pending) -> Pending:
        self._unread.append(pending)
        self._unsent = True
        return pending

    def read_through(self, target: Pending) -> None:
        """Read the results of the statements sent so far, up to and including ``target``."""
        if self._unsent and not self._synced:
            self._pgconn.send_flush_request()  # ask the server to answer what it has so far
            self._flush()
        while not target.done:
            self._unread.popleft()._settle(self._next_result())

    def finish(self) -> None:
        """End the pipeline: read every result and the synchronization point after them, then
        raise the first statement's error, if any."""
        if not self._synced:
            self._pgconn.pipeline_sync()
            self._synced = True
            self._flush()
        while self._unread:
            self._unread.popleft()._settle(self._next_result())
        if not self._ended:
            end = self._next_result()
            self._ended = True
            if end.status != pq.ExecStatus.PIPELINE_SYNC:
                raise psycopg.InterfaceError(f"expected the pipeline's end, got {end.status!r}")
        if self.first_error is not None:
            raise self.first_error

    def _flush(self) -> None:
        pgconn = self._pgconn
        while pgconn.flush():  # 1: more to send, the socket is full
            # As libpq asks: read meanwhile, or a server blocked on sending to us never reads.
            if _wait(pgconn.socket, select.POLLOUT | select.POLLIN) & select.POLLIN:
                pgconn.consume_input()
        self._unsent = False

    def _next_result(self) -> pq.abc.PGresult:
        pgconn = self._pgconn
        result = self._get_result()
        if result is None:
            raise psycopg.OperationalError(pgconn.error_message.decode(errors="replace"))
        if result.status != pq.ExecStatus.PIPELINE_SYNC:
            # A statement's results end with a NULL; a synchronization point has none.
            self._get_result()
        return result

    def _get_result(self) -> pq.abc.PGresult | None:
        pgconn = self._pgconn
        while pgconn.is_busy():
            _wait(pgconn.socket, select.POLLIN)
            pgconn.consume_input()  # raises OperationalError if the connection is lost
        return pgconn.get_result()


def _wait(fileno: int, events: int) -> int:
    """Block until the socket is ready for ``events`` (or failed); what it is ready for."""
    poller = select.poll()
    poller.register(fileno, events)
    return sum(ready for _, ready in poller.poll())
