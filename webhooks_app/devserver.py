"""``make run``: the whole service on one machine, from nothing.

It starts the embedded PostgreSQL when ``DATABASE_URL`` is unset (``webhooks_app.embedded``),
applies the migrations, then runs the Procfile's ``web``, ``worker`` and ``beat`` under honcho
with the server's URL in their environment, and prints ``Ready: <url>`` once the service
answers. Ctrl-C (or SIGTERM) stops the processes, then the embedded server.

``web`` binds ``HOST:PORT`` (default ``127.0.0.1:8000``: nothing outside this machine reaches a
development server unless told so). On a loopback bind with no ``ADMIN_USERNAME`` /
``ADMIN_PASSWORD_HASH``, the admin page is on and the Ready line is a one-time login link
(``webhooks_app.admin.login_link``) whose token lives only as long as this process.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path

import httpx

from webhooks_app import embedded
from webhooks_app.config import ADMIN_LOGIN_TOKEN_ENV, default_instance_dir

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = ("web", "worker", "beat")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def browse_url(host: str, port: int) -> str:
    """The URL to open: a wildcard bind is reached through the loopback address."""
    if host in {"0.0.0.0", "::", "[::]", ""}:  # noqa: S104 - naming the wildcard, not binding it
        host = "127.0.0.1"
    return f"http://{bind_address(host, port)}"


def procfile_commands(host: str, port: int, names: tuple[str, ...] = PROCESSES) -> dict[str, str]:
    """The Procfile's lines, ``web`` bound to HOST:PORT (the Procfile's own bind is the PaaS's)."""
    from honcho.environ import parse_procfile

    processes = parse_procfile((ROOT / "Procfile").read_text()).processes
    commands = {name: str(processes[name]) for name in names}
    if "web" in commands:
        commands["web"] += f" --bind {shlex.quote(bind_address(host, port))}"
    return commands


def migrate(database_url: str) -> None:
    """Alembic to head, quietly: its INFO lines are for the release step's log."""
    from alembic import command

    from webhooks_app.cli import alembic_config

    config = alembic_config(database_url)
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")


def login_link(base: str, token: str) -> str:
    return f"{base}/admin/login?token={token}"


def wait_ready(base: str, stopping: threading.Event, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while not stopping.is_set() and time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        stopping.wait(0.2)
    return False


def announce(
    base: str, token: str | None, stopping: threading.Event, say: Callable[[str], None]
) -> None:
    if not wait_ready(base, stopping):
        return
    if token is not None:
        say(
            f"Ready: {login_link(base, token)}  (the admin page; this link signs you in "
            "until make run stops)"
        )
    else:
        say(f"Ready: {base}/")
    say(f"Webhook endpoint: {base}/webhooks/events")


def say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def child_environment(env: MutableMapping[str, str], host: str, port: int) -> str | None:
    """What the processes get beside ours: the port, the venv's PATH, the login token."""
    env["PORT"] = str(port)
    env.setdefault("LOG_FORMAT", "console")
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    admin_configured = bool(env.get("ADMIN_USERNAME") and env.get("ADMIN_PASSWORD_HASH"))
    if not admin_configured and is_loopback(host):
        token = env.get(ADMIN_LOGIN_TOKEN_ENV) or secrets.token_urlsafe(24)
        env[ADMIN_LOGIN_TOKEN_ENV] = token
        return token
    env.pop(ADMIN_LOGIN_TOKEN_ENV, None)
    return None


def run(
    env: Mapping[str, str],
    host: str,
    port: int,
    *,
    extra: Mapping[str, str] | None = None,
    on_ready: Callable[[str, str | None, Mapping[str, str]], None] | None = None,
) -> int:
    """Start everything, block until stopped; ``extra`` adds processes (``make demo``)."""
    from honcho.manager import Manager
    from honcho.printer import Printer

    child_env = dict(env)
    cleanup: list[Callable[[], object]] = []
    try:
        server = _database(child_env)
    except embedded.EmbeddedUnavailable as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    if server is not None:
        say(f"PostgreSQL (embedded): {server.pgdata}")
    try:
        migrate(child_env["DATABASE_URL"])
        token = child_environment(child_env, host, port)
        base = browse_url(host, port)
        say(f"Listening on http://{bind_address(host, port)}")
        manager = Manager(printer=Printer(sys.stdout))
        # Each process's metrics samples in a directory of this run, removed when it ends even
        # if a process had to be killed (a process that makes its own removes it at exit only).
        metrics_root = Path(tempfile.mkdtemp(prefix="webhooks-run-metrics-"))
        cleanup.append(lambda: shutil.rmtree(metrics_root, ignore_errors=True))
        for name, command in {**procfile_commands(host, port), **(extra or {})}.items():
            (metrics_root / name).mkdir()
            process_env = {**child_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_root / name)}
            manager.add_process(name, command, env=process_env, cwd=str(ROOT))
        stopping = threading.Event()

        def ready() -> None:
            announce(base, token, stopping, say)
            if on_ready is not None and wait_ready(base, stopping):
                on_ready(base, token, child_env)

        threading.Thread(target=ready, daemon=True, name="ready").start()
        try:
            manager.loop()
        finally:
            stopping.set()
        return int(manager.returncode or 0)
    except KeyboardInterrupt:
        return 130
    finally:
        for step in cleanup:
            step()
        if server is not None:
            server.stop()
            say("PostgreSQL (embedded) stopped")


def _database(child_env: dict[str, str]) -> embedded.EmbeddedServer | None:
    """Point ``child_env`` at one instance folder for every process (wherever each one's working
    directory is) and at a database: its DATABASE_URL, or the embedded server, started or
    joined, which the caller stops. Raises ``embedded.EmbeddedUnavailable``."""
    instance_dir = default_instance_dir(child_env)
    child_env["INSTANCE_DIR"] = str(instance_dir)
    if child_env.get("DATABASE_URL", "").strip():
        return None
    server = embedded.start(instance_dir)
    child_env["DATABASE_URL"] = server.url
    return server


def run_command(env: Mapping[str, str], command: list[str]) -> int:
    """Run one command on the same database as ``make run`` (``make subscriptions ...``): the
    embedded server is joined if it runs, started for the command's length if not."""
    child_env = dict(env)
    try:
        server = _database(child_env)
    except embedded.EmbeddedUnavailable as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    try:
        migrate(child_env["DATABASE_URL"])
        return subprocess.run(command, env=child_env, check=False).returncode  # noqa: S603
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["exec"]:
        command = argv[2:] if argv[1:2] == ["--"] else argv[1:]
        if not command:
            print("usage: python -m webhooks_app.devserver exec -- COMMAND ...", file=sys.stderr)
            return 2
        return run_command(os.environ, command)
    parser = argparse.ArgumentParser(prog="python -m webhooks_app.devserver", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    args = parser.parse_args(argv)
    return run(os.environ, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
