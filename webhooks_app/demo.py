"""``make demo``: the whole loop in one command, on the embedded default.

It runs ``make run``'s processes plus the Assisters emulator (``webhooks_app.emulator``), points
the service at the emulator, registers the subscription through it (the emulator checks
``GET /webhooks/verify`` and hands back the signing secret, which the service stores), makes it
deliver one ``chat.completion`` and one ``model.failed``, and prints the admin link. The
handlers' log lines (``handlers.py``) appear in the worker's output. Ctrl-C stops it all.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from webhooks_app import devserver
from webhooks_app.emulator.app import DEFAULT_API_KEY, DEFAULT_API_KEY_ID

EVENTS = (
    ("chat.completion", {"id": "chat_demo_1", "model": "assisters-chat-v1", "status": "completed"}),
    ("model.failed", {"id": "chat_demo_2", "error": {"message": "the demo's planned failure"}}),
)


def demo_environment(env: Mapping[str, str], port: int, emulator_port: int) -> dict[str, str]:
    """The service's settings for the emulator: its API, its bootstrap key, our public URL."""
    return {
        **env,
        "ASSISTERS_API_BASE": f"http://127.0.0.1:{emulator_port}/v1",
        "ASSISTERS_API_KEY": DEFAULT_API_KEY,
        "ASSISTERS_API_KEY_ID": DEFAULT_API_KEY_ID,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "EMULATOR_PORT": str(emulator_port),
        # Deliveries the service refused are tried again in seconds, not minutes.
        "EMULATOR_RETRY_COMPRESSION": env.get("EMULATOR_RETRY_COMPRESSION", "100"),
    }


def _wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def play(base: str, token: str | None, env: Mapping[str, str]) -> None:
    """Register through the emulator, trigger the two events, print where to look."""
    emulator = f"http://127.0.0.1:{env['EMULATOR_PORT']}"
    say = devserver.say
    try:
        _wait_for(f"{emulator}/_emulator/deliveries")
        flask = str(Path(sys.executable).parent / "flask")
        registered = subprocess.run(  # noqa: S603 - our own CLI
            [flask, "--app", "webhooks_app", "subscriptions", "register"],
            env=dict(env),
            cwd=devserver.ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if registered.returncode != 0:
            say(f"Demo: registering failed: {registered.stderr.strip()[-500:]}")
            return
        say(f"Demo: {registered.stdout.strip()}")
        for event_type, data in EVENTS:
            answer = httpx.post(
                f"{emulator}/_emulator/trigger",
                json={"event": event_type, "data": data},
                timeout=10,
            )
            answer.raise_for_status()
            say(f"Demo: the emulator sent {event_type} {answer.json()['id']}")
    except httpx.HTTPError as exc:
        say(f"Demo: the emulator did not answer ({type(exc).__name__})")
        return
    where = devserver.login_link(base, token) if token is not None else f"{base}/admin/"
    say(f"Demo: the handlers' lines are in the worker's output above; the events: {where}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webhooks_app.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    parser.add_argument(
        "--emulator-port", type=int, default=int(os.environ.get("EMULATOR_PORT") or 8090)
    )
    args = parser.parse_args(argv)
    env = demo_environment(os.environ, args.port, args.emulator_port)
    emulator = f"python -m webhooks_app.emulator serve --port {args.emulator_port}"
    return devserver.run(env, "127.0.0.1", args.port, extra={"emulator": emulator}, on_ready=play)


if __name__ == "__main__":
    sys.exit(main())
