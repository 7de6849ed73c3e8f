"""Test your handlers in-process: no web server, worker, broker or database.

Build an :class:`~webhooks_app.events.Event` (or a signed delivery, verified and parsed the way
the receiver does it), run the handlers registered for its type, and look at what each did::

    from webhooks_app.testing import make_event, run_handlers

    result = run_handlers(make_event("chat.completion", {"id": "chat_1", "status": "completed"}))
    assert result.ok, result.errors()

``flask events export`` writes stored events as JSON Lines; :func:`load_events` reads such a file
back as events, so real traffic becomes a regression test (``pytest.mark.parametrize`` over it).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from webhooks_app.events import Event, parse_envelope
from webhooks_app.registry import Registry, load_handlers
from webhooks_app.signatures import generate_hmac_secret, parse_secrets, sign_headers, verify

DEFAULT_HANDLERS_MODULE = "handlers"

__all__ = [
    "HandlerOutcome",
    "Run",
    "event_from_delivery",
    "load_events",
    "make_event",
    "run_delivery",
    "run_handlers",
    "signed_delivery",
]


def make_event(
    event_type: str,
    data: Mapping[str, Any] | None = None,
    *,
    id: str | None = None,
    attempt: int = 1,
    received_at: datetime | None = None,
    **envelope: Any,
) -> Event:
    """An event as a handler receives it; extra keywords become top-level envelope fields."""
    payload: dict[str, Any] = {"event": event_type, "data": dict(data or {}), **envelope}
    return Event(
        id=id or f"msg_{uuid.uuid4().hex}",
        type=event_type,
        data=payload["data"],
        payload=payload,
        received_at=received_at or datetime.now(UTC),
        attempt=attempt,
    )


@dataclass(frozen=True)
class SignedDelivery:
    """What the provider would POST: the raw body, its headers, and the secret that signed it."""

    body: bytes
    headers: dict[str, str]
    secret: str


def signed_delivery(
    event_type: str,
    data: Mapping[str, Any] | None = None,
    *,
    secret: str | None = None,
    id: str | None = None,
    timestamp: int | None = None,
) -> SignedDelivery:
    """A Standard Webhooks delivery of the event, signed with ``secret`` (a fresh ``whsec_``
    one by default); also what to POST to ``/webhooks/events`` of a running service."""
    secret = secret or generate_hmac_secret()
    body = json.dumps({"event": event_type, "data": dict(data or {})}).encode()
    headers = sign_headers(secret, id or f"msg_{uuid.uuid4().hex}", body, timestamp)
    headers["content-type"] = "application/json"
    return SignedDelivery(body, headers, secret)


def event_from_delivery(
    body: bytes, headers: Mapping[str, str], secrets: Iterable[str], *, now: float | None = None
) -> Event:
    """Verify and parse a delivery as the receiver does; raises ``VerificationError`` or
    ``EnvelopeError`` as it would refuse it."""
    lower = {name.lower(): value for name, value in headers.items()}
    delivered = verify(parse_secrets(secrets), lower, body, now=now)
    envelope = parse_envelope(body)
    return Event(
        id=delivered.msg_id,
        type=envelope.type,
        data=envelope.data,
        payload=envelope.payload,
        received_at=datetime.fromtimestamp(now if now is not None else time.time(), UTC),
    )


@dataclass(frozen=True)
class HandlerOutcome:
    """What one handler did with the event: returned (``ok``), or raised ``error``."""

    handler: str
    ok: bool
    returned: object = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Run:
    """Every handler registered for the event's type, run once, in registration order."""

    event: Event
    outcomes: tuple[HandlerOutcome, ...]

    @property
    def ok(self) -> bool:
        """True when at least one handler ran and none raised."""
        return bool(self.outcomes) and all(o.ok for o in self.outcomes)

    def __getitem__(self, handler: str) -> HandlerOutcome:
        """The outcome of a handler by its full name or its function name."""
        for outcome in self.outcomes:
            if handler in (outcome.handler, outcome.handler.rsplit(".", 1)[-1]):
                return outcome
        names = ", ".join(o.handler for o in self.outcomes) or "none"
        raise KeyError(f"no handler {handler!r} ran (ran: {names})")

    def __iter__(self) -> Iterator[HandlerOutcome]:
        return iter(self.outcomes)

    def errors(self) -> dict[str, BaseException]:
        """Handler name -> what it raised: an assert's message that says why."""
        return {o.handler: o.error for o in self.outcomes if o.error is not None}


def run_handlers(
    event: Event, *, registry: Registry | None = None, handlers_module: str | None = None
) -> Run:
    """Run the handlers registered for ``event.type`` (``"*"`` ones included) in this process.

    Without ``registry``, ``handlers_module`` (default ``handlers``, your ``handlers.py``) is
    imported first so its ``@on`` decorators have registered. A handler that raises does not
    stop the others, as in the worker; its exception is in the outcome.
    """
    if registry is None:
        registry = load_handlers(handlers_module or DEFAULT_HANDLERS_MODULE)
    outcomes = []
    for handler in registry.for_type(event.type):
        try:
            returned = handler.func(event)
        except Exception as exc:  # a handler's failure is the result being reported
            outcomes.append(HandlerOutcome(handler.name, ok=False, error=exc))
        else:
            outcomes.append(HandlerOutcome(handler.name, ok=True, returned=returned))
    return Run(event, tuple(outcomes))


def run_delivery(
    delivery: SignedDelivery,
    *,
    registry: Registry | None = None,
    handlers_module: str | None = None,
) -> Run:
    """Verify and parse a signed delivery, then run its handlers."""
    event = event_from_delivery(delivery.body, delivery.headers, [delivery.secret])
    return run_handlers(event, registry=registry, handlers_module=handlers_module)


def load_events(path: str | Path) -> list[Event]:
    """The events of a ``flask events export`` file (JSON Lines), in file order.

    Masked fields hold ``"[masked]"`` (export with ``--unmasked`` for the real values, and keep
    that file out of version control).
    """
    events = []
    source = Path(path)
    with source.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                payload = record["payload"]
                events.append(
                    Event(
                        id=record["id"],
                        type=record["type"],
                        data=payload.get("data") or {},
                        payload=payload,
                        received_at=datetime.fromisoformat(
                            record["received_at"].replace("Z", "+00:00")
                        ),
                    )
                )
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{source}:{number}: not an exported event ({exc})") from None
    return events
