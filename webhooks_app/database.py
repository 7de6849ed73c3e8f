"""The database handle: engines and sessions, built from settings.

``Database.transaction()`` is a unit of work's one commit point; domain functions only flush.
The intake's insert and the engine's transitions (``engine``) run on engines of their own,
each set up for its statements (``Plans``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from typing import Any

import orjson
import psycopg
from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from webhooks_app.config import Settings


class Database:
    """The engines and session factory, one per kind of work.

    ``transaction()`` is a unit of work's one commit point (a request, a task); domain
    functions only flush. ``begin()`` runs the engine's transitions of a worker or relay in a
    transaction on a connection of their own; ``execute_autocommit()`` runs the intake's insert
    as its own durable transaction (no BEGIN/COMMIT round trips).
    """

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._autocommit: Engine | None = None
        self._transitions: Engine | None = None

    def configure(self, settings: Settings, *, pool_size: int = 5) -> None:
        self.dispose()
        self._engine = make_engine(settings, pool_size=pool_size)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        # The intake (``execute_autocommit``): WEB_THREADS connections per web process, and no
        # more: a request beyond them waits for one (under gevent a process serves many more
        # requests at once than it should hold connections, and a connection opened for a burst
        # and closed after it costs PostgreSQL a new backend each time). No ping and no reset
        # when one goes back to the pool (each statement is its own transaction); a statement
        # that meets a dead connection is tried again on a new one instead.
        self._autocommit = make_engine(
            settings,
            pool_size=settings.web_threads,
            max_overflow=0,
            pool_timeout=INTAKE_POOL_TIMEOUT_SECONDS,
            isolation_level="AUTOCOMMIT",
            pre_ping=False,
            reset_on_return=False,
            plans=Plans.SERVER_CHOOSES,
        )
        # The dispatcher's, the relay's and the sweep's transactions (``engine``).
        self._transitions = make_engine(
            settings, pool_size=2, pre_ping=False, plans=Plans.ONCE_BY_INDEX
        )
        ping_after_rest(self._transitions)

    def _engines(self) -> list[Engine]:
        return [e for e in (self._engine, self._autocommit, self._transitions) if e is not None]

    def dispose(self) -> None:
        for engine in self._engines():
            engine.dispose()

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

    @contextmanager
    def begin(self) -> Iterator[psycopg.Connection[Any]]:
        """A transaction for the engine's transitions, on a connection of their own, straight
        through psycopg; commits on success. Errors come out as SQLAlchemy's.

        In psycopg's pipeline mode: a statement is sent at once and its result read only when
        the caller fetches rows, so the BEGIN, a transition's lock and its statement travel
        in one round trip, and the COMMIT in a second (a worker's message took eight).
        """
        engine = self._transitions
        if engine is None:
            raise RuntimeError("the database is not configured; call create_app() first")
        fairy = engine.raw_connection()
        try:
            driver = _driver(fairy)
            with _as_sqlalchemy_errors(engine, fairy), driver.pipeline(), driver.transaction():
                yield driver
        finally:
            fairy.close()

    def execute_autocommit(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement as its own durable transaction; its rows. The intake's path.

        Straight through psycopg on a pooled connection, the statement prepared on the server
        the first time each connection runs it, on a cursor kept with the connection (one made
        per request was a measurable share of the intake's CPU): SQLAlchemy's execution
        machinery cost the request about as much CPU again as all the rest of the intake
        (bench/HISTORY.md).
        Errors come out as SQLAlchemy's, like everywhere else. A connection found dead is
        dropped and the statement tried once more on a new one: run only idempotent statements.
        """
        engine = self._autocommit
        if engine is None:
            raise RuntimeError("the database is not configured; call create_app() first")
        for attempt in (1, 2):
            fairy = engine.raw_connection()
            try:
                with _as_sqlalchemy_errors(engine, fairy, sql):
                    cursor = _intake_cursor(fairy)
                    cursor.execute(sql, params, prepare=True)
                    return cursor.fetchall() if cursor.description is not None else []
            except sa_exc.DBAPIError as exc:
                if exc.connection_invalidated and attempt == 1:
                    continue  # a stale pooled connection: once more on a new one
                raise
            finally:
                fairy.close()
        raise AssertionError("unreachable")

    def after_fork(self) -> None:
        """Forked children must not share the parent's pooled connections."""
        for engine in self._engines():
            engine.dispose(close=False)


@contextmanager
def session_driver(session: Session) -> Iterator[psycopg.Connection[Any]]:
    """The psycopg connection under ``session``, inside its transaction: for the engine's
    transitions within an operator's action, whose unit of work keeps its one commit point.
    Errors come out as SQLAlchemy's."""
    connection = session.connection()
    fairy = connection.connection
    # The session owns the connection: it is not invalidated here (its rollback does that).
    with _as_sqlalchemy_errors(connection.engine, fairy, invalidate=False):
        yield _driver(fairy)


def _driver(fairy: Any) -> psycopg.Connection[Any]:
    """The psycopg connection under a pooled one."""
    driver: psycopg.Connection[Any] = fairy.driver_connection
    return driver


def _intake_cursor(fairy: Any) -> psycopg.Cursor[Any]:
    """The intake's cursor of a pooled connection: one per connection, for its lifetime
    (SQLAlchemy clears ``info`` when it replaces the connection)."""
    cursor: psycopg.Cursor[Any] | None = fairy.info.get(_INTAKE_CURSOR)
    if cursor is None:
        cursor = fairy.info[_INTAKE_CURSOR] = _driver(fairy).cursor()
    return cursor


_INTAKE_CURSOR = "webhooks.intake_cursor"


@contextmanager
def _as_sqlalchemy_errors(
    engine: Engine, fairy: Any, statement: str | None = None, *, invalidate: bool = True
) -> Iterator[None]:
    """psycopg's errors on a raw pooled connection, raised as SQLAlchemy's (the one error
    contract of the callers), the values hidden; a connection found dead is invalidated."""
    try:
        yield
    except psycopg.Error as exc:
        disconnected = _driver(fairy).closed or engine.dialect.is_disconnect(
            exc,  # type: ignore[arg-type]
            fairy,
            None,
        )
        if disconnected and invalidate:
            fairy.invalidate(exc)
        raise sa_exc.DBAPIError.instance(
            statement,
            {},
            exc,
            psycopg.Error,
            hide_parameters=True,
            connection_invalidated=disconnected,
            dialect=engine.dialect,
        ) from exc


def _json_serializer(value: Any) -> str:
    return orjson.dumps(value).decode()


class Plans(Enum):
    """How PostgreSQL plans the prepared statements of an engine's connections.

    psycopg prepares a statement on the server once it has run five times on a connection
    (the engine's statements never change their text, so they all are). After five runs
    PostgreSQL may switch a prepared statement to a generic plan, chosen with
    the statistics of the moment; made while a table was still nearly empty (a new
    deployment), that plan is a sequential scan, and it stays while the table grows (measured
    in the benchmark: a 20-id lookup went from 0.02 to 3 ms).
    """

    # Plan every execution for its parameters: the safe default for the varied statements of
    # the sessions (admin, API, CLI), tens of microseconds each.
    EACH_EXECUTION = "SET plan_cache_mode = force_custom_plan"
    # The engine's transitions only look rows up by key, through their indexes: one generic
    # plan per connection, which cannot be a sequential scan whatever the statistics when it
    # was made (``enable_seqscan = off`` only prices one out: a table without a usable index
    # would still be scanned). Planning them each time costs more than running them
    # (bench/HISTORY.md).
    ONCE_BY_INDEX = "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off"
    # PostgreSQL's own choice: the intake's single-row INSERT has no plan to get wrong, and the
    # relay's hand-off is best served by its generic plan (the ordered index, no sort).
    SERVER_CHOOSES = ""


def make_engine(
    settings: Settings,
    *,
    pool_size: int = 5,
    max_overflow: int | None = None,
    pool_timeout: float = 30.0,
    isolation_level: str | None = None,
    pre_ping: bool = True,
    reset_on_return: bool = True,
    plans: Plans = Plans.EACH_EXECUTION,
) -> Engine:
    options: dict[str, Any] = {}
    if not reset_on_return:
        options["pool_reset_on_return"] = None
    if isolation_level is not None:
        options["isolation_level"] = isolation_level
    engine = create_engine(
        settings.database_url,
        # A logged database error must not carry the values bound to it (payloads, secrets).
        hide_parameters=True,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_timeout=pool_timeout,
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


# How long a delivery waits for one of the intake's connections before it is answered 503: well
# within a provider's own timeout (10-15 s), so that it retries rather than gives up.
INTAKE_POOL_TIMEOUT_SECONDS = 5.0

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
            # The ping began a transaction: end it, or the caller's own transaction would only
            # be a savepoint inside it, rolled back when the connection goes back to the pool.
            dbapi_connection.rollback()
        except psycopg.Error as exc:
            raise sa_exc.DisconnectionError(str(exc)) from exc
