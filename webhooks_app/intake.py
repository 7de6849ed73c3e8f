"""Accepting one delivery: verify the raw bytes, parse, store durably (``engine.store``).

Once the event is committed, the relays are woken (``relay.RelayWaker``); nothing else is done
on the request path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from webhooks_app import engine, signatures, store
from webhooks_app.config import Settings
from webhooks_app.database import Database
from webhooks_app.events import parse_envelope
from webhooks_app.signatures import HeaderLookup, Secret

# What the admin page shows of a delivery; the body is stored separately, byte for byte.
KEPT_HEADERS = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "user-agent",
)


@dataclass(frozen=True)
class Received:
    id: str
    type: str
    stored: engine.Stored


class Intake:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        active_secrets: Callable[[], tuple[Secret, ...]],
        wake_relays: Callable[[], None],
    ) -> None:
        self._db = db
        self._wake_relays = wake_relays
        self._tolerance = settings.webhook_tolerance_seconds
        self._grace = timedelta(seconds=settings.handoff_grace_seconds)
        self._active_secrets = active_secrets

    def receive(self, headers: HeaderLookup, body: bytes) -> Received:
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
        stored = engine.store(self._db.execute_autocommit, event)
        if stored == engine.Stored.CREATED:
            self._wake_relays()
        return Received(id=event.id, type=event.type, stored=stored)
