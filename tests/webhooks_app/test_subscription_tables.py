"""Migration 0002 matches the models, on PostgreSQL and SQLite, and downgrades cleanly."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from webhooks_app.cli import alembic_config
from webhooks_app.store import Base

NEW_TABLES = {"subscriptions", "api_keys", "rotations"}


def drift(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_postgres_schema_matches_the_models(postgres_url: str) -> None:
    assert drift(postgres_url) == []


def test_sqlite_upgrades_downgrades_and_matches(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'migrated.sqlite3'}"
    config = alembic_config(url)
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")
    assert drift(url) == []
    command.downgrade(config, "0001")
    engine = create_engine(url)
    try:
        assert not NEW_TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    command.upgrade(config, "head")
    assert drift(url) == []
