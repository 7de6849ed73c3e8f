"""Accepting one delivery: verify the raw bytes, parse, store durably, then hand off."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from webhooks_app import pgsql, signatures, store
from webhooks_app.config import Settings
from webhooks_app.database import Database
from webhooks_app.events import parse_envelope
from webhooks_app.handoff import Relay
from webhooks_app.signatures import HeaderLookup, Secret

# What the admin page shows of a delivery; the body is stored separately, byte for byte.
KEPT_HEADERS = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "user-agent",
)


class Intake:
    def __init__(
        self,
        db: Database,
        relay: Relay,
        settings: Settings,
        active_secrets: Callable[[], tuple[Secret, ...]],
    ) -> None:
        self._db = db
        self._relay = relay
        self._tolerance = settings.webhook_tolerance_seconds
        self._grace = timedelta(seconds=settings.handoff_grace_seconds)
        self._active_secrets = active_secrets

    def receive(self, headers: HeaderLookup, body: bytes) -> store.IngestResult:
        """Raises ``VerificationError`` (401), ``EnvelopeError`` (400) or a database error (503).

        Returns only after the event is committed; a repeated webhook-id is reported, not stored.
        """
        delivery = signatures.verify(
            self._active_secrets(), headers, body, tolerance_seconds=self._tolerance
        )
        envelope = parse_envelope(body)
        headers_kept = {name: headers[name] for name in KEPT_HEADERS if name in headers}
        received_at = store.utcnow()
        event = store.NewEvent(
            id=delivery.msg_id,
            type=envelope.type,
            raw_body=body,
            headers=headers_kept,
            data_id=envelope.data_id,
            webhook_timestamp=delivery.timestamp,
            received_at=received_at,
            due_at=received_at + self._grace,
        )
        if self._db.autocommit_engine is not None:
            created = pgsql.insert_event(self._db.execute_autocommit, event)
        else:
            with self._db.transaction() as session:
                created = store.ingest(session, event)
        result = store.IngestResult(id=event.id, created=created, type=event.type)
        if result.created:
            self._relay.submit(result.id)
        return result
