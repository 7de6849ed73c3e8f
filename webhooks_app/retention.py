"""Deleting events older than EVENT_RETENTION_DAYS, in batches (one short transaction each)."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from webhooks_app import audit, store
from webhooks_app.store import utcnow

log = logging.getLogger(__name__)

PURGE_BATCH_SIZE = 1000


def purge_expired(
    sessions: sessionmaker[Session],
    retention_days: int | None,
    *,
    batch_size: int = PURGE_BATCH_SIZE,
) -> int:
    """Delete every event received more than ``retention_days`` ago; returns how many.

    Short batches keep locks brief while the receiver goes on writing; the cutoff is fixed at
    the start so a long purge ends.
    """
    if retention_days is None:
        return 0
    cutoff = utcnow() - timedelta(days=retention_days)
    total = 0
    while True:
        with sessions.begin() as session:
            ids = store.expired_event_ids(session, before=cutoff, limit=batch_size)
            deleted = store.delete_events(session, ids)
            total += deleted
        if len(ids) < batch_size:
            break
    if total:
        with sessions.begin() as session:
            audit.record(
                session,
                actor=audit.SYSTEM_ACTOR,
                action="events.purge",
                details={"deleted": total, "before": cutoff.isoformat()},
            )
        log.info("retention purge deleted %d events older than %s", total, cutoff)
    return total
