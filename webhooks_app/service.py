"""The running service's parts, wired once per process by ``create_app``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from celery import Celery
from flask import current_app

from webhooks_app.config import Settings
from webhooks_app.database import Database
from webhooks_app.dispatch import Dispatcher
from webhooks_app.intake import Intake
from webhooks_app.registry import Registry
from webhooks_app.relay import Publish, Relay, RelayWaker
from webhooks_app.secretbox import SecretBox
from webhooks_app.signatures import Secret
from webhooks_app.subscriptions import Subscriptions

SecretSource = Callable[[], Iterable[Secret]]


@dataclass
class Service:
    settings: Settings
    db: Database
    celery: Celery
    registry: Registry
    dispatcher: Dispatcher
    publish: Publish
    intake: Intake = field(init=False)
    relay: Relay = field(init=False)
    # Where the receiver's active secrets come from: WEBHOOK_SECRETS first; stored
    # subscription secrets are added by that feature.
    secret_sources: list[SecretSource] = field(default_factory=list)
    # Our subscriptions and API key at the provider, their secrets encrypted at rest.
    subscriptions: Subscriptions = field(init=False)

    def __post_init__(self) -> None:
        self.relay = Relay(self.db, self.publish, self.settings)
        self.intake = Intake(
            self.db,
            self.settings,
            self.active_secrets,
            RelayWaker(self.db, self.settings.relay_linger_seconds).wake,
        )
        self.subscriptions = Subscriptions(
            self.db, SecretBox.from_settings(self.settings), self.settings
        )

    def active_secrets(self) -> tuple[Secret, ...]:
        found: list[Secret] = list(self.settings.webhook_secrets)
        for source in self.secret_sources:
            found.extend(source())
        return tuple(found)


def current_service() -> Service:
    service: Service = current_app.extensions["webhooks"]
    return service
