"""Reading stored events back in tests."""

from __future__ import annotations

from webhooks_app import store
from webhooks_app.service import Service
from webhooks_app.store import EventRow


def event_status(service: Service, event_id: str) -> str:
    """The stored status of an event that must exist."""
    with service.db.transaction() as session:
        row = session.get(EventRow, event_id)
        assert row is not None, f"{event_id} is not stored"
        return row.status


def attempts(service: Service, event_id: str) -> list[tuple[str, int, str]]:
    """An event's attempts: (handler's short name, number, status), in order."""
    with service.db.transaction() as session:
        return [
            (a.handler.rsplit(".", 1)[-1], a.number, a.status)
            for a in store.attempts_for(session, event_id)
        ]
