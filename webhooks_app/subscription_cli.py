"""``flask subscriptions|keys|secrets ...``: thin commands over ``webhooks_app.subscriptions``.

Provider errors and operator mistakes exit non-zero with one line naming the problem; no command
ever prints a secret (they are masked: ``whsec_…a1B2``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from flask.cli import AppGroup

from webhooks_app.assisters import AssistersError
from webhooks_app.secretbox import SecretBoxError, generate_key
from webhooks_app.service import current_service
from webhooks_app.subscriptions import DEFAULT_EVENTS, SubscriptionError, Subscriptions


@contextmanager
def _reported() -> Iterator[None]:
    try:
        yield
    except AssistersError as exc:
        status = f" ({exc.status} {exc.code})" if exc.status else ""
        raise click.ClickException(f"the Assisters API refused{status}: {exc.message}") from None
    except (SubscriptionError, SecretBoxError) as exc:
        raise click.ClickException(str(exc)) from None


def _subscriptions() -> Subscriptions:
    return current_service().subscriptions


def _echo_all(lines: Callable[[], list[str]]) -> None:
    with _reported():
        for line in lines():
            click.echo(line)


subscriptions_cli = AppGroup("subscriptions", help="Our webhook subscriptions at the provider.")


@subscriptions_cli.command("register")
@click.option("--url", default=None, help="Default: $PUBLIC_BASE_URL/webhooks/events.")
@click.option(
    "--events",
    default=",".join(DEFAULT_EVENTS),
    show_default=True,
    help="Comma-separated event types.",
)
def register(url: str | None, events: str) -> None:
    """Subscribe (the provider checks GET /webhooks/verify first) and store the secret."""
    wanted = [e.strip() for e in events.split(",") if e.strip()]
    if not wanted:
        raise click.BadParameter("name at least one event type", param_hint="--events")
    with _reported():
        view = _subscriptions().register(url, wanted)
    click.echo(
        f"registered {view.id} for {view.url} ({', '.join(view.events)}); "
        f"signing secret {view.secret_hint} stored and accepted now"
    )


@subscriptions_cli.command("list")
@click.option("--provider", is_flag=True, help="List what the provider has instead.")
def list_subscriptions(provider: bool) -> None:
    """Stored subscriptions (secrets masked), or the provider's list with --provider."""
    with _reported():
        if provider:
            for remote in _subscriptions().list_at_provider():
                click.echo(f"{remote.id}  {remote.url}  {','.join(remote.events)}")
            return
        for view in _subscriptions().list_stored():
            click.echo(
                f"{view.id}  {view.status:<8}  {view.url}  {','.join(view.events)}  "
                f"{view.secret_hint or '-'}  created {view.created_at:%Y-%m-%d %H:%M}"
            )
        for rotation in _subscriptions().rotations(open_only=True):
            until = rotation.window_ends_at
            click.echo(
                f"rotation {rotation.id} ({rotation.kind}): {rotation.old_id} → "
                f"{rotation.new_id or '…'}, next step {rotation.step}"
                + (f" after {until:%Y-%m-%d %H:%M} UTC" if until else "")
            )


@subscriptions_cli.command("delete")
@click.argument("subscription_id")
def delete(subscription_id: str) -> None:
    """Delete SUBSCRIPTION_ID at the provider and stop accepting its secret."""
    with _reported():
        known = _subscriptions().delete(subscription_id)
    if not known:
        raise click.ClickException(f"no subscription {subscription_id} here or at the provider")
    click.echo(f"deleted {subscription_id}; its secret is no longer accepted")


@subscriptions_cli.command("rotate")
def rotate() -> None:
    """Start a rotation, or move the open one on (finishing it once its window has passed)."""
    _echo_all(_subscriptions().rotate)


keys_cli = AppGroup("keys", help="The service's Assisters API key.")


@keys_cli.command("rotate")
def rotate_key() -> None:
    """Create a new API key, switch to it, delete the old one."""
    _echo_all(_subscriptions().rotate_api_key)


secrets_cli = AppGroup("secrets", help="Secrets at rest (ENCRYPTION_KEYS).")


@secrets_cli.command("reencrypt")
def reencrypt() -> None:
    """Rewrap every stored secret under the newest of ENCRYPTION_KEYS."""
    with _reported():
        count = _subscriptions().reencrypt()
    click.echo(f"re-encrypted {count} secrets under the newest key")


@secrets_cli.command("generate-key")
def generate() -> None:
    """Print a new key to put first in ENCRYPTION_KEYS."""
    click.echo(generate_key())
