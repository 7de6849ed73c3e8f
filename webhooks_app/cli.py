"""``flask`` commands: database migrations and delivery upkeep."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from flask import Flask
from flask.cli import AppGroup

from webhooks_app import relay
from webhooks_app.service import current_service

if TYPE_CHECKING:
    from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str) -> Config:
    # Imported here so the web and worker processes never load Alembic.
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    return config


db_cli = AppGroup("db", help="Database migrations (Alembic).")


@db_cli.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from alembic import command

    command.upgrade(alembic_config(current_service().settings.database_url), revision)


@db_cli.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION."""
    from alembic import command

    command.downgrade(alembic_config(current_service().settings.database_url), revision)


@db_cli.command("current")
def db_current() -> None:
    """Show the applied revision."""
    from alembic import command

    command.current(alembic_config(current_service().settings.database_url))


events_cli = AppGroup("events", help="Stored events.")


@events_cli.command("sweep")
def events_sweep() -> None:
    """Hand every overdue event to the broker now (beat does this every few seconds)."""
    service = current_service()
    count = relay.sweep(service.db, service.publish, service.settings)
    click.echo(f"re-published {count} overdue events")


def register(app: Flask) -> None:
    from webhooks_app import subscription_cli
    from webhooks_app.emulator.cli import emulator_cli

    app.cli.add_command(db_cli)
    app.cli.add_command(events_cli)
    app.cli.add_command(subscription_cli.subscriptions_cli)
    app.cli.add_command(subscription_cli.keys_cli)
    app.cli.add_command(subscription_cli.secrets_cli)
    app.cli.add_command(emulator_cli)
