"""``python -m webhooks_app.emulator serve|trigger``: the emulator without the service's app."""

from webhooks_app.emulator.cli import emulator_cli

emulator_cli(prog_name="python -m webhooks_app.emulator")
