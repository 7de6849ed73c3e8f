"""``flask`` commands: database migrations and delivery upkeep."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson
from flask import Flask
from flask.cli import AppGroup

from webhooks_app import audit, export, masking, params, relay
from webhooks_app.service import current_service
from webhooks_app.store import EventStatus

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


@events_cli.command("export")
@click.option("--type", "event_type", help="Only events of this type.")
@click.option("--status", type=click.Choice([s.value for s in EventStatus]), help="Only these.")
@click.option("--since", help="Received at or after (YYYY-MM-DD, ISO 8601 or Unix seconds).")
@click.option("--until", help="Received before (a date counts whole).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many, newest first.")
@click.option(
    "--unmasked",
    is_flag=True,
    help="Keep the PII_MASK_FIELDS values (recorded in the audit log; keep the file private).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="File to write (default: stdout).",
)
def events_export(
    event_type: str | None,
    status: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    unmasked: bool,
    output: str,
) -> None:
    """Write stored events as JSON Lines, newest first, masked unless --unmasked.

    webhooks_app.testing.load_events reads the file back: real traffic as test fixtures.
    """
    service = current_service()
    given = {"type": event_type, "status": status, "since": since, "until": until}
    try:
        filters = params.event_filter({k: v for k, v in given.items() if v})
    except params.ParamError as exc:
        raise click.BadParameter(exc.message, param_hint=f"--{exc.param}") from None
    rules = None if unmasked else masking.MaskRules.parse(service.settings.pii_mask_fields)
    if unmasked:
        with service.db.transaction() as session:
            audit.record(
                session,
                actor="cli",
                action="events.export_unmasked",
                details={**given, "limit": limit},
            )
    count = 0
    with click.open_file(output, "wb") as out:
        for line in export.export_events(service.db.transaction, filters, rules=rules, limit=limit):
            out.write(orjson.dumps(line) + b"\n")
            count += 1
    if output != "-":
        masked = "unmasked" if unmasked else "masked by PII_MASK_FIELDS"
        click.echo(f"exported {count} events to {output} ({masked})", err=True)


def register(app: Flask) -> None:
    from webhooks_app import subscription_cli
    from webhooks_app.emulator.cli import emulator_cli

    app.cli.add_command(db_cli)
    app.cli.add_command(events_cli)
    app.cli.add_command(subscription_cli.subscriptions_cli)
    app.cli.add_command(subscription_cli.keys_cli)
    app.cli.add_command(subscription_cli.secrets_cli)
    app.cli.add_command(emulator_cli)
