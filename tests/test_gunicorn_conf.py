"""``gunicorn.conf.py``: how the production server listens for connections."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import stack
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e

LISTEN = "0A"  # TCP state in /proc/net/tcp


def listening_sockets(port: int) -> set[str]:
    """The inodes of the sockets listening on ``port`` (IPv4, any address)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == LISTEN:
            inodes.add(fields[9])
    return inodes


def serve_bare_app(tmp_path: Path, **env: str) -> tuple[stack.Process, int]:
    port = stack.free_port()
    process = stack.gunicorn(
        "bench.bare_app:app",
        {"WEB_CONCURRENCY": "3", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), **env},
        port,
        tmp_path,
        "web",
    )
    return process, port


def test_each_worker_listens_on_a_socket_of_its_own(tmp_path: Path) -> None:
    """With SO_REUSEPORT the kernel spreads keep-alive connections over the workers, instead of
    the first worker to wake taking all of a burst (and one core's worth of requests)."""
    web, port = serve_bare_app(tmp_path)
    try:
        wait_until(lambda: len(listening_sockets(port)) == 3, 30, what="3 listening sockets")
        assert len(stack.request_workers(web)) == 3
    finally:
        web.stop()


def test_web_reuse_port_0_shares_one_socket(tmp_path: Path) -> None:
    web, port = serve_bare_app(tmp_path, WEB_REUSE_PORT="0")
    try:
        wait_until(lambda: len(stack.request_workers(web)) == 3, 30, what="3 workers")
        assert len(listening_sockets(port)) == 1
    finally:
        web.stop()
