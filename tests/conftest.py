"""Shared fixtures: real PostgreSQL and Redis, an app bound to them, signed deliveries."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from alembic import command
from argon2 import PasswordHasher
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from tests.support.emulator import RunningEmulator, running_emulator, served, server_url
from tests.support.services import claimed_redis_database, temporary_postgres_database
from tests.support.signing import TEST_SECRET, delivery
from webhooks_app import create_app
from webhooks_app.cli import alembic_config
from webhooks_app.config import Settings
from webhooks_app.service import Service
from webhooks_app.signatures import parse_secrets
from webhooks_app.store import Base

ADMIN_TOKEN = "test-admin-token"
ADMIN_USERNAME = "operator"
ADMIN_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def admin_password_hash() -> str:
    return PasswordHasher().hash(ADMIN_PASSWORD)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    with temporary_postgres_database() as url:
        config = alembic_config(url)
        config.attributes["configure_logging"] = False
        command.upgrade(config, "head")
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with claimed_redis_database() as url:
        yield url


@pytest.fixture
def settings(
    postgres_url: str, redis_url: str, tmp_path: Path, admin_password_hash: str
) -> Settings:
    return Settings(
        database_url=postgres_url,
        broker_url=redis_url,
        webhook_secrets=parse_secrets([TEST_SECRET]),
        admin_api_token=ADMIN_TOKEN,
        handlers_module="tests.support.handlers",
        instance_dir=tmp_path / "instance",
        secret_key="test-secret-key",
        retry_base_seconds=0.1,
        retry_max_seconds=1.0,
        handler_lease_seconds=3,
        broker_visibility_timeout=10,
        handoff_grace_seconds=2,
        testing=True,
        admin_username=ADMIN_USERNAME,
        admin_password_hash=admin_password_hash,
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    service: Service = app.extensions["webhooks"]
    with service.db.engine.begin() as connection:
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        connection.execute(text(f"TRUNCATE {tables} CASCADE"))
    service.db.dispose()
    # Each test starts with empty queues and login-limiter windows of its own.
    client = redis.Redis.from_url(settings.broker_url)
    client.flushdb()
    client.close()


@pytest.fixture
def service(app: Flask) -> Service:
    svc: Service = app.extensions["webhooks"]
    return svc


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def post_event(client: FlaskClient) -> Callable[..., Any]:
    """POST a signed delivery: ``post_event("chat.completion", {"id": "chat_1"}, msg_id=...)``."""

    def post(
        event_type: str = "chat.completion", data: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        body, headers = delivery(event_type, data, **kwargs)
        return client.post("/webhooks/events", data=body, headers=headers)

    return post


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[dict[str, Any]]]:
    """The runs of the test handlers (``tests.support.handlers``) in this process, in order."""
    log = tmp_path / "runs.jsonl"
    monkeypatch.setenv("TEST_HANDLER_LOG", str(log))

    def read() -> list[dict[str, Any]]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    return read


@pytest.fixture
def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# --- the provider emulator and a live service (subscriptions) -------------------------------

ENCRYPTION_KEY = "AHstXyj2TyE1A6GxoRSw6lkFyosaWYHyenAAY1Kf1i4="


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    """The Assisters API emulator as a real HTTP server (no rate limit, compressed retries)."""
    with running_emulator() as running:
        yield running


@dataclass
class LiveService:
    url: str
    app: Flask
    service: Service
    settings: Settings


@pytest.fixture
def live(settings: Settings, emulator: RunningEmulator) -> Iterator[LiveService]:
    """The service served over HTTP, talking to the emulator, with stored secrets only."""
    with served() as server:
        url = server_url(server)
        live_settings = settings.replace(
            webhook_secrets=(),
            encryption_keys=(ENCRYPTION_KEY,),
            assisters_api_base=emulator.api_base,
            assisters_api_key=emulator.api_key,
            assisters_api_key_id=emulator.api_key_id,
            public_base_url=url,
            # Tests look at the database directly; the cache itself has its own test.
            stored_secrets_cache_seconds=0.0,
        )
        app = create_app(live_settings)
        server.app = app
        service: Service = app.extensions["webhooks"]
        try:
            yield LiveService(url, app, service, live_settings)
        finally:
            server.app = Flask("stopped")
            with service.db.engine.begin() as connection:
                tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
                connection.execute(text(f"TRUNCATE {tables} CASCADE"))
            service.db.dispose()


# --- the admin page ----------------------------------------------------------------------


@pytest.fixture
def admin_client(app: Flask) -> FlaskClient:
    """A test client logged in to the admin page."""
    client = app.test_client()
    login(client)
    return client


def csrf_token(client: FlaskClient, path: str = "/admin/login") -> str:
    """The CSRF token a page of ``path`` carries for this client's session."""
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert found, f"no CSRF token on {path}"
    return found.group(1)


def login(
    client: FlaskClient, username: str = ADMIN_USERNAME, password: str = ADMIN_PASSWORD
) -> Any:
    token = csrf_token(client)
    return client.post(
        "/admin/login",
        data={"username": username, "password": password, "csrf_token": token},
    )
