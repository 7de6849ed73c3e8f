"""What an operator can do to stored events, once for the admin page and the JSON API.

Each use case runs in one transaction with its audit entry (``audit.record``), so an action
is either done and recorded or neither. Flask-free: the web layers pass who acts (an
``Operator``) and turn ``ActionError`` into their own answers (a JSON error or an HTML page).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import false, select
from sqlalchemy.orm import Session

from webhooks_app import audit, masking, store
from webhooks_app.params import MAX_TEXT_LENGTH
from webhooks_app.replay import Replayed, ReplayError, reset_for_replay
from webhooks_app.store import EventFilter, EventRow, EventStatus

if TYPE_CHECKING:
    from webhooks_app.service import Service

REPLAYABLE_STATUSES = (EventStatus.FAILED.value, EventStatus.DEAD.value)
BULK_REPLAY_LIMIT = 1000


@dataclass(frozen=True)
class Operator:
    """Who acts, as the audit log records it."""

    name: str
    remote_addr: str | None = None


class ActionError(Exception):
    """Why an action cannot happen, in the terms of the seed's error format."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


def _not_found(event_id: str) -> ActionError:
    return ActionError(404, f"No event with id {event_id!r}.", code="event_not_found", param="id")


def _from_replay_error(exc: ReplayError) -> ActionError:
    return ActionError(exc.status, exc.message, code=exc.code, param=exc.param)


def possible_id(event_id: str) -> bool:
    """Whether an event could have this id (a NUL would fail in PostgreSQL, not match)."""
    return 0 < len(event_id) <= MAX_TEXT_LENGTH and "\x00" not in event_id


def find_event(session: Session, event_id: str) -> EventRow | None:
    return store.get_event(session, event_id) if possible_id(event_id) else None


def load_event(session: Session, event_id: str) -> EventRow:
    """The event, or a 404 ``ActionError``."""
    row = find_event(session, event_id)
    if row is None:
        raise _not_found(event_id)
    return row


def mask_rules(service: Service) -> masking.MaskRules:
    return masking.MaskRules.parse(service.settings.pii_mask_fields)


# --- replay -----------------------------------------------------------------------------


def replay(
    service: Service,
    operator: Operator,
    event_id: str,
    *,
    handler: str | None = None,
    only_failed: bool = False,
) -> Replayed:
    """A new run of the event's handlers; ``handler`` (a name, or ``None`` for every handler)
    and ``only_failed`` are passed to the replay transition as they are, which decides what
    they select."""
    if not possible_id(event_id):
        raise _not_found(event_id)
    try:
        with service.db.transaction() as session:
            done = reset_for_replay(
                session,
                event_id,
                registry=service.registry,
                settings=service.settings,
                handler=handler,
                only_failed=only_failed,
            )
            _record(session, operator, "event.replay", event_id, handlers=list(done.handlers))
    except ReplayError as exc:
        raise _from_replay_error(exc) from None
    return done


def replayable_query(filters: EventFilter, *, limit: int = BULK_REPLAY_LIMIT) -> Any:
    """The failed/dead events a filter selects, newest first: the list's own conditions."""
    c = store.events.c
    query = select(c.id).where(*store.filter_conditions(filters))
    if not filters.status:
        query = query.where(c.status.in_(REPLAYABLE_STATUSES))
    elif filters.status not in REPLAYABLE_STATUSES:
        query = query.where(false())
    return query.order_by(c.received_at.desc(), c.id.desc()).limit(limit)


def replayable_ids(
    session: Session, filters: EventFilter, *, limit: int = BULK_REPLAY_LIMIT
) -> list[str]:
    return list(session.execute(replayable_query(filters, limit=limit)).scalars())


@dataclass(frozen=True)
class BulkReplay:
    replayed: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # event id -> why


def replay_many(
    session: Session, event_ids: Sequence[str], *, service: Service, only_failed: bool = False
) -> BulkReplay:
    replayed: list[str] = []
    skipped: dict[str, str] = {}
    for event_id in event_ids:
        try:
            # A savepoint per event: one refused replay leaves the others in the transaction.
            with session.begin_nested():
                reset_for_replay(
                    session,
                    event_id,
                    registry=service.registry,
                    settings=service.settings,
                    only_failed=only_failed,
                )
        except ReplayError as exc:
            skipped[event_id] = exc.message
        else:
            replayed.append(event_id)
    return BulkReplay(tuple(replayed), skipped)


def preview_bulk_replay(service: Service, filters: EventFilter) -> list[str]:
    """The ids a bulk replay of ``filters`` would take now (at most ``BULK_REPLAY_LIMIT``)."""
    with service.db.transaction() as session:
        return replayable_ids(session, filters)


def bulk_replay(
    service: Service,
    operator: Operator,
    filters: EventFilter,
    *,
    filter_args: Mapping[str, str],
    only_failed: bool = False,
) -> BulkReplay:
    """Replay every failed/dead event ``filters`` selects (at most ``BULK_REPLAY_LIMIT``);
    ``filter_args`` (the filter as the operator gave it) goes into the audit entry."""
    with service.db.transaction() as session:
        ids = replayable_ids(session, filters)
        result = replay_many(session, ids, service=service, only_failed=only_failed)
        _record(
            session,
            operator,
            "events.bulk_replay",
            None,
            filters=dict(filter_args),
            replayed=len(result.replayed),
            skipped=len(result.skipped),
        )
    return result


# --- delete, reveal -------------------------------------------------------------------------


def delete_event(service: Service, operator: Operator, event_id: str) -> EventRow:
    """Delete an event with its history for good; returns what was deleted."""
    with service.db.transaction() as session:
        load_event(session, event_id)
        row = store.delete_event(session, event_id)
        if row is None:
            raise _not_found(event_id)
        _record(session, operator, "event.delete", event_id, type=row.type, data_id=row.data_id)
    return row


@dataclass(frozen=True)
class Revealed:
    event: EventRow
    field: str
    value: Any


def reveal_field(service: Service, operator: Operator, event_id: str, field: str) -> Revealed:
    """The unmasked value of one masked field (a JSON Pointer) of the event's payload."""
    with service.db.transaction() as session:
        row = load_event(session, event_id)
        if field not in masking.mask(row.payload, mask_rules(service)).pointers:
            raise ActionError(
                400,
                "field must be one of the event's masked fields (a JSON Pointer).",
                code="invalid_parameter",
                param="field",
            )
        _record(session, operator, "event.reveal_field", event_id, field=field)
        session.expunge(row)
        return Revealed(row, field, masking.value_at(row.payload, field))


# --- reading ----------------------------------------------------------------------------


def list_events(
    session: Session, filters: EventFilter, *, limit: int, cursor: str | None
) -> store.EventPage:
    """A page of the list; a cursor that is not ours is a 400 ``ActionError``."""
    try:
        return store.list_events(session, filters, limit=limit, cursor=cursor)
    except store.CursorError as exc:
        raise ActionError(400, str(exc), code="invalid_cursor", param="cursor") from None


def list_audit(
    session: Session,
    *,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    cursor: str | None,
) -> audit.AuditPage:
    try:
        return audit.list_entries(session, start=start, end=end, limit=limit, cursor=cursor)
    except store.CursorError as exc:
        raise ActionError(400, str(exc), code="invalid_cursor", param="cursor") from None


def _record(
    session: Session, operator: Operator, action: str, target: str | None, **details: Any
) -> None:
    audit.record(
        session,
        actor=operator.name,
        action=action,
        target=target,
        details=details,
        remote_addr=operator.remote_addr,
    )
