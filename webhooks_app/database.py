"""The database handle: engines, sessions, and the hot paths' libpq calls, built from settings.

``Database.transaction()`` is a unit of work's one commit point; domain functions only flush.
On PostgreSQL the intake's insert runs as one prepared statement in autocommit mode
(``execute_autocommit``) and the relay's and workers' transactions in libpq's pipeline mode
(``pipelined_transaction``): see ``pgsql`` for the statements and README "Benchmark" for why.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from enum import Enum
from typing import Any

import orjson
import psycopg
from psycopg import pq
from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from webhooks_app.config import Settings
from webhooks_app.libpq import Pipeline, Prepared, check, run_prepared


class Database:
    """The engine and session factory; ``transaction()`` is a unit of work's one commit point."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._autocommit: Engine | None = None
        self._pipelined: Engine | None = None
        self._local = threading.local()

    def configure(self, settings: Settings, *, pool_size: int = 5) -> None:
        self.dispose()
        self._engine = make_engine(settings, pool_size=pool_size)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._autocommit = self._pipelined = None
        if not settings.database_url.startswith("sqlite"):
            # The intake's own pool, a connection per request thread: autocommit (a statement
            # is its own durable transaction: no BEGIN/COMMIT round trips) and no pre-ping round
            # trip; the intake retries once on a connection found dead instead.
            self._autocommit = make_engine(
                settings,
                pool_size=settings.web_threads,
                isolation_level="AUTOCOMMIT",
                pre_ping=False,
                plans=Plans.SERVER_CHOOSES,
            )
            # The dispatcher's transactions (``pipelined_transaction``): autocommit, so that
            # BEGIN and COMMIT are statements sent with the rest; a connection is pinged only
            # when it comes back from a rest (``ping_after_rest``).
            self._pipelined = make_engine(
                settings,
                pool_size=2,
                isolation_level="AUTOCOMMIT",
                pre_ping=False,
                plans=Plans.ONCE_BY_INDEX,
            )
            ping_after_rest(self._pipelined)

    def dispose(self) -> None:
        self._local = threading.local()
        for engine in (self._engine, self._autocommit, self._pipelined):
            if engine is not None:
                engine.dispose()

    @property
    def autocommit_engine(self) -> Engine | None:
        """PostgreSQL only: connections in autocommit mode for single-statement writes."""
        return self._autocommit

    def execute_autocommit(
        self, statement: Prepared, params: Sequence[bytes | None]
    ) -> list[tuple[bytes | None, ...]]:
        """Run a prepared statement in autocommit mode, straight through libpq; its rows.

        The intake's hot path: each thread keeps one connection checked out of the autocommit
        pool, the statement prepared on it, so a request costs one blocking libpq call (one
        round trip, the GIL released once) and no cursor, adaptation or pool bookkeeping:
        0.06-0.16 ms less CPU per request than psycopg's ``execute`` in a threaded web worker
        (two A/B runs under the benchmark's load). Parameters are already encoded (text, or raw
        bytes where the statement says binary); values come back as text bytes. Errors come out
        as SQLAlchemy's exceptions (``DataError``, ``OperationalError``, ...), like everywhere
        else. A connection found dead is dropped and the statement retried once on a new one:
        only run idempotent statements here.
        """
        engine = self._autocommit
        if engine is None:
            raise RuntimeError("execute_autocommit needs PostgreSQL")
        dbapi_error = engine.dialect.loaded_dbapi.Error
        for attempt in (1, 2):
            fairy: Any = getattr(self._local, "connection", None)
            try:
                if fairy is None or fairy.dbapi_connection is None:
                    fairy = self._local.connection = engine.raw_connection()
                # The statements prepared on this connection (kept with it in the pool).
                prepared = fairy.info.setdefault("prepared_statements", set())
                return run_prepared(fairy.driver_connection, prepared, statement, params)
            except dbapi_error as exc:
                disconnected = fairy is None or fairy.dbapi_connection is None
                if not disconnected:
                    driver = fairy.driver_connection
                    disconnected = engine.dialect.is_disconnect(exc, driver, None) or driver.closed
                    if disconnected:
                        fairy.invalidate(exc)
                self._local.connection = None if disconnected else fairy
                if disconnected and attempt == 1 and fairy is not None:
                    continue  # a stale pooled connection: once more on a new one
                raise sa_exc.DBAPIError.instance(
                    statement.sql,
                    list(params),
                    exc,
                    dbapi_error,
                    connection_invalidated=disconnected,
                    dialect=engine.dialect,
                ) from exc
        raise AssertionError("unreachable")

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the database is not configured; call create_app() first")
        return self._engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            raise RuntimeError("the database is not configured; call create_app() first")
        return self._sessions

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Commit on success, roll back on error; domain code inside only flushes."""
        with self.sessions.begin() as session:
            yield session

    def pipelined_transaction(self) -> AbstractContextManager[Pipeline]:
        """The dispatcher's transactions: see ``pipelined_transaction``. PostgreSQL only."""
        if self._pipelined is None:
            raise RuntimeError("pipelined transactions need PostgreSQL")
        return pipelined_transaction(self._pipelined)

    def after_fork(self) -> None:
        """Forked children must not share the parent's pooled connections."""
        self._local = threading.local()
        for engine in (self._engine, self._autocommit, self._pipelined):
            if engine is not None:
                engine.dispose(close=False)


@contextmanager
def pipelined_transaction(engine: Engine) -> Iterator[Pipeline]:
    """A transaction in libpq's pipeline mode on a pooled connection; commits on success.

    ``engine`` is in autocommit mode, so that BEGIN and COMMIT are statements like the others.
    Statements are sent together, and the caller waits only when it reads rows: BEGIN travels
    with the first statements, and writes whose rows nobody reads travel with the next read,
    or with the COMMIT. On a machine where every round trip costs both sides about 0.1 ms of
    CPU, and a wait for a busy core besides, the dispatcher's message takes 2 round trips
    instead of 11 (``pgsql``), the relay's cycle 2 instead of 3.

    A failure anywhere raises (at the latest when the transaction ends) and rolls it all
    back; a connection found broken is dropped from the pool. Errors are psycopg's own.
    """
    fairy = engine.raw_connection()
    connection: psycopg.Connection[Any] = fairy.driver_connection  # type: ignore[assignment]
    pipeline: Pipeline | None = None
    try:
        connection.pgconn.enter_pipeline_mode()
        pipeline = Pipeline(connection, fairy.info.setdefault("prepared_statements", set()))
        pipeline.send("BEGIN")
        yield pipeline
        pipeline.send("COMMIT")
        pipeline.finish()
        connection.pgconn.exit_pipeline_mode()
    except BaseException as exc:
        _roll_back(fairy, connection, pipeline, exc)
        raise
    finally:
        fairy.close()


def _roll_back(
    fairy: Any, connection: psycopg.Connection[Any], pipeline: Pipeline | None, cause: BaseException
) -> None:
    """Leave the connection idle and out of pipeline mode, or drop it from the pool."""
    pgconn = connection.pgconn
    try:
        if pgconn.pipeline_status != pq.PipelineStatus.OFF:
            if pipeline is not None:
                with contextlib.suppress(psycopg.DatabaseError):
                    pipeline.finish()  # reads what is left; raises the statements' error
            pgconn.exit_pipeline_mode()
        if pgconn.transaction_status != pq.TransactionStatus.IDLE:
            check(connection, pgconn.exec_(b"ROLLBACK"))
    except (psycopg.Error, OSError) as exc:
        fairy.invalidate(exc)
        return
    if pgconn.status == pq.ConnStatus.BAD:
        fairy.invalidate(cause)


def _json_serializer(value: Any) -> str:
    return orjson.dumps(value).decode()


class Plans(Enum):
    """How PostgreSQL plans the prepared statements of an engine's connections.

    The hot paths' statements (``pgsql``) are prepared on the server once per connection
    (``libpq``), and psycopg prepares any other statement run five times on a connection.
    After five runs PostgreSQL may switch a prepared statement to a generic plan, chosen with
    the statistics of the moment; made while a table was still nearly empty (a new
    deployment), that plan is a sequential scan, and it stays while the table grows (measured
    in the benchmark: a 20-id lookup went from 0.02 to 3 ms).
    """

    # Plan every execution for its parameters: the safe default for the varied statements of
    # the sessions (admin, one-event path), tens of microseconds each.
    EACH_EXECUTION = "SET plan_cache_mode = force_custom_plan"
    # The dispatcher's batch statements only look rows up by key, through their indexes: one
    # generic plan per connection, which cannot be a sequential scan whatever the statistics
    # when it was made (``enable_seqscan = off`` only prices one out: a table without a usable
    # index would still be scanned). Planning them each time cost more than running them: a
    # message of 10 events took 4.5 ms instead of 2.8 on a 20,000-event table (README).
    ONCE_BY_INDEX = "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off"
    # PostgreSQL's own choice: the intake's single-row INSERT has no plan to get wrong, and the
    # relay's hand-off is best served by its generic plan (the ordered index, no sort).
    SERVER_CHOOSES = ""


def make_engine(
    settings: Settings,
    *,
    pool_size: int = 5,
    isolation_level: str | None = None,
    pre_ping: bool = True,
    plans: Plans = Plans.EACH_EXECUTION,
) -> Engine:
    url = settings.database_url
    if url.startswith("sqlite"):
        settings.instance_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"isolation_level": None, "timeout": 30})
        event.listen(engine, "connect", _sqlite_on_connect)
        # Take the write lock up front: a deferred transaction that later upgrades to a writer
        # fails at once with "database is locked" instead of waiting for the busy timeout.
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    options: dict[str, Any] = {}
    if isolation_level is not None:
        options["isolation_level"] = isolation_level
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5},
        json_serializer=_json_serializer,
        json_deserializer=orjson.loads,
        **options,
    )
    if plans.value:

        @event.listens_for(engine, "connect")
        def _set_plan_settings(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute(plans.value)
            dbapi_connection.commit()

    return engine


# A pooled connection that rested this long is pinged before use (see ``ping_after_rest``).
REST_BEFORE_PING_SECONDS = 2.0


def ping_after_rest(engine: Engine) -> None:
    """Ping a pooled connection on checkout only if it has rested in the pool a while.

    SQLAlchemy's ``pool_pre_ping`` costs a round trip on every checkout: two per worker
    message, which takes two besides. A connection in steady use is known to be alive; one
    that rested (the server may have restarted, a proxy may have cut it) is pinged, and a dead
    one is replaced before anyone uses it (SQLAlchemy's documented ``DisconnectionError``
    pattern).
    What is left, a connection killed within the last seconds, fails its transaction, which
    rolls back, and the message is tried again a second later (``workers.tasks``) on a new
    connection.
    """

    @event.listens_for(engine, "checkin")
    def _rested_since(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_rested(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        rested_since = record.info.get("checked_in_at")
        if rested_since is None or time.monotonic() - rested_since < REST_BEFORE_PING_SECONDS:
            return
        try:
            dbapi_connection.execute("SELECT 1")
        except psycopg.Error as exc:
            raise sa_exc.DisconnectionError(str(exc)) from exc


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
