"""``emulator serve`` and ``emulator trigger``: plain click, so they run with or without the
service's configuration (``flask emulator ...`` or ``python -m webhooks_app.emulator ...``)."""

from __future__ import annotations

import json
import logging

import click
import httpx
from werkzeug.serving import WSGIRequestHandler, make_server

from webhooks_app.emulator.app import (
    DEFAULT_API_KEY,
    DEFAULT_API_KEY_ID,
    EVENT_TYPES,
    EmulatorConfig,
    create_emulator_app,
)
from webhooks_app.secretbox import mask


class PlainRequestLog(WSGIRequestHandler):
    """Werkzeug's request line without its ANSI colours, which end up raw inside log files and
    JSON log lines."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        line = getattr(self, "requestline", "")
        self.log("info", '"%s" %s %s', line.translate(self._control_char_table), code, size)


emulator_cli = click.Group("emulator", help="A local Assisters API emulator (tests, offline).")


@emulator_cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, envvar="EMULATOR_PORT", type=int)
@click.option(
    "--api-key",
    default=DEFAULT_API_KEY,
    envvar="EMULATOR_API_KEY",
    help="The key it accepts at start (its id is key_emulator_bootstrap).",
)
@click.option(
    "--retry-compression",
    default=1.0,
    show_default=True,
    envvar="EMULATOR_RETRY_COMPRESSION",
    type=click.FloatRange(min=1.0),
    help="Divide the delivery retry schedule (0 s, 5 s, 5 min, 30 min, 2 h, ...) by this.",
)
@click.option(
    "--rate-limit",
    default=600,
    show_default=True,
    envvar="EMULATOR_RATE_LIMIT",
    type=click.IntRange(min=0),
    help="Requests per key per minute before 429 (0: no limit).",
)
def serve(host: str, port: int, api_key: str, retry_compression: float, rate_limit: int) -> None:
    """Run the emulator until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = EmulatorConfig(
        api_key=api_key,
        api_key_id=DEFAULT_API_KEY_ID,
        rate_limit=rate_limit,
        retry_compression=retry_compression,
    )
    server = make_server(
        host, port, create_emulator_app(config), threaded=True, request_handler=PlainRequestLog
    )
    click.echo(
        f"Assisters emulator on http://{host}:{server.server_port}/v1 "
        f"(API key {mask(api_key)}, id {DEFAULT_API_KEY_ID}); Ctrl-C stops it",
        err=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@emulator_cli.command("trigger")
@click.argument("event_type", type=click.Choice(EVENT_TYPES))
@click.option(
    "--emulator-url",
    default="http://127.0.0.1:8090",
    show_default=True,
    envvar="EMULATOR_URL",
    help="Where the emulator runs.",
)
@click.option("--data", "data_json", default=None, help="JSON object merged into the event data.")
def trigger(event_type: str, emulator_url: str, data_json: str | None) -> None:
    """Make the running emulator deliver a test EVENT_TYPE to its subscriptions."""
    data = None
    if data_json:
        try:
            data = json.loads(data_json)
        except ValueError:
            raise click.BadParameter("not JSON", param_hint="--data") from None
    try:
        answer = httpx.post(
            emulator_url.rstrip("/") + "/_emulator/trigger",
            json={"event": event_type, "data": data},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(
            f"the emulator at {emulator_url} is not reachable ({type(exc).__name__})"
        ) from None
    if not answer.is_success:
        raise click.ClickException(answer.json()["error"]["message"])
    body = answer.json()
    if not body["subscriptions"]:
        raise click.ClickException(f"no subscription listens to {event_type}; nothing was sent")
    click.echo(
        f"sent {event_type} {body['id']} (data.id {body['payload']['data']['id']}) "
        f"to {', '.join(body['subscriptions'])}"
    )
