"""Real PostgreSQL and Redis for tests: a database per test session, a Redis DB number claimed
so that parallel sessions on one machine never share queues. With CI set, an unreachable
service fails the run instead of skipping."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_SERVER_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
CLAIM_PREFIX = "assisters-webhooks-tests:db:"


def unavailable(what: str, error: Exception) -> None:
    message = f"{what} is not reachable ({type(error).__name__}: {error})"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI requires it", pytrace=False)
    pytest.skip(message)


@contextmanager
def temporary_postgres_database() -> Iterator[str]:
    name = f"aw_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        unavailable("PostgreSQL", exc)
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def claimed_redis_database() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_SERVER_URL + "/0", socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        unavailable("Redis", exc)
    token = uuid.uuid4().hex
    for number in range(1, 16):
        if client.set(CLAIM_PREFIX + str(number), token, nx=True, ex=3600):
            break
    else:
        pytest.fail("no free Redis database number (1-15) for this test session")
    database = redis.Redis.from_url(f"{REDIS_SERVER_URL}/{number}")
    database.flushdb()
    try:
        yield f"{REDIS_SERVER_URL}/{number}"
    finally:
        database.flushdb()
        if client.get(CLAIM_PREFIX + str(number)) == token.encode():
            client.delete(CLAIM_PREFIX + str(number))
