"""The audit log of admin actions (who, what, when): written in the action's own transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, insert, or_, select
from sqlalchemy.orm import Session

from webhooks_app import store
from webhooks_app.store import AuditRow, decode_cursor, encode_cursor, utcnow

SYSTEM_ACTOR = "system"


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str | None = None,
    details: dict[str, Any] | None = None,
    remote_addr: str | None = None,
) -> None:
    """Add one entry. Called inside the transaction that does the action, so both or neither."""
    session.execute(
        insert(store.audit_log).values(
            at=utcnow(),
            actor=actor[:255],
            action=action,
            target=None if target is None else target[:255],
            details=details or {},
            remote_addr=None if remote_addr is None else remote_addr[:64],
        )
    )


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditRow]
    next_cursor: str | None


def list_entries(
    session: Session,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> AuditPage:
    """Newest first; ``start`` inclusive, ``end`` exclusive; keyset-paginated like events."""
    query = select(AuditRow)
    if start is not None:
        query = query.where(AuditRow.at >= start)
    if end is not None:
        query = query.where(AuditRow.at < end)
    if cursor:
        at, raw_id = decode_cursor(cursor)
        # isascii first: "²".isdigit() is true and int() refuses it; 18 digits fit a bigint.
        if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 18):
            raise store.CursorError("The cursor is not one this API returned.")
        query = query.where(
            or_(AuditRow.at < at, and_(AuditRow.at == at, AuditRow.id < int(raw_id)))
        )
    query = query.order_by(AuditRow.at.desc(), AuditRow.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].at, str(rows[-1].id))
    return AuditPage(rows, next_cursor)


def entry_json(row: AuditRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "audit_entry",
        "at": row.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "details": row.details,
        "remote_addr": row.remote_addr,
    }
