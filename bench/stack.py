"""Starting and stopping the real stack on loopback for one benchmark run.

Everything is private to the run: a throwaway PostgreSQL database (dropped afterwards) on the
configured server, a private ``redis-server`` on a free port, and gunicorn / Celery processes
started with the production configuration (``gunicorn.conf.py``, ``workers.celery_app``).

Each process starts from a source tree: this one (``ROOT``), or another revision checked out in
a git worktree (``revision_tree``), with that tree as its working directory and first on
``PYTHONPATH``; both use this interpreter's installed dependencies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
TREES_DIR = ROOT / "bench" / ".trees"  # other revisions' worktrees, while a run uses them
POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL",
    os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


class Process:
    """A child process in its own session, its output in ``<log_dir>/<name>.log``."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: Mapping[str, str],
        log_dir: Path,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.args = args
        self.env = {**os.environ, **env}
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
            self.popen.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, no acks."""
        self.stop(signal.SIGKILL)

    def pids(self) -> list[int]:
        """This process and all its descendants, for CPU accounting: whatever a tree starts
        under gunicorn or Celery (workers, a relay, their children) is counted."""
        if self.popen is None:
            return []
        return descendants(self.popen.pid)

    def children(self) -> list[int]:
        """This process's direct children (gunicorn's or Celery's workers, a relay)."""
        if self.popen is None:
            return []
        return sorted(pid for pid, ppid in _parents().items() if ppid == self.popen.pid)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, ``root`` first."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [root], [root]
    while todo:
        for child in sorted(children.get(todo.pop(), [])):
            found.append(child)
            todo.append(child)
    return found


def tree_env(tree: Path) -> dict[str, str]:
    """What makes a process run ``tree``'s code (its packages before the installed ones)."""
    return {"PYTHONPATH": str(tree)}


def check_tree(tree: Path, env: Mapping[str, str]) -> None:
    """The tree's own modules are the ones its processes import, and they import at all
    (a dependency this environment lacks shows here, not as a server that never answers)."""
    probe = (
        "import json, bench.handlers, webhooks_app.wsgi, workers.celery_app\n"
        "import bench, webhooks_app as a, workers as w\n"
        "print(json.dumps([a.__file__, w.__file__, bench.__file__]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tree,
        env={**os.environ, **env, **tree_env(tree)},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tree} does not import with {sys.executable}:\n{done.stderr[-3000:]}")
    for path in json.loads(done.stdout.strip().splitlines()[-1]):
        if not Path(path).resolve().is_relative_to(tree.resolve()):
            raise RuntimeError(f"{tree}'s processes would import {path}, not the tree's own code")


def resolve_revision(revision: str) -> str:
    """The full commit id of ``revision`` (a sha, a branch, ``HEAD~3``), or a clear error."""
    done = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise ValueError(f"{revision!r} is not a commit of this repository")
    return done.stdout.strip()


@contextmanager
def revision_tree(revision: str) -> Iterator[Path]:
    """``revision`` checked out in a git worktree under ``bench/.trees/`` (git-ignored),
    removed on exit. Only committed files: the tree is exactly that commit."""
    commit = resolve_revision(revision)
    TREES_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{commit[:7]}-", dir=TREES_DIR))
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(path), commit],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True
        )
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


@contextmanager
def temporary_database(tree: Path = ROOT, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """A fresh PostgreSQL database, migrated by ``tree``'s own migrations (its ``flask db
    upgrade``), dropped on exit."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "webhooks_app", "db", "upgrade"],
            cwd=tree,
            env={**os.environ, **(env or {}), **tree_env(tree), "DATABASE_URL": url},
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"migrating {name} with {tree} failed:\n{done.stderr[-3000:]}")
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def private_redis(log_dir: Path) -> Iterator[str]:
    """A ``redis-server`` of our own on a free port (AOF off: it only lives for the run)."""
    binary = shutil.which("redis-server") or "/usr/sbin/redis-server"
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    process = Process(
        "redis",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(data_dir)],
        {},
        log_dir,
    ).start()
    try:
        wait_until(lambda: port_open(port), 10, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def gunicorn(
    app: str,
    env: Mapping[str, str],
    port: int,
    log_dir: Path,
    name: str,
    tree: Path = ROOT,
) -> Process:
    """gunicorn with ``tree``'s production ``gunicorn.conf.py`` serving ``app`` on
    127.0.0.1:port."""
    process = Process(
        name,
        [sys.executable, "-m", "gunicorn", "-c", str(tree / "gunicorn.conf.py"), app],
        {**env, **tree_env(tree), "PORT": str(port)},
        log_dir,
        cwd=tree,
    ).start()
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), 60, f"{name} to answer")
    except RuntimeError:
        process.stop()
        raise RuntimeError(f"{name} did not start:\n{process.output()[-3000:]}") from None
    return process


def celery_worker(
    app: str,
    env: Mapping[str, str],
    log_dir: Path,
    name: str,
    concurrency: int,
    queues: str,
    tree: Path = ROOT,
) -> Process:
    return Process(
        name,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "--loglevel=WARNING",
            f"--concurrency={concurrency}",
            f"--hostname={name}-{uuid.uuid4().hex[:6]}@%h",
            "-Q",
            queues,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        {**env, **tree_env(tree)},
        log_dir,
        cwd=tree,
    ).start()


def answers(url: str) -> bool:
    """The URL answers 200 (a server is up)."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def request_workers(server: Process) -> list[int]:
    """gunicorn's workers: the master's children but the outbox relay it starts beside them."""
    relays = set(relay_processes(server))
    return [pid for pid in server.children() if pid not in relays]


def relay_processes(server: Process) -> list[int]:
    """The outbox relay process gunicorn's master starts beside its workers, where a tree has
    one (none for another app, nor where the relay runs inside the Celery worker)."""
    relays = []
    for pid in server.pids()[1:]:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"webhooks_app.outbox" in command:
            relays.append(pid)
    return relays


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (Linux /proc/stat: not idle, not
    waiting for I/O), whatever the process."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def postgres_cpu_seconds() -> float:
    """User + system CPU seconds the local PostgreSQL server has used so far: each of its
    processes (backends, WAL writer, checkpointer, autovacuum), and the backends that have
    exited, whose time Linux adds to the postmaster's children's once it has reaped them."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[str, list[str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        stats[int(stat.parent.name)] = (name, raw.rsplit(")", 1)[1].split())
    total = 0
    for name, fields in stats.values():
        if not name.startswith("postgres"):
            continue
        total += int(fields[11]) + int(fields[12])
        parent = stats.get(int(fields[1]))
        if parent is None or not parent[0].startswith("postgres"):  # the postmaster
            total += int(fields[13]) + int(fields[14])
    return total / ticks
