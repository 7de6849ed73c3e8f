"""Stored events as JSON Lines (``flask events export``), masked by PII_MASK_FIELDS by default.

One line per event, newest first, in the shape ``webhooks_app.testing.load_events`` reads back:
``id``, ``type``, ``status``, ``received_at``, ``webhook_timestamp``, ``data_id``, ``payload``
and ``masked_fields`` (JSON Pointers of the values replaced by ``"[masked]"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC
from typing import Any

from sqlalchemy.orm import Session

from webhooks_app import masking, store
from webhooks_app.store import EventFilter, EventRow

BATCH_SIZE = 500


def export_line(row: EventRow, rules: masking.MaskRules | None) -> dict[str, Any]:
    payload: Any = row.payload
    masked: tuple[str, ...] = ()
    if rules is not None:
        result = masking.mask(row.payload, rules)
        payload, masked = result.value, result.pointers
    return {
        "id": row.id,
        "type": row.type,
        "status": row.status,
        "received_at": row.received_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "webhook_timestamp": row.webhook_timestamp,
        "data_id": row.data_id,
        "payload": payload,
        "masked_fields": list(masked),
    }


def export_events(
    transaction: Callable[[], AbstractContextManager[Session]],
    filters: EventFilter,
    *,
    rules: masking.MaskRules | None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the filtered events' lines, a keyset-paginated batch per short transaction (no
    transaction held open while the caller writes)."""
    cursor: str | None = None
    left = limit
    while left is None or left > 0:
        size = BATCH_SIZE if left is None else min(BATCH_SIZE, left)
        with transaction() as session:
            page = store.list_events(session, filters, limit=size, cursor=cursor)
            lines = [export_line(row, rules) for row in page.events]
        yield from lines
        if left is not None:
            left -= len(lines)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
