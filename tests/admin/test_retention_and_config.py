"""Retention purge, the admin settings, the password hash helper, and migration 0003."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from argon2 import PasswordHasher
from sqlalchemy import create_engine, func, select

from webhooks_app import engine, retention, store
from webhooks_app.config import DEFAULT_PII_MASK_FIELDS, ConfigError, Settings
from webhooks_app.extensions import PURGE_TASK, celery_config
from webhooks_app.service import Service
from webhooks_app.store import AuditRow, Base, EventRow, utcnow

PostEvent = Callable[..., Any]

# Any server: these tests read settings, they never connect.
PG = {"DATABASE_URL": "postgresql://db/app"}


def store_event(service: Service, event_id: str, age: timedelta) -> None:
    received_at = utcnow() - age
    execute = service.db.execute_autocommit
    engine.store(
        execute,
        store.NewEvent(
            id=event_id,
            type="chat.completion",
            raw_body=orjson.dumps({"event": "chat.completion", "data": {"id": event_id}}),
            headers={},
            data_id=event_id,
            webhook_timestamp=0,
            received_at=received_at,
            due_at=received_at + timedelta(seconds=10),
        ),
    )


def test_purge_deletes_only_expired_events_in_batches(
    service: Service, post_event: PostEvent
) -> None:
    for n in range(5):
        store_event(service, f"old_{n}", timedelta(days=31))
    store_event(service, "recent", timedelta(days=29))
    post_event("model.failed", {"id": "m", "fail_handler": "alert"}, msg_id="msg_new")
    service.dispatcher.process_events(["msg_new"])["msg_new"]
    deleted = retention.purge_expired(service.db.sessions, 30, batch_size=2)
    assert deleted == 5
    with service.db.transaction() as session:
        left = set(session.scalars(select(EventRow.id)))
        assert left == {"recent", "msg_new"}
        entry = session.scalars(select(AuditRow).where(AuditRow.action == "events.purge")).one()
        assert (entry.actor, entry.details["deleted"]) == ("system", 5)
    assert retention.purge_expired(service.db.sessions, 30) == 0


def test_purge_keeps_everything_without_a_retention(service: Service) -> None:
    store_event(service, "ancient", timedelta(days=3650))
    assert retention.purge_expired(service.db.sessions, None) == 0
    with service.db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(EventRow)) == 1


def test_beat_schedules_the_purge_only_with_a_retention(tmp_path: Path) -> None:
    plain = celery_config(Settings(instance_dir=tmp_path))
    assert all(entry["task"] != PURGE_TASK for entry in plain["beat_schedule"].values())
    kept = celery_config(Settings(instance_dir=tmp_path, event_retention_days=30))
    assert any(entry["task"] == PURGE_TASK for entry in kept["beat_schedule"].values())


def test_admin_settings_from_the_environment() -> None:
    hashed = PasswordHasher().hash("x" * 12)
    settings = Settings.from_env(
        {
            **PG,
            "ADMIN_USERNAME": "ops",
            "ADMIN_PASSWORD_HASH": hashed,
            "EVENT_RETENTION_DAYS": "90",
            "PII_MASK_FIELDS": "email, data.messages.*.content ,",
            "ADMIN_LOGIN_RATE_LIMIT": "3 per minute",
        }
    )
    assert settings.admin_login_enabled
    assert settings.event_retention_days == 90
    assert settings.pii_mask_fields == ("email", "data.messages.*.content")
    assert settings.admin_login_limit == "3 per minute"
    defaults = Settings.from_env(PG)
    assert not defaults.admin_login_enabled
    assert defaults.event_retention_days is None
    assert defaults.pii_mask_fields == DEFAULT_PII_MASK_FIELDS
    assert Settings.from_env({**PG, "PII_MASK_FIELDS": ""}).pii_mask_fields == ()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ADMIN_PASSWORD_HASH": "plaintext"}, "ADMIN_PASSWORD_HASH"),
        ({"ADMIN_PASSWORD_HASH": "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA"}, "Argon2id"),
        ({"EVENT_RETENTION_DAYS": "0"}, "EVENT_RETENTION_DAYS"),
        ({"EVENT_RETENTION_DAYS": "soon"}, "EVENT_RETENTION_DAYS"),
        ({"ADMIN_LOGIN_RATE_LIMIT": "lots"}, "ADMIN_LOGIN_RATE_LIMIT"),
    ],
)
def test_bad_admin_settings_stop_startup(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named) as caught:
        Settings.from_env({**PG, **env})
    assert "plaintext" not in str(caught.value)


def test_hash_password_prints_an_argon2id_hash() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhooks_app.admin.hash_password"],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        check=True,
    )
    hashed = result.stdout.strip()
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, "a long enough password")
    short = subprocess.run(
        [sys.executable, "-m", "webhooks_app.admin.hash_password"],
        input="short\n",
        capture_output=True,
        text=True,
    )
    assert short.returncode == 1
    assert "at least" in short.stderr


def assert_schema_matches_models(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_migrations_match_the_models_on_postgresql(postgres_url: str) -> None:
    assert_schema_matches_models(postgres_url)
