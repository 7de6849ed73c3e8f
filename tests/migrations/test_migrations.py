"""The Alembic history: one head, and models and migrations that agree on both backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from tests.support.services import temporary_postgres_database
from webhooks_app.cli import alembic_config
from webhooks_app.store import Base


def config_for(url: str) -> object:
    config = alembic_config(url)
    config.attributes["configure_logging"] = False
    return config


@pytest.fixture
def empty_database() -> Iterator[str]:
    with temporary_postgres_database() as url:
        yield url


def test_there_is_a_single_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("postgresql+psycopg://"))
    assert len(script.get_heads()) == 1


def test_migrations_match_the_models(empty_database: str) -> None:
    command.upgrade(config_for(empty_database), "head")  # type: ignore[arg-type]
    engine = create_engine(empty_database)
    with engine.connect() as connection:
        diff = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
    engine.dispose()
    assert diff == []


def test_downgrade_to_base_and_back(empty_database: str) -> None:
    config = config_for(empty_database)
    command.upgrade(config, "head")  # type: ignore[arg-type]
    command.downgrade(config, "base")  # type: ignore[arg-type]
    engine = create_engine(empty_database)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    command.upgrade(config, "head")  # type: ignore[arg-type]
    engine = create_engine(empty_database)
    assert {t.name for t in Base.metadata.sorted_tables} <= set(inspect(engine).get_table_names())
    engine.dispose()
