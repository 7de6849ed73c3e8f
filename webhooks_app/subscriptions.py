"""Our webhook subscriptions and API key at the provider: register, rotate, re-encrypt.

A rotation is a row in ``rotations`` that moves through idempotent steps, so whichever run gets
there next (beat, CLI, after a crash) completes it:

``create_new``  ask the provider for the replacement, with the rotation's stored Idempotency-Key,
                so a create whose answer was lost is replayed, not done twice; store it.
``retire_old``  subscriptions: once ``ROTATION_GRACE_HOURS`` (read now, not when the rotation
                started) have passed since the new one became valid, delete the old one at the
                provider (a 404 means an earlier run did) and drop its secret. API keys: no
                window; the new key is current at once, the old one is deleted with it.
``done``
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session

from webhooks_app.assisters import AssistersClient, NotFound, WebhookSubscription
from webhooks_app.config import ConfigError, Settings
from webhooks_app.database import Database
from webhooks_app.secretbox import SecretBox, SecretBoxError, mask
from webhooks_app.signatures import Secret, SecretFormatError, parse_secret
from webhooks_app.store import (
    ApiKeyRow,
    ApiKeyStatus,
    RotationKind,
    RotationRow,
    RotationStep,
    SubscriptionRow,
    SubscriptionStatus,
    utcnow,
)

log = logging.getLogger(__name__)

DEFAULT_EVENTS = ("chat.completion", "model.failed")
RECEIVER_PATH = "/webhooks/events"
ACCEPTED_STATUSES = (SubscriptionStatus.ACTIVE.value, SubscriptionStatus.RETIRING.value)


class SubscriptionError(RuntimeError):
    """Something the operator must fix (a missing setting, nothing to rotate, ...)."""


@dataclass(frozen=True)
class SubscriptionView:
    id: str
    url: str
    events: tuple[str, ...]
    status: str
    created_at: datetime
    retired_at: datetime | None
    secret_hint: str  # masked: whsec_…a1B2


@dataclass(frozen=True)
class RotationView:
    id: int
    kind: str
    old_id: str | None
    new_id: str | None
    step: str
    started_at: datetime
    window_ends_at: datetime | None


@dataclass(frozen=True)
class ApiKeyView:
    id: str
    name: str
    status: str
    created_at: datetime | None  # None: the key the service started with (ASSISTERS_API_KEY)
    deleted_at: datetime | None


class Subscriptions:
    """Register and rotate through the provider; serve stored secrets to the receiver."""

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.box = box
        self.settings = settings
        self._transport = transport
        self._sleep = sleep
        self._monotonic = monotonic
        self._cache_lock = threading.Lock()
        self._cached: tuple[Secret, ...] = ()
        self._cache_expires = float("-inf")

    # --- the provider client -----------------------------------------------------------------

    def client(self) -> AssistersClient:
        """A client authenticated with the stored current key, else ``ASSISTERS_API_KEY``."""
        return AssistersClient(
            self.settings.assisters_api_base,
            self._current_api_key(),
            timeout=self.settings.assisters_timeout_seconds,
            transport=self._transport,
            sleep=self._sleep,
        )

    def _current_api_key(self) -> str:
        with self.db.transaction() as session:
            row = _current_key_row(session)
            token = row.key_encrypted if row else None
        if token:
            return self.box.decrypt(token)
        if self.settings.assisters_api_key:
            return self.settings.assisters_api_key
        raise SubscriptionError("ASSISTERS_API_KEY is not set: the Assisters API needs a key")

    # --- the receiver's stored secrets -------------------------------------------------------

    def stored_secrets(self) -> tuple[Secret, ...]:
        """Secrets of active and retiring subscriptions, re-read every few seconds at most."""
        with self._cache_lock:
            if self._monotonic() < self._cache_expires:
                return self._cached
            with self.db.transaction() as session:
                tokens = session.scalars(
                    select(SubscriptionRow.secret_encrypted).where(
                        SubscriptionRow.status.in_(ACCEPTED_STATUSES),
                        SubscriptionRow.secret_encrypted.is_not(None),
                    )
                ).all()
            self._cached = tuple(parse_secret(self.box.decrypt(t)) for t in tokens if t)
            self._cache_expires = self._monotonic() + self.settings.stored_secrets_cache_seconds
            return self._cached

    def invalidate_cache(self) -> None:
        with self._cache_lock:
            self._cache_expires = float("-inf")

    def check_stored_secrets(self) -> None:
        """At startup: every stored secret must decrypt, or the process refuses to start."""
        try:
            with self.db.transaction() as session:
                tokens = [
                    *session.scalars(
                        select(SubscriptionRow.secret_encrypted).where(
                            SubscriptionRow.secret_encrypted.is_not(None)
                        )
                    ),
                    *session.scalars(
                        select(ApiKeyRow.key_encrypted).where(ApiKeyRow.key_encrypted.is_not(None))
                    ),
                ]
        except sa_exc.DBAPIError:
            # Not migrated yet, or the database is down: /readyz reports the latter.
            log.debug("stored secrets not checked: the database is not ready")
            return
        try:
            for token in tokens:
                if token:
                    self.box.decrypt(token)
        except SecretBoxError as exc:
            raise ConfigError(f"ENCRYPTION_KEYS: {exc}") from None

    # --- subscriptions -----------------------------------------------------------------------

    def default_url(self) -> str:
        if not self.settings.public_base_url:
            raise SubscriptionError("PUBLIC_BASE_URL is not set; pass --url or set it")
        return self.settings.public_base_url + RECEIVER_PATH

    def register(
        self, url: str | None = None, events: Sequence[str] = DEFAULT_EVENTS
    ) -> SubscriptionView:
        """Create a subscription (the provider checks our /webhooks/verify) and store it."""
        url = url or self.default_url()
        self._require_box()
        with self.client() as client:
            created = client.create_webhook(url, list(events))
        with self.db.transaction() as session:
            row = self._store_subscription(session, created, utcnow())
            view = self._view(row)
        self.invalidate_cache()
        log.info("registered subscription %s for %s (secret %s)", view.id, url, view.secret_hint)
        return view

    def list_stored(self) -> list[SubscriptionView]:
        with self.db.transaction() as session:
            rows = session.scalars(
                select(SubscriptionRow).order_by(
                    SubscriptionRow.created_at.desc(), SubscriptionRow.id
                )
            ).all()
            return [self._view(row) for row in rows]

    def list_at_provider(self) -> list[WebhookSubscription]:
        with self.client() as client:
            return client.list_webhooks()

    def delete(self, subscription_id: str) -> bool:
        """Delete at the provider and retire locally. False when neither side knew it."""
        with self.client() as client:
            try:
                client.delete_webhook(subscription_id)
                deleted_remotely = True
            except NotFound:
                deleted_remotely = False
        with self.db.transaction() as session:
            row = session.get(SubscriptionRow, subscription_id)
            if row is not None:
                _retire_subscription(row, utcnow())
        self.invalidate_cache()
        return deleted_remotely or row is not None

    # --- subscription rotation ---------------------------------------------------------------

    def rotate(self, now: datetime | None = None) -> list[str]:
        """On demand: move any open rotation on (finishing it if its window has passed);
        with none open, start one for every active subscription."""
        now = now or utcnow()
        open_ids = self._open_rotation_ids(RotationKind.SUBSCRIPTION)
        if open_ids:
            return [self._advance(rotation_id, now) for rotation_id in open_ids]
        with self.db.transaction() as session:
            active = session.scalars(
                select(SubscriptionRow.id).where(
                    SubscriptionRow.status == SubscriptionStatus.ACTIVE.value
                )
            ).all()
        if not active:
            raise SubscriptionError(
                "there is no active subscription to rotate; run `flask subscriptions register`"
            )
        return [
            self._advance(self._start(RotationKind.SUBSCRIPTION, old, now), now) for old in active
        ]

    def rotate_if_due(self, now: datetime | None = None) -> list[str]:
        """For beat: move open rotations on; start one for each subscription older than
        ROTATION_DAYS (0: never)."""
        now = now or utcnow()
        open_ids = self._open_rotation_ids(RotationKind.SUBSCRIPTION)
        messages = [self._advance(rotation_id, now) for rotation_id in open_ids]
        if open_ids or not self.settings.rotation_days:
            return messages
        cutoff = now - timedelta(days=self.settings.rotation_days)
        with self.db.transaction() as session:
            due = session.scalars(
                select(SubscriptionRow.id).where(
                    SubscriptionRow.status == SubscriptionStatus.ACTIVE.value,
                    SubscriptionRow.created_at <= cutoff,
                )
            ).all()
        for old in due:
            messages.append(self._advance(self._start(RotationKind.SUBSCRIPTION, old, now), now))
        return messages

    def rotations(self, *, open_only: bool = False) -> list[RotationView]:
        grace = timedelta(hours=self.settings.rotation_grace_hours)
        query = select(RotationRow).order_by(RotationRow.started_at.desc(), RotationRow.id.desc())
        if open_only:
            query = query.where(RotationRow.step != RotationStep.DONE.value)
        with self.db.transaction() as session:
            return [
                RotationView(
                    id=row.id,
                    kind=row.kind,
                    old_id=row.old_id,
                    new_id=row.new_id,
                    step=row.step,
                    started_at=row.started_at,
                    window_ends_at=row.window_started_at + grace
                    if row.window_started_at and row.kind == RotationKind.SUBSCRIPTION
                    else None,
                )
                for row in session.scalars(query)
            ]

    # --- API key rotation --------------------------------------------------------------------

    def rotate_api_key(self, now: datetime | None = None) -> list[str]:
        """Create a new key, make it current, delete the old one (resuming an unfinished run)."""
        now = now or utcnow()
        self._require_box()
        open_ids = self._open_rotation_ids(RotationKind.API_KEY)
        if open_ids:
            return [self._advance(rotation_id, now) for rotation_id in open_ids]
        with self.db.transaction() as session:
            row = _current_key_row(session)
            old_id = row.id if row else self.settings.assisters_api_key_id
        self._current_api_key()  # fail before starting when there is no key at all
        return [self._advance(self._start(RotationKind.API_KEY, old_id, now), now)]

    def api_keys(self) -> list[ApiKeyView]:
        """The stored keys by id and status (never the key), newest first; with none current,
        the one ASSISTERS_API_KEY configures, under ASSISTERS_API_KEY_ID when that is set."""
        with self.db.transaction() as session:
            rows = session.scalars(
                select(ApiKeyRow).order_by(ApiKeyRow.created_at.desc(), ApiKeyRow.id)
            ).all()
            keys = [
                ApiKeyView(row.id, row.name, row.status, row.created_at, row.deleted_at)
                for row in rows
            ]
            configured_id = self.settings.assisters_api_key_id
            # The configured key has no row; a rotation away from it says where it stands.
            replaced_by = session.scalars(
                select(RotationRow.step).where(
                    RotationRow.kind == RotationKind.API_KEY.value,
                    RotationRow.old_id == configured_id
                    if configured_id
                    else RotationRow.old_id.is_(None),
                )
            ).first()
        if self.settings.assisters_api_key and not any(k.id == configured_id for k in keys):
            status = ApiKeyStatus.CURRENT
            if replaced_by is not None:
                done = replaced_by == RotationStep.DONE
                status = ApiKeyStatus.DELETED if done else ApiKeyStatus.RETIRING
            keys.append(
                ApiKeyView(
                    configured_id or "(ASSISTERS_API_KEY_ID unset)",
                    "ASSISTERS_API_KEY",
                    status.value,
                    None,
                    None,
                )
            )
        return keys

    # --- secrets at rest ---------------------------------------------------------------------

    def reencrypt(self) -> int:
        """Rewrap every stored secret under the newest key; then older keys can be dropped."""
        self._require_box()
        count = 0
        with self.db.transaction() as session:
            for sub in session.scalars(
                select(SubscriptionRow).where(SubscriptionRow.secret_encrypted.is_not(None))
            ):
                sub.secret_encrypted = self.box.rewrap(sub.secret_encrypted or "")
                count += 1
            for key in session.scalars(
                select(ApiKeyRow).where(ApiKeyRow.key_encrypted.is_not(None))
            ):
                key.key_encrypted = self.box.rewrap(key.key_encrypted or "")
                count += 1
        self.invalidate_cache()
        return count

    # --- rotation steps ----------------------------------------------------------------------

    def _open_rotation_ids(self, kind: RotationKind) -> list[int]:
        with self.db.transaction() as session:
            return list(
                session.scalars(
                    select(RotationRow.id)
                    .where(RotationRow.kind == kind.value, RotationRow.step != RotationStep.DONE)
                    .order_by(RotationRow.id)
                )
            )

    def _start(self, kind: RotationKind, old_id: str | None, now: datetime) -> int:
        try:
            with self.db.transaction() as session:
                rotation = RotationRow(
                    kind=kind.value,
                    old_id=old_id,
                    idempotency_key=uuid.uuid4().hex,
                    step=RotationStep.CREATE_NEW.value,
                    started_at=now,
                )
                session.add(rotation)
                session.flush()
                return rotation.id
        except sa_exc.IntegrityError:
            # Another run started this very rotation a moment ago: continue that one.
            with self.db.transaction() as session:
                return session.scalars(
                    select(RotationRow.id).where(
                        RotationRow.kind == kind.value, RotationRow.old_id == old_id
                    )
                ).one()

    def _advance(self, rotation_id: int, now: datetime) -> str:
        """Run the rotation's next steps as far as time allows; say where it stands."""
        while True:
            with self.db.transaction() as session:
                rotation = session.get(RotationRow, rotation_id)
                assert rotation is not None
                kind, step = RotationKind(rotation.kind), RotationStep(rotation.step)
                old_id, new_id = rotation.old_id, rotation.new_id
                window_started_at = rotation.window_started_at
                idempotency_key = rotation.idempotency_key
                started_at = rotation.started_at
                note = rotation.note
            if step is RotationStep.DONE:
                return _describe_done(kind, old_id, new_id, note)
            if kind is RotationKind.SUBSCRIPTION and step is RotationStep.CREATE_NEW:
                self._create_replacement_subscription(rotation_id, old_id, idempotency_key, now)
            elif kind is RotationKind.SUBSCRIPTION:
                assert window_started_at is not None
                # Read the grace setting now: changing it affects rotations already running.
                window_ends = window_started_at + timedelta(
                    hours=self.settings.rotation_grace_hours
                )
                if now < window_ends:
                    return (
                        f"rotating {old_id} → {new_id}: both secrets are accepted until "
                        f"{window_ends.isoformat(timespec='seconds')}"
                    )
                self._retire_old_subscription(rotation_id, old_id, now)
            elif step is RotationStep.CREATE_NEW:
                self._create_replacement_key(rotation_id, old_id, idempotency_key, started_at, now)
            else:
                self._retire_old_key(rotation_id, old_id, now)

    def _create_replacement_subscription(
        self, rotation_id: int, old_id: str | None, idempotency_key: str, now: datetime
    ) -> None:
        with self.db.transaction() as session:
            old = session.get(SubscriptionRow, old_id) if old_id else None
            url, events = (old.url, list(old.events)) if old else ("", [])
            gone = old is None or old.status == SubscriptionStatus.RETIRED
        if gone:
            with self.db.transaction() as session:
                _finish(session, rotation_id, now, note="the old subscription was deleted")
            return
        with self.client() as client:
            created = client.create_webhook(url, events, idempotency_key=idempotency_key)
        with self.db.transaction() as session:
            rotation = session.get(RotationRow, rotation_id, with_for_update=True)
            assert rotation is not None
            if rotation.step == RotationStep.CREATE_NEW:  # else a concurrent run did it
                self._store_subscription(session, created, now)
                old = session.get(SubscriptionRow, old_id)
                if old is not None and old.status == SubscriptionStatus.ACTIVE:
                    old.status = SubscriptionStatus.RETIRING.value
                rotation.new_id = created.id
                rotation.window_started_at = now
                rotation.step = RotationStep.RETIRE_OLD.value
        self.invalidate_cache()
        log.info(
            "rotation %s: created subscription %s to replace %s", rotation_id, created.id, old_id
        )

    def _retire_old_subscription(self, rotation_id: int, old_id: str | None, now: datetime) -> None:
        if old_id:
            # NotFound: an earlier run deleted it and stopped before recording that.
            with self.client() as client, contextlib.suppress(NotFound):
                client.delete_webhook(old_id)
        with self.db.transaction() as session:
            old = session.get(SubscriptionRow, old_id) if old_id else None
            if old is not None:
                _retire_subscription(old, now)
            _finish(session, rotation_id, now)
        self.invalidate_cache()
        log.info("rotation %s: deleted subscription %s, its secret retired", rotation_id, old_id)

    def _create_replacement_key(
        self,
        rotation_id: int,
        old_id: str | None,
        idempotency_key: str,
        started_at: datetime,
        now: datetime,
    ) -> None:
        # Named after the rotation, not this run: a run resuming one whose answer was lost must
        # send the same request, or the provider refuses to replay it for the idempotency key.
        name = f"assisters-webhooks-{started_at:%Y%m%dT%H%M%S}"
        with self.client() as client:
            created = client.create_key(name, idempotency_key=idempotency_key)
        if not created.key:
            raise SubscriptionError("the Assisters API created a key but did not return it")
        with self.db.transaction() as session:
            rotation = session.get(RotationRow, rotation_id, with_for_update=True)
            assert rotation is not None
            if rotation.step == RotationStep.CREATE_NEW:
                for current in session.scalars(
                    select(ApiKeyRow).where(ApiKeyRow.status == ApiKeyStatus.CURRENT.value)
                ):
                    current.status = ApiKeyStatus.RETIRING.value
                if session.get(ApiKeyRow, created.id) is None:
                    session.add(
                        ApiKeyRow(
                            id=created.id,
                            name=created.name,
                            key_encrypted=self.box.encrypt(created.key),
                            status=ApiKeyStatus.CURRENT.value,
                            created_at=now,
                        )
                    )
                rotation.new_id = created.id
                rotation.window_started_at = now
                rotation.step = RotationStep.RETIRE_OLD.value
        log.info("rotation %s: created API key %s (%s)", rotation_id, created.id, mask(created.key))

    def _retire_old_key(self, rotation_id: int, old_id: str | None, now: datetime) -> None:
        note = None
        if old_id is None:
            note = (
                "the key the service started with has no known id (ASSISTERS_API_KEY_ID is "
                "unset): delete it by hand at the provider"
            )
        else:
            # Authenticated with the new key by now; NotFound: an earlier run deleted it.
            with self.client() as client, contextlib.suppress(NotFound):
                client.delete_key(old_id)
        with self.db.transaction() as session:
            old = session.get(ApiKeyRow, old_id) if old_id else None
            if old is not None:
                old.status = ApiKeyStatus.DELETED.value
                old.key_encrypted = None
                old.deleted_at = now
            _finish(session, rotation_id, now, note=note)

    # --- helpers -----------------------------------------------------------------------------

    def _require_box(self) -> None:
        if not self.box.configured:
            raise SubscriptionError(
                "ENCRYPTION_KEYS is not set: secrets cannot be stored without it "
                "(generate one with `flask secrets generate-key`)"
            )

    def _store_subscription(
        self, session: Session, created: WebhookSubscription, now: datetime
    ) -> SubscriptionRow:
        existing = session.get(SubscriptionRow, created.id)
        if existing is not None:
            return existing
        if not created.secret:
            raise SubscriptionError("the Assisters API created a subscription without a secret")
        try:
            parse_secret(created.secret)
        except SecretFormatError as exc:
            raise SubscriptionError(
                f"the subscription's signing secret is unusable: {exc}"
            ) from None
        row = SubscriptionRow(
            id=created.id,
            url=created.url,
            events=list(created.events),
            secret_encrypted=self.box.encrypt(created.secret),
            status=SubscriptionStatus.ACTIVE.value,
            created_at=now,
        )
        session.add(row)
        session.flush()
        return row

    def _view(self, row: SubscriptionRow) -> SubscriptionView:
        hint = ""
        if row.secret_encrypted:
            try:
                hint = mask(self.box.decrypt(row.secret_encrypted))
            except SecretBoxError:
                hint = "(cannot be decrypted)"
        return SubscriptionView(
            id=row.id,
            url=row.url,
            events=tuple(row.events),
            status=row.status,
            created_at=row.created_at,
            retired_at=row.retired_at,
            secret_hint=hint,
        )


def _current_key_row(session: Session) -> ApiKeyRow | None:
    return session.scalars(
        select(ApiKeyRow)
        .where(ApiKeyRow.status == ApiKeyStatus.CURRENT.value)
        .order_by(ApiKeyRow.created_at.desc())
        .limit(1)
    ).first()


def _retire_subscription(row: SubscriptionRow, now: datetime) -> None:
    if row.status != SubscriptionStatus.RETIRED:
        row.status = SubscriptionStatus.RETIRED.value
        row.secret_encrypted = None
        row.retired_at = now


def _finish(session: Session, rotation_id: int, now: datetime, *, note: str | None = None) -> None:
    rotation = session.get(RotationRow, rotation_id, with_for_update=True)
    assert rotation is not None
    if rotation.step != RotationStep.DONE:
        rotation.step = RotationStep.DONE.value
        rotation.finished_at = now
        rotation.note = note


def _describe_done(
    kind: RotationKind, old_id: str | None, new_id: str | None, note: str | None
) -> str:
    if kind is RotationKind.SUBSCRIPTION and new_id is None:
        return f"rotation of {old_id} ended: {note}"
    if kind is RotationKind.SUBSCRIPTION:
        return f"rotated {old_id} → {new_id}: the old subscription is deleted"
    if old_id is None:
        return (
            f"switched to API key {new_id}; the key the service started with has no known id "
            "(ASSISTERS_API_KEY_ID is unset): delete it by hand at the provider"
        )
    return f"switched to API key {new_id}; the old key {old_id} is deleted"
