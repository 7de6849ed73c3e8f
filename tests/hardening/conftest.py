"""gunicorn as deployed (gunicorn.conf.py) on the session's PostgreSQL database, and raw HTTP/1.1
on one connection: what a provider's client, or a hostile one, sends on the wire."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import ADMIN_TOKEN
from tests.support import processes
from tests.support.processes import Process
from tests.support.signing import TEST_SECRET
from webhooks_app.config import normalize_database_url
from webhooks_app.store import Base

MAX_BODY_BYTES = 4096


@dataclass
class Web:
    port: int
    process: Process

    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


def start_web(postgres_url: str, redis_url: str, log_dir: Path, **extra: str) -> Web:
    env = {
        "DATABASE_URL": postgres_url,
        "REDIS_URL": redis_url,
        "WEBHOOK_SECRETS": TEST_SECRET,
        "HANDLERS_MODULE": "tests.support.handlers",
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "SECRET_KEY": "hardening",
        "INSTANCE_DIR": str(log_dir / "instance"),
        "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "WEB_CONCURRENCY": "2",
        **extra,
    }
    port = processes.free_port()
    return Web(port, processes.gunicorn(env, port, log_dir))


def truncate(postgres_url: str) -> None:
    engine = create_engine(normalize_database_url(postgres_url))
    with engine.begin() as connection:
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        connection.execute(text(f"TRUNCATE {tables} CASCADE"))
    engine.dispose()


@pytest.fixture(scope="module")
def web(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Web]:
    log_dir = tmp_path_factory.mktemp("hardening")
    served = start_web(postgres_url, redis_url, log_dir)
    yield served
    served.process.stop()
    truncate(postgres_url)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def read_answer(sock: socket.socket) -> Answer:
    """One HTTP/1.1 answer (Content-Length framed, as all of this service's are)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before an answer's head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside an answer's body")
        rest += chunk
    return Answer(int(lines[0].split()[1]), headers, rest[:length])


def request_bytes(
    method: str, path: str, headers: dict[str, str], body: bytes = b"", *, host: str = "127.0.0.1"
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if body and "Transfer-Encoding" not in headers and "Content-Length" not in headers:
        headers = {**headers, "Content-Length": str(len(body))}
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def closed_by_peer(sock: socket.socket, timeout: float = 5) -> bool:
    """The server closed the connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True
