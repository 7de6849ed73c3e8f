"""The event store: tables and the few queries the rest of the service needs.

Functions here take a ``Session`` and only flush or execute; the caller (one request, one task)
owns the single commit. Hot-path statements use SQLAlchemy Core: no ORM objects per request.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import orjson
from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    and_,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.sql.elements import ColumnElement

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes, read back in UTC; a naive one is refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.astimezone(UTC)


JSONDocument = postgresql.JSONB()
BigId = BigInteger()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class EventStatus(StrEnum):
    RECEIVED = "received"  # stored, not yet handed to the broker
    QUEUED = "queued"  # handed to the broker
    PROCESSING = "processing"  # a handler is running
    SUCCEEDED = "succeeded"  # every handler succeeded
    FAILED = "failed"  # a handler failed and will be retried
    DEAD = "dead"  # a handler exhausted its attempts
    SKIPPED = "skipped"  # no handler for this type


TERMINAL_STATUSES = frozenset({EventStatus.SUCCEEDED, EventStatus.DEAD, EventStatus.SKIPPED})


class HandlerStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # will be retried at next_attempt_at
    DEAD = "dead"


class AttemptStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"  # its worker died; the lease expired and another attempt took over


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # the webhook-id
    type: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=EventStatus.RECEIVED)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    raw_body: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, str]] = mapped_column(JSONDocument)
    data_id: Mapped[str | None] = mapped_column(String(255))
    webhook_timestamp: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When a non-final event should next have moved on; the sweep re-publishes those past it.
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Deliveries of this id whose body differed from the stored one (not stored; see engine).
    differing_duplicates: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    handlers: Mapped[list[HandlerStateRow]] = relationship(
        back_populates="event", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        Index("ix_events_received_at_id", "received_at", "id"),
        Index("ix_events_type_received_at", "type", "received_at"),
        Index("ix_events_status_received_at", "status", "received_at"),
        Index("ix_events_data_id", "data_id"),
        Index("ix_events_due_at", "due_at"),
    )


class HandlerStateRow(Base):
    """Where one handler stands for one event: the unit that is claimed, retried and finished."""

    __tablename__ = "event_handlers"

    event_id: Mapped[str] = mapped_column(
        ForeignKey("events.id", ondelete="CASCADE"), primary_key=True
    )
    handler: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default=HandlerStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # in the current run
    max_attempts: Mapped[int] = mapped_column(Integer)
    # 1 for the first run; each replay starts a new run with a fresh attempt budget.
    run: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    event: Mapped[EventRow] = relationship(back_populates="handlers")


class AttemptRow(Base):
    """One run of one handler on one event; never rewritten once finished."""

    __tablename__ = "handler_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"))
    handler: Mapped[str] = mapped_column(String(255))
    number: Mapped[int] = mapped_column(Integer)  # per (event, handler), across runs
    run: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    status: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index(
            "ix_handler_attempts_event_handler_number", "event_id", "handler", "number", unique=True
        ),
        # The database itself refuses a second success of one handler on one event in one run
        # (a replay starts a new run, so a deliberate re-run may succeed again).
        Index(
            "uq_handler_attempts_one_success",
            "event_id",
            "handler",
            "run",
            unique=True,
            postgresql_where=(status == AttemptStatus.SUCCEEDED.value),
        ),
    )


events = cast(Table, EventRow.__table__)
handler_states = cast(Table, HandlerStateRow.__table__)
attempts = cast(Table, AttemptRow.__table__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_moment(raw: str) -> datetime:
    """An ISO 8601 date and time (``Z`` allowed), in UTC; one without an offset is taken as UTC.

    Converted here, so that an offset taking a moment past year 1 or 9999 raises now
    (``OverflowError``) rather than when the moment is bound to a query. Otherwise raises
    ``ValueError``.
    """
    moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- intake -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewEvent:
    """An event as the intake stores it; ``raw_body`` is the verified body, valid JSON."""

    id: str
    type: str
    raw_body: bytes
    headers: dict[str, str]
    data_id: str | None
    webhook_timestamp: int
    received_at: datetime
    due_at: datetime


# --- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    type: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    data_id: str | None = None
    search: str | None = None  # an event id or a data.id


class CursorError(ValueError):
    pass


def encode_cursor(received_at: datetime, event_id: str) -> str:
    raw = orjson.dumps([received_at.isoformat(), event_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, event_id = orjson.loads(raw)
        moment = datetime.fromisoformat(stamp)
        # A NUL would reach PostgreSQL as a bound value and fail there, not here.
        if moment.tzinfo is None or not isinstance(event_id, str) or "\x00" in event_id:
            raise ValueError("not a cursor of ours")
        return moment.astimezone(UTC), event_id
    except (binascii.Error, ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise CursorError("The cursor is not one this API returned.") from None


def filter_conditions(filters: EventFilter) -> list[ColumnElement[bool]]:
    """The WHERE clauses a filter stands for: the one query builder of the event list, its
    counts and bulk replay, so that what an operator sees is what an action selects."""
    c = events.c
    conditions: list[ColumnElement[bool]] = []
    if filters.type:
        conditions.append(c.type == filters.type)
    if filters.status:
        conditions.append(c.status == filters.status)
    if filters.since:
        conditions.append(c.received_at >= filters.since)
    if filters.until:
        conditions.append(c.received_at < filters.until)
    if filters.data_id:
        conditions.append(c.data_id == filters.data_id)
    if filters.search:
        # Both sides are indexed (primary key, ix_events_data_id): a bitmap OR, not a scan.
        conditions.append(or_(c.id == filters.search, c.data_id == filters.search))
    return conditions


@dataclass(frozen=True)
class EventPage:
    events: list[EventRow]
    next_cursor: str | None


def list_events(
    session: Session, filters: EventFilter, *, limit: int, cursor: str | None = None
) -> EventPage:
    """Newest first, keyset-paginated on (received_at, id): no OFFSET, no COUNT(*)."""
    query = select(EventRow).where(*filter_conditions(filters))
    if cursor:
        at, event_id = decode_cursor(cursor)
        query = query.where(
            or_(
                EventRow.received_at < at,
                and_(EventRow.received_at == at, EventRow.id < event_id),
            )
        )
    query = query.order_by(EventRow.received_at.desc(), EventRow.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].received_at, rows[-1].id)
    return EventPage(events=rows, next_cursor=next_cursor)


def get_event(session: Session, event_id: str) -> EventRow | None:
    return session.get(EventRow, event_id)


def attempts_for(session: Session, event_id: str) -> list[AttemptRow]:
    return list(
        session.scalars(
            select(AttemptRow)
            .where(AttemptRow.event_id == event_id)
            .order_by(AttemptRow.started_at, AttemptRow.id)
        )
    )


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(events.c.status, func.count()).group_by(events.c.status))
    return {status: count for status, count in rows.tuples()}


# === subscriptions, API keys and their rotations ===========================================
# Secrets are stored only as SecretBox tokens (see secretbox.py); a retired row keeps its id and
# history but loses its secret.


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"  # its secret is accepted; new events are signed with it
    RETIRING = "retiring"  # replaced; its secret is still accepted during the grace window
    RETIRED = "retired"  # deleted at the provider; its secret is gone


class ApiKeyStatus(StrEnum):
    CURRENT = "current"  # the key the provider client uses
    RETIRING = "retiring"  # replaced, not yet deleted at the provider
    DELETED = "deleted"


class RotationKind(StrEnum):
    SUBSCRIPTION = "subscription"
    API_KEY = "api_key"


class RotationStep(StrEnum):
    CREATE_NEW = "create_new"  # next: create the replacement at the provider
    RETIRE_OLD = "retire_old"  # next: (after the grace window) delete the old one
    DONE = "done"


class SubscriptionRow(Base):
    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # the provider's id
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSONDocument)
    secret_encrypted: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=SubscriptionStatus.ACTIVE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_subscriptions_status", "status"),)


class ApiKeyRow(Base):
    """A provider API key the service created; the key it started with lives in the env."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # the provider's key id
    name: Mapped[str] = mapped_column(String(255))
    key_encrypted: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=ApiKeyStatus.CURRENT)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_api_keys_status", "status"),)


class RotationRow(Base):
    """A rotation in progress or done: each step is idempotent, so any run can resume it.

    The idempotency key is stored before the provider is asked to create the replacement, so a
    create whose answer was lost is replayed by the provider rather than done twice.
    """

    __tablename__ = "rotations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20))
    old_id: Mapped[str | None] = mapped_column(String(255))
    new_id: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(String(20), default=RotationStep.CREATE_NEW)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # When old and new both became valid; the grace setting is added when the window is checked.
    window_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # One rotation per replaced subscription or key, however many runs race to start it.
        Index("uq_rotations_kind_old_id", "kind", "old_id", unique=True),
        Index("ix_rotations_step", "step"),
    )


# --- admin: status counts, deletion, audit log ------------------------------------------------

# Counting stops here per status: a capped count reads at most this many index entries, so
# the admin page's polling stays cheap however many events are stored (README, "Admin page").
STATUS_COUNT_CAP = 10_000


def bounded_status_counts(session: Session, *, cap: int = STATUS_COUNT_CAP) -> dict[str, int]:
    """Events per status, each counted up to ``cap`` (``cap`` means "at least that many").

    One ``LIMIT``-ed index range per status on ix_events_status_received_at instead of a
    ``GROUP BY`` over the whole table; all in one statement, so one snapshot: an event changing
    status meanwhile is never counted twice.
    """
    parts = []
    for status in EventStatus:
        # Selecting only the indexed column lets PostgreSQL answer from the index alone.
        limited = (
            select(events.c.status).where(events.c.status == status.value).limit(cap).subquery()
        )
        count = select(literal(status.value).label("status"), func.count().label("n"))
        parts.append(count.select_from(limited))
    return {row.status: int(row.n) for row in session.execute(union_all(*parts))}


def estimated_event_total(session: Session) -> int | None:
    """PostgreSQL's planner estimate of the row count (free); None where there is none."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    estimate = session.execute(
        text("SELECT reltuples::bigint FROM pg_class WHERE oid = 'events'::regclass")
    ).scalar_one_or_none()
    return None if estimate is None or estimate < 0 else int(estimate)


def delete_event(session: Session, event_id: str) -> EventRow | None:
    """Delete one event with its handler states and attempts; returns what was deleted."""
    row = session.get(EventRow, event_id)
    if row is None:
        return None
    session.execute(delete(attempts).where(attempts.c.event_id == event_id))
    session.execute(delete(handler_states).where(handler_states.c.event_id == event_id))
    session.execute(delete(events).where(events.c.id == event_id))
    session.expunge(row)
    return row


def expired_event_ids(session: Session, *, before: datetime, limit: int) -> list[str]:
    rows = session.execute(
        select(events.c.id)
        .where(events.c.received_at < before)
        .order_by(events.c.received_at)
        .limit(limit)
    )
    return list(rows.scalars())


def delete_events(session: Session, event_ids: Sequence[str]) -> int:
    if not event_ids:
        return 0
    session.execute(delete(attempts).where(attempts.c.event_id.in_(event_ids)))
    session.execute(delete(handler_states).where(handler_states.c.event_id.in_(event_ids)))
    result = session.execute(delete(events).where(events.c.id.in_(event_ids)))
    return int(result.rowcount)  # type: ignore[attr-defined]


class AuditRow(Base):
    """One admin action: who did what to what, and when. Rows are only ever added."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    remote_addr: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_audit_log_at_id", "at", "id"),)


audit_log = cast(Table, AuditRow.__table__)


class AdminSessionRow(Base):
    """A logged-in admin page session; the cookie carries its id, this the SHA-256 of it.
    Logging out deletes the row, so a copied cookie stops working."""

    __tablename__ = "admin_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_admin_sessions_expires_at", "expires_at"),)


admin_sessions = cast(Table, AdminSessionRow.__table__)


def handler_states_for(session: Session, event_id: str) -> list[HandlerStateRow]:
    return list(
        session.scalars(
            select(HandlerStateRow)
            .where(HandlerStateRow.event_id == event_id)
            .order_by(HandlerStateRow.handler)
        )
    )


# --- admin: the list's handler summaries ------------------------------------------------------


@dataclass(frozen=True)
class HandlerSummary:
    total: int
    succeeded: int
    last_error: str | None  # the newest error of a handler that has not succeeded since


def handler_summaries(session: Session, event_ids: Sequence[str]) -> dict[str, HandlerSummary]:
    """For a page of events, in one statement: how many handlers succeeded of how many, and
    the last error of one still failing (the per-event subquery walks the attempts index)."""
    if not event_ids:
        return {}
    s, a = handler_states.alias("s"), attempts.alias("a")
    failing = handler_states.alias("f")
    last_error = (
        select(a.c.error)
        .join(failing, and_(failing.c.event_id == a.c.event_id, failing.c.handler == a.c.handler))
        .where(
            a.c.event_id == s.c.event_id,
            a.c.error.is_not(None),
            failing.c.status != HandlerStatus.SUCCEEDED.value,
        )
        .order_by(a.c.started_at.desc(), a.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    rows = session.execute(
        select(
            s.c.event_id,
            func.count().label("total"),
            func.count().filter(s.c.status == HandlerStatus.SUCCEEDED.value).label("ok"),
            last_error.label("last_error"),
        )
        .where(s.c.event_id.in_(event_ids))
        .group_by(s.c.event_id)
    )
    return {
        row.event_id: HandlerSummary(int(row.total), int(row.ok), row.last_error) for row in rows
    }
