"""One benchmark run: phases, checks, the table and the JSON file.

Phases, all in one run, on one machine, with the same gunicorn and Celery settings:

1. **bare**: the bare Flask endpoint (``bench.bare_app``) under gunicorn, closed loop.
2. **intake**: the real app, closed loop; no Celery worker runs yet, so the handlers' CPU does
   not compete with intake (the relay still hands every event to Redis while it runs).
3. **handlers**: a worker starts on the backlog the intake phase left; events/s from the
   stored attempt timestamps.
4. **celery no-op**: as many no-op tasks on the same broker, same worker settings; tasks/s.
5. **e2e**: workers running, a fixed rate of half the measured intake rate, in ``rounds`` rounds
   each drained before the next; end-to-end latency from request sent to the last handler's
   ``finished_at``, and the CPU every part of the pipeline spent per event.
6. **burst** (optional): N events as fast as possible; how long until the backlog is drained.

Finally every accepted event must have ended ``succeeded`` with exactly one (successful) attempt
of its handler; otherwise the run fails loudly.

With ``--against REV`` every phase runs for both trees (each on its own database and Redis
database), alternating: in each intake and e2e round both sides run, the first one changing from
round to round; e2e runs both at this tree's rate. One bare server serves both sides' bare rounds.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import socket
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sqlalchemy import create_engine, text

from bench import loadgen, stack
from bench.noop_app import NOOP_QUEUE, NOOP_TASK
from webhooks_app.signatures import generate_hmac_secret

RESULTS_DIR = Path(__file__).resolve().parent / "results"
APP_QUEUE = "webhooks"


@dataclass
class Options:
    duration: float = 10.0
    connections: int = 8
    web_concurrency: int = os.cpu_count() or 1  # gunicorn.conf.py's default
    worker_concurrency: int = os.cpu_count() or 1
    burst: int = 0
    warmup: float = 1.0
    # Bare and intake alternate in rounds; each round opens new connections, which the kernel
    # spreads over the web processes anew (README, "Known limits"): more, shorter rounds make
    # the medians depend less on one unlucky split, for the same load time.
    rounds: int = 5
    round_duration: float = 6.0
    drain_timeout: float = 300.0
    output: Path | None = None
    smoke: bool = False
    # Another revision run side by side with this tree, round by round (``--against``).
    against: str | None = None


class BenchmarkFailure(RuntimeError):
    """Events were lost, run twice or not finished: the run is invalid."""


@dataclass
class Report:
    started_at: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    # With --against REV: {"revision", "phases", "ratios", "checks"} of REV, in the shape of the
    # fields above, and "comparison" (see ``compare``).
    against: dict[str, Any] | None = None


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def _load_phase(result: loadgen.LoadResult, client_cpu: float) -> dict[str, Any]:
    summary = result.summary()
    counts = result.per_connection
    return {
        "requests": result.ok,
        "requests_per_second": round(result.requests_per_second, 1),
        "elapsed_s": round(result.elapsed, 3),
        "ack_p50_ms": round(summary.p50_ms, 2),
        "ack_p90_ms": round(summary.p90_ms, 2),
        "ack_p99_ms": round(summary.p99_ms, 2),
        "ack_max_ms": round(summary.max_ms, 2),
        "errors": result.failed,
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "client_errors": result.errors,
        "accepted": len(result.accepted),
        "duplicates": len(result.duplicates),
        "reconnects": result.reconnects,
        # How evenly the connections were served (keep-alive imbalance shows here).
        "per_connection_min_max": [min(counts), max(counts)] if counts else [],
        "client_cpu_s": round(client_cpu, 2),
    }


def _rounds_phase(result: loadgen.LoadResult, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    phase = _load_phase(result, 0.0)
    rates = [r["requests_per_second"] for r in rounds]
    phase["requests_per_second"] = round(statistics.median(rates), 1)
    phase["rounds"] = rounds
    for key in (
        "server_cpu_ms_per_request",
        "postgres_cpu_ms_per_request",
        "client_cpu_ms_per_request",
    ):
        phase[key] = round(statistics.median(r[key] for r in rounds), 3)
    del phase["client_cpu_s"]
    return phase


def _shares(cpu: list[float]) -> list[float]:
    total = sum(cpu)
    return sorted((round(c / total, 2) for c in cpu), reverse=True) if total else []


def _busiest(rounds: list[dict[str, Any]]) -> str:
    """The busiest worker's share of the server's work, per round: "31/28/30%"."""
    busiest = [r["worker_cpu_shares"][0] for r in rounds if r["worker_cpu_shares"]]
    return "/".join(f"{share * 100:.0f}" for share in busiest) + "%" if busiest else "n/a"


def _vacuum(engine: Any) -> None:
    """VACUUM (ANALYZE) the tables the pipeline writes, and wait for it to finish."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM (ANALYZE) events, event_handlers, handler_attempts"))


def _cpu_spent(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> dict[str, float]:
    """Per part, the CPU its processes used in between (one started since counts whole)."""
    return {
        part: sum(used - before[part].get(pid, 0.0) for pid, used in now.items())
        for part, now in after.items()
    }


CURRENT, AGAINST = "current", "against"
# The parts of the pipeline whose CPU is the end-to-end cost of an event (not the load generator).
PIPELINE = ("web", "relay", "worker", "postgres")
# A queue no one sends to: a worker consuming it runs its bootsteps (a tree's relay) but no task.
RELAY_ONLY_QUEUE = "bench-relay-only"


@dataclass
class Side:
    """One source tree under test: its processes, its own database and Redis database, and what
    was measured of it (``phases``, ``ratios`` and ``checks`` are the report's own dicts)."""

    name: str
    tree: Path
    revision: str
    log_dir: Path
    phases: dict[str, dict[str, Any]]
    ratios: dict[str, Any]
    checks: dict[str, Any]
    database_url: str = ""
    redis_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    engine: Any = None
    port: int = 0
    web: stack.Process | None = None
    # Where a tree runs its relay inside the Celery worker: a worker that runs no task, so that
    # the intake phase includes handing events to the broker, as the relay under gunicorn does.
    relay_worker: stack.Process | None = None
    worker: stack.Process | None = None
    accepted: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.revision})"

    def servers(self) -> list[stack.Process]:
        """What serves the intake: gunicorn and, where there is one, the relay-only worker."""
        assert self.web is not None
        return [self.web] + ([self.relay_worker] if self.relay_worker else [])


def _order(sides: list[Side], round_: int) -> list[Side]:
    """Which side goes first alternates from round to round."""
    return sides if round_ % 2 == 0 else sides[::-1]


def _pipeline_cpu(side: Side) -> dict[str, dict[int, float]]:
    """CPU seconds used so far by each process of each part of a side's pipeline: every process
    under its gunicorn and its Celery worker, and the PostgreSQL server (one figure: the sides'
    rounds never overlap)."""
    assert side.web is not None
    assert side.worker is not None
    relay = stack.relay_processes(side.web)
    parts = {
        "web": [p for p in side.web.pids() if p not in relay],
        "relay": relay,  # none where the relay is a thread of the worker: counted there
        "worker": side.worker.pids(),
    }
    cpu = {part: {p: stack.cpu_seconds([p]) for p in pids} for part, pids in parts.items()}
    # The whole server as one entry: its backends that exited within a round (a connection
    # opened and closed) spent CPU a count of the database's live backends would miss.
    cpu["postgres"] = {0: stack.postgres_cpu_seconds()}
    return cpu


def _ratios(phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    intake_rps = phases["intake"]["requests_per_second"]
    bare_rps = phases["bare"]["requests_per_second"]
    noop_rate = phases["celery_noop"]["tasks_per_second"]
    paired = [
        i["requests_per_second"] / b["requests_per_second"]
        for i, b in zip(phases["intake"]["rounds"], phases["bare"]["rounds"], strict=True)
        if b["requests_per_second"]
    ]
    return {
        "intake_vs_bare": round(intake_rps / bare_rps, 3) if bare_rps else 0.0,
        # Each intake round against the bare round just before it: the rounds alternate so
        # that both see the same machine; this median is the figure least moved by its drift.
        "intake_vs_bare_per_round": [round(r, 3) for r in paired],
        "intake_vs_bare_paired_median": round(statistics.median(paired), 3) if paired else 0.0,
        "handlers_vs_celery_noop": round(phases["handlers"]["events_per_second"] / noop_rate, 3)
        if noop_rate
        else 0.0,
    }


class Bench:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
        self.report = Report(
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            machine=machine_info(),
            options={k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        )
        self.secret = generate_hmac_secret()
        self.processes: list[stack.Process] = []
        self.sides: list[Side] = []

    # --- plumbing -------------------------------------------------------------------------

    def _env(self, side: Side) -> dict[str, str]:
        return {
            "DATABASE_URL": side.database_url,
            "REDIS_URL": side.redis_url,
            "WEBHOOK_SECRETS": self.secret,
            "HANDLERS_MODULE": "bench.handlers",
            "INSTANCE_DIR": str(side.log_dir / "instance"),
            "SECRET_KEY": "bench",
            "WEB_CONCURRENCY": str(self.o.web_concurrency),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "PROMETHEUS_MULTIPROC_DIR": str(side.log_dir / "prometheus"),
            **stack.tree_env(side.tree),
        }

    def _load(
        self, port: int, *, rate: float | None = None, duration: float, total: int | None = None
    ) -> tuple[loadgen.LoadResult, float]:
        signer = loadgen.Signer(self.secret, host=f"127.0.0.1:{port}")
        cpu_before = time.process_time()
        result = loadgen.run_load(
            signer,
            "127.0.0.1",
            port,
            connections=self.o.connections,
            duration=duration,
            rate=rate,
            total=total,
        )
        return result, time.process_time() - cpu_before

    def _measured(
        self, port: int, servers: list[stack.Process], engine: Any
    ) -> tuple[loadgen.LoadResult, dict[str, Any]]:
        """One closed-loop round, with the CPU it cost the server, PostgreSQL and the client."""
        server_pids = [pid for server in servers for pid in server.pids()]
        serving = stack.request_workers(servers[0])
        server_before = stack.cpu_seconds(server_pids)
        serving_before = [stack.cpu_seconds([pid]) for pid in serving]
        pg_before = stack.postgres_cpu_seconds()
        result, client_cpu = self._load(port, duration=self.o.round_duration)
        server_cpu = stack.cpu_seconds(server_pids) - server_before
        serving_cpu = [
            stack.cpu_seconds([pid]) - before
            for pid, before in zip(serving, serving_before, strict=True)
        ]
        pg_cpu = stack.postgres_cpu_seconds() - pg_before
        n = max(result.ok, 1)
        return result, {
            "requests_per_second": round(result.requests_per_second, 1),
            "server_cpu_ms_per_request": round(server_cpu / n * 1000, 3),
            "postgres_cpu_ms_per_request": round(pg_cpu / n * 1000, 3),
            "client_cpu_ms_per_request": round(client_cpu / n * 1000, 3),
            # How the connections were spread over gunicorn's workers: each one's share of
            # their CPU, busiest first. All on one process means one core's worth (the GIL).
            "worker_cpu_shares": _shares(serving_cpu),
            "loadavg": round(os.getloadavg()[0], 2),
        }

    def _start(self, process: stack.Process) -> stack.Process:
        self.processes.append(process)
        return process

    # --- the run --------------------------------------------------------------------------

    def run(self) -> Report:
        try:
            with ExitStack() as resources:
                trees = [(CURRENT, stack.ROOT, git_revision())]
                if self.o.against:
                    commit = stack.resolve_revision(self.o.against)
                    tree = resources.enter_context(stack.revision_tree(commit))
                    trees.append((AGAINST, tree, commit[:7]))
                redis_url = resources.enter_context(stack.private_redis(self.log_dir))
                for number, (name, tree, revision) in enumerate(trees):
                    self.sides.append(
                        self._side(resources, name, tree, revision, redis_url, number)
                    )
                # Registered last, so run first: no process outlives its database.
                resources.callback(self._stop_processes)
                self._phases()
        except BaseException:
            print(f"(process logs kept in {self.log_dir})")
            raise
        return self.report

    def _side(
        self,
        resources: ExitStack,
        name: str,
        tree: Path,
        revision: str,
        redis_url: str,
        number: int,
    ) -> Side:
        """A side with its own fresh database (migrated by its tree) and Redis database."""
        if name == CURRENT:
            phases, ratios, checks = self.report.phases, self.report.ratios, self.report.checks
        else:
            phases, ratios, checks = {}, {}, {}
            self.report.against = {
                "revision": revision,
                "phases": phases,
                "ratios": ratios,
                "checks": checks,
            }
        side = Side(name, tree, revision, self.log_dir / name, phases, ratios, checks)
        side.redis_url = f"{redis_url.rsplit('/', 1)[0]}/{number}"
        Path(self._env(side)["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True)
        side.database_url = resources.enter_context(stack.temporary_database(tree, self._env(side)))
        side.env = self._env(side)
        stack.check_tree(tree, side.env)
        side.engine = create_engine(side.database_url)
        resources.callback(side.engine.dispose)
        return side

    def _stop_processes(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def _phases(self) -> None:
        o, sides = self.o, self.sides

        # 1 + 2. bare Flask and each side's intake (no worker consuming yet), all servers up,
        # measured in alternating rounds so that a change of machine load hits them alike.
        bare_port = stack.free_port()
        bare = self._start(
            stack.gunicorn("bench.bare_app:app", sides[0].env, bare_port, self.log_dir, "bare")
        )
        for side in sides:
            side.port = stack.free_port()
            side.web = self._start(
                stack.gunicorn(
                    "webhooks_app.wsgi:app", side.env, side.port, side.log_dir, "web", side.tree
                )
            )
            if not stack.relay_processes(side.web):
                side.relay_worker = self._start(
                    stack.celery_worker(
                        "workers.celery_app",
                        side.env,
                        side.log_dir,
                        "relay",
                        1,
                        RELAY_ONLY_QUEUE,
                        side.tree,
                    )
                )
        self._load(bare_port, duration=o.warmup)
        for side in sides:
            warm, _ = self._load(side.port, duration=o.warmup)
            side.accepted += warm.accepted
        bare_rounds: list[dict[str, Any]] = []
        bare_all = loadgen.LoadResult()
        intake: dict[str, tuple[list[dict[str, Any]], loadgen.LoadResult]] = {
            side.name: ([], loadgen.LoadResult()) for side in sides
        }
        for i in range(o.rounds):
            result, cpu = self._measured(bare_port, [bare], sides[0].engine)
            bare_rounds.append(cpu)
            bare_all.merge(result)
            for side in _order(sides, i):
                result, cpu = self._measured(side.port, side.servers(), side.engine)
                intake[side.name][0].append(cpu)
                intake[side.name][1].merge(result)
                side.accepted += result.accepted
        bare.stop()
        bare_phase = _rounds_phase(bare_all, bare_rounds)
        for side in sides:
            assert side.web is not None
            side.phases["bare"] = copy.deepcopy(bare_phase)  # one bare server for both sides
            rounds, merged = intake[side.name]
            side.phases["intake"] = _rounds_phase(merged, rounds)
            side.phases["intake"]["relay"] = (
                "worker without tasks" if side.relay_worker else "process under gunicorn"
            )
            self._wait_handed_off(side)
            if side.relay_worker:
                side.relay_worker.stop()

        # 3. handler throughput on that backlog
        for side in sides:
            backlog = len(side.accepted)
            side.worker = self._start(
                stack.celery_worker(
                    "workers.celery_app",
                    side.env,
                    side.log_dir,
                    "worker",
                    o.worker_concurrency,
                    APP_QUEUE,
                    side.tree,
                )
            )
            self._wait_finished(side.engine, side.accepted)
            drained = self._drain_stats(side.engine, side.accepted)
            side.phases["handlers"] = {"events": backlog, **drained}

        # 4. Celery's own no-op drain rate, same broker and worker settings
        for side in sides:
            side.phases["celery_noop"] = self._noop_drain(side, side.phases["handlers"]["events"])

        # 5. end to end at half the maximum intake rate (the target), and at a quarter of it
        # (to show the latency of the pipeline when it is not queueing), in rounds alternating
        # between the sides, every side at the same rate: this tree's. Each starts on a
        # vacuumed database: it measures a steady rate, not autovacuum catching up with the
        # tens of thousands of rows the phases before it wrote and rewrote.
        for name, fraction in (("e2e", 0.5), ("e2e_quarter", 0.25)):
            rate = max(sides[0].phases["intake"]["requests_per_second"] * fraction, 1.0)
            for side in sides:
                _vacuum(side.engine)
            runs: dict[str, list[tuple[loadgen.LoadResult, dict[str, float], float]]] = {
                side.name: [] for side in sides
            }
            for i in range(o.rounds):
                for side in _order(sides, i):
                    runs[side.name].append(self._e2e_round(side, rate, o.duration / o.rounds))
            for side in sides:
                side.phases[name] = self._e2e_phase(side, rate, runs[side.name])

        # 6. burst
        if o.burst:
            for side in sides[::-1]:
                side.phases["burst"] = self._burst(side)

        for side in sides:
            assert side.worker is not None
            side.worker.stop()
            side.ratios.update(_ratios(side.phases))
        failures = []
        for side in sides:
            try:
                self._check_exactly_once(side)
            except BenchmarkFailure as exc:
                failures.append(f"{side.label}: {exc}")
        if failures:
            raise BenchmarkFailure("; ".join(failures))
        if self.report.against is not None:
            self.report.against["comparison"] = compare(self.report, self.report.against)

    def _e2e_round(
        self, side: Side, rate: float, seconds: float
    ) -> tuple[loadgen.LoadResult, dict[str, float], float]:
        """One round at a fixed rate, drained: what it measured, the CPU each part spent on it
        (the drain included) and how busy the whole machine was while the load ran."""
        before = _pipeline_cpu(side)
        busy_before, wall_before = stack.machine_busy_seconds(), time.monotonic()
        result, cpu = self._load(side.port, duration=seconds, rate=rate)
        busy = (stack.machine_busy_seconds() - busy_before) / (
            (time.monotonic() - wall_before) * (os.cpu_count() or 1)
        )
        side.accepted += result.accepted
        self._wait_finished(side.engine, result.accepted)
        return result, {**_cpu_spent(before, _pipeline_cpu(side)), "client": cpu}, busy

    def _e2e_phase(
        self,
        side: Side,
        rate: float,
        runs: list[tuple[loadgen.LoadResult, dict[str, float], float]],
    ) -> dict[str, Any]:
        merged, spent, rounds = loadgen.LoadResult(), dict.fromkeys((*PIPELINE, "client"), 0.0), []
        for result, cpu, busy in runs:
            merged.merge(result)
            for part, seconds in cpu.items():
                spent[part] += seconds
            n = max(len(result.accepted), 1)
            latency = self._e2e(side.engine, result)
            rounds.append(
                {
                    "requests": len(result.accepted),
                    "pipeline_cpu_ms_per_event": round(sum(cpu[k] for k in PIPELINE) / n * 1000, 3),
                    "e2e_p50_ms": latency["e2e_p50_ms"],
                    "e2e_p99_ms": latency["e2e_p99_ms"],
                    "machine_busy": round(busy, 2),
                }
            )
        n = max(len(merged.accepted), 1)
        return {
            "target_rate": round(rate, 1),
            **_load_phase(merged, spent["client"]),
            **self._e2e(side.engine, merged),
            # Where the CPU went, per event (its drain included), and how busy the whole
            # machine was while the load ran: latency grows with queueing for the cores.
            "cpu_ms_per_event": {k: round(v / n * 1000, 3) for k, v in spent.items()},
            "pipeline_cpu_ms_per_event": round(sum(spent[k] for k in PIPELINE) / n * 1000, 3),
            "machine_busy": round(statistics.mean(r["machine_busy"] for r in rounds), 2),
            "rounds": rounds,
        }

    def _burst(self, side: Side) -> dict[str, Any]:
        result, cpu = self._load(side.port, duration=3600, total=self.o.burst)
        side.accepted += result.accepted
        self._wait_finished(side.engine, result.accepted)
        burst = _load_phase(result, cpu)
        first_sent = min(result.sent_at.values()) if result.sent_at else time.time()
        last_done = self._last_finished(side.engine, result.accepted)
        burst["drain_s"] = round(last_done - first_sent, 2)
        burst["drain_after_last_ack_s"] = round(last_done - (first_sent + result.elapsed), 2)
        burst["events_per_second_end_to_end"] = round(
            len(result.accepted) / max(last_done - first_sent, 1e-9), 1
        )
        return burst

    # --- waiting and measuring ------------------------------------------------------------

    def _wait_handed_off(self, side: Side) -> None:
        def handed_off() -> bool:
            with side.engine.connect() as c:
                return (
                    c.execute(
                        text("SELECT count(*) FROM events WHERE status = 'received'")
                    ).scalar_one()
                    == 0
                )

        try:
            stack.wait_until(handed_off, 60, "the relay to hand every event to the broker")
        except RuntimeError as exc:
            raise BenchmarkFailure(
                f"{side.label}: {exc} (relay: {side.phases['intake']['relay']}; "
                f"logs in {side.log_dir})"
            ) from None

    def _wait_finished(self, engine: Any, ids: list[str]) -> None:
        if not ids:
            return
        deadline = time.monotonic() + self.o.drain_timeout
        while time.monotonic() < deadline:
            with engine.connect() as c:
                pending = c.execute(
                    text(
                        "SELECT count(*) FROM events WHERE id = ANY(:ids) "
                        "AND status NOT IN ('succeeded', 'dead', 'skipped')"
                    ),
                    {"ids": ids},
                ).scalar_one()
            if pending == 0:
                return
            time.sleep(0.05)
        raise BenchmarkFailure(
            f"{pending} of {len(ids)} events not finished after {self.o.drain_timeout:.0f} s"
        )

    def _drain_stats(self, engine: Any, ids: list[str]) -> dict[str, Any]:
        with engine.connect() as c:
            row = c.execute(
                text(
                    "SELECT count(*), min(started_at), max(finished_at) FROM handler_attempts "
                    "WHERE event_id = ANY(:ids) AND status = 'succeeded'"
                ),
                {"ids": ids},
            ).one()
        count, first, last = row
        seconds = (last - first).total_seconds() if count else 0.0
        return {
            "succeeded": count,
            "seconds": round(seconds, 3),
            "events_per_second": round(count / seconds, 1) if seconds else 0.0,
        }

    def _last_finished(self, engine: Any, ids: list[str]) -> float:
        with engine.connect() as c:
            last = c.execute(
                text("SELECT max(finished_at) FROM handler_attempts WHERE event_id = ANY(:ids)"),
                {"ids": ids},
            ).scalar_one()
        return float(last.timestamp()) if last else time.time()

    def _e2e(self, engine: Any, result: loadgen.LoadResult) -> dict[str, Any]:
        with engine.connect() as c:
            rows = c.execute(
                text(
                    "SELECT a.event_id, e.received_at, min(a.started_at), max(a.finished_at) "
                    "FROM handler_attempts a JOIN events e ON e.id = a.event_id "
                    "WHERE a.event_id = ANY(:ids) GROUP BY a.event_id, e.received_at"
                ),
                {"ids": result.accepted},
            ).all()
        total, to_claim, in_worker = [], [], []
        for event_id, received, started, done in rows:
            total.append(max(done.timestamp() - result.sent_at[event_id], 0.0))
            to_claim.append(max((started - received).total_seconds(), 0.0))
            in_worker.append(max((done - started).total_seconds(), 0.0))
        summary = loadgen.LatencySummary.of(total)
        return {
            "e2e_p50_ms": round(summary.p50_ms, 2),
            "e2e_p90_ms": round(summary.p90_ms, 2),
            "e2e_p99_ms": round(summary.p99_ms, 2),
            "e2e_max_ms": round(summary.max_ms, 2),
            # Where the time goes: stored -> claimed by a worker (relay, broker, queueing),
            # and claimed -> recorded (the handler and the worker's two transactions).
            "stored_to_claimed_p50_ms": round(loadgen.LatencySummary.of(to_claim).p50_ms, 2),
            "stored_to_claimed_p99_ms": round(loadgen.LatencySummary.of(to_claim).p99_ms, 2),
            "claimed_to_done_p50_ms": round(loadgen.LatencySummary.of(in_worker).p50_ms, 2),
            "claimed_to_done_p99_ms": round(loadgen.LatencySummary.of(in_worker).p99_ms, 2),
        }

    def _noop_drain(self, side: Side, count: int) -> dict[str, Any]:
        from bench import noop_app

        count = max(count, 100)
        client = redis.Redis.from_url(side.redis_url)
        # A sender of our own on this side's Redis database; the worker is the side's tree's.
        sender = Celery("bench-noop-sender", set_as_current=False)
        sender.config_from_object({**noop_app.CONFIG, "broker_url": side.redis_url})
        with sender.producer_or_acquire() as producer:
            for _ in range(count):
                sender.send_task(NOOP_TASK, queue=NOOP_QUEUE, producer=producer)
        sender.close()
        noop_worker = self._start(
            stack.celery_worker(
                "bench.noop_app",
                side.env,
                side.log_dir,
                "noop",
                self.o.worker_concurrency,
                NOOP_QUEUE,
                side.tree,
            )
        )

        def remaining() -> int:
            # Waiting in the list, plus taken but not yet acknowledged (late acks).
            unacked = (
                sum(1 for _ in client.hscan_iter("unacked")) if client.exists("unacked") else 0
            )
            return int(client.llen(NOOP_QUEUE)) + unacked

        deadline = time.monotonic() + self.o.drain_timeout
        while client.llen(NOOP_QUEUE) >= count and time.monotonic() < deadline:
            time.sleep(0.005)
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        while time.monotonic() < deadline:
            left = remaining()
            samples.append((time.monotonic(), left))
            if left == 0:
                break
            time.sleep(0.02)
        seconds = time.monotonic() - started
        client.close()
        noop_worker.stop()  # idle, it would still poll the broker during the phases after it
        return {
            "tasks": count,
            "seconds": round(seconds, 3),
            "tasks_per_second": round(count / seconds, 1) if seconds else 0.0,
        }

    # --- the guarantee --------------------------------------------------------------------

    def _check_exactly_once(self, side: Side) -> None:
        """Every event the side accepted was stored once and its handler succeeded in exactly
        one attempt (``side.checks``); otherwise :class:`BenchmarkFailure`."""
        accepted = set(side.accepted)
        with side.engine.connect() as c:
            stored = {r[0]: r[1] for r in c.execute(text("SELECT id, status FROM events"))}
            attempts = c.execute(
                text(
                    "SELECT event_id, count(*) AS runs, "
                    "count(*) FILTER (WHERE status = 'succeeded') AS ok "
                    "FROM handler_attempts GROUP BY event_id"
                )
            ).all()
        runs = {event_id: (n, ok) for event_id, n, ok in attempts}
        lost = sorted(accepted - set(stored))
        unexpected = sorted(set(stored) - accepted)
        not_succeeded = sorted(i for i in accepted if stored.get(i) not in (None, "succeeded"))
        not_once = sorted(i for i in accepted if runs.get(i) != (1, 1))
        checks = {
            "accepted": len(accepted),
            "stored": len(stored),
            "lost": len(lost),
            "stored_but_not_accepted": len(unexpected),
            "not_succeeded": len(not_succeeded),
            "not_exactly_once": len(not_once),
        }
        if lost or unexpected or not_succeeded or not_once or len(accepted) != len(side.accepted):
            checks["examples"] = (lost + unexpected + not_succeeded + not_once)[:10]
            side.checks.update(checks)
            raise BenchmarkFailure(f"delivery guarantee broken: {checks}")
        side.checks.update(checks, ok=True)


# --- output -----------------------------------------------------------------------------------


def _cpu_split(e2e: dict[str, Any]) -> str:
    """ "web 0.52 + relay 0.10 + ... = 1.45 ms; machine 78% busy" """
    names = {"postgres": "PostgreSQL", "client": "load generator"}
    cpu = e2e["cpu_ms_per_event"]
    parts = " + ".join(f"{names.get(k, k)} {v:.2f}" for k, v in cpu.items())
    return f"{parts} = {sum(cpu.values()):.2f} ms; machine {e2e['machine_busy'] * 100:.0f}% busy"


def table(report: Report) -> str:
    p, r = report.phases, report.ratios
    m = report.machine
    rows: list[tuple[str, str]] = [
        ("machine", f"{m['nproc']} cores, {m['cpu_model']}, {m['memory_gb']} GB"),
        (
            "settings",
            f"{report.options['connections']} connections, "
            f"{report.options['rounds']} x {report.options['round_duration']} s rounds, "
            f"{report.options['duration']} s per other phase, "
            f"WEB_CONCURRENCY={report.options['web_concurrency']}, "
            f"worker concurrency={report.options['worker_concurrency']}",
        ),
        (
            "bare Flask",
            f"{p['bare']['requests_per_second']:.0f} req/s (median of {len(p['bare']['rounds'])}"
            f" rounds; server CPU {p['bare']['server_cpu_ms_per_request']:.2f} ms/req;"
            f" busiest worker {_busiest(p['bare']['rounds'])})",
        ),
        (
            "intake",
            f"{p['intake']['requests_per_second']:.0f} req/s = {r['intake_vs_bare']:.2f}x bare; "
            f"round by round {'/'.join(f'{x:.2f}' for x in r['intake_vs_bare_per_round'])}x, "
            f"median {r['intake_vs_bare_paired_median']:.2f}x "
            f"(server CPU {p['intake']['server_cpu_ms_per_request']:.2f} + PostgreSQL "
            f"{p['intake']['postgres_cpu_ms_per_request']:.2f} ms/req;"
            f" busiest worker {_busiest(p['intake']['rounds'])})",
        ),
        (
            "intake ack latency",
            "p50 {ack_p50_ms:.1f} / p90 {ack_p90_ms:.1f} / p99 {ack_p99_ms:.1f} / "
            "max {ack_max_ms:.1f} ms, {errors} errors".format(**p["intake"]),
        ),
        ("Celery no-op drain", f"{p['celery_noop']['tasks_per_second']:.0f} tasks/s"),
        (
            "handler throughput",
            f"{p['handlers']['events_per_second']:.0f} events/s = "
            f"{r['handlers_vs_celery_noop']:.2f}x no-op",
        ),
    ]
    for e2e in (p["e2e"], p["e2e_quarter"]):
        rows.append(
            (
                f"e2e at {e2e['target_rate']:.0f} req/s",
                "p50 {e2e_p50_ms:.1f} / p99 {e2e_p99_ms:.1f} ms (ack p99 {ack_p99_ms:.1f} ms, "
                "{errors} errors; stored->claimed p50 {stored_to_claimed_p50_ms:.1f}, "
                "claimed->done p50 {claimed_to_done_p50_ms:.1f} ms)".format(**e2e),
            )
        )
        rows.append((f"CPU at {e2e['target_rate']:.0f} req/s", _cpu_split(e2e)))
    if "burst" in p:
        b = p["burst"]
        rows.append(
            (
                f"burst of {b['requests']}",
                f"acked in {b['elapsed_s']:.1f} s ({b['requests_per_second']:.0f} req/s), "
                f"all handled {b['drain_s']:.1f} s after the first send",
            )
        )
    c = report.checks
    rows.append(
        (
            "exactly once",
            f"{c['accepted']} accepted, {c['lost']} lost, {c['not_exactly_once']} not run "
            f"exactly once: {'OK' if c.get('ok') else 'FAILED'}",
        )
    )
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'what'.ljust(width)} | measured |", f"|{'-' * (width + 2)}|---|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


# --- side by side (--against) -------------------------------------------------------------

# Issue 16's budget, new (this tree) against old (REV): (figure, what it must meet, the limit).
BUDGET: tuple[tuple[str, str, float], ...] = (
    ("intake_requests_per_second", "ratio >=", 0.90),
    ("e2e_cpu_ms_per_event", "ratio <=", 1.10),
    ("e2e_p50_ms", "new <", 20.0),
    ("e2e_p99_ms", "new <", 100.0),
)


def _figures(phases: dict[str, dict[str, Any]]) -> dict[str, tuple[float, list[float]]]:
    """Each budget figure of one side: its value, and its value in each round."""
    intake, e2e = phases["intake"], phases["e2e"]
    return {
        "intake_requests_per_second": (
            intake["requests_per_second"],
            [r["requests_per_second"] for r in intake["rounds"]],
        ),
        "e2e_cpu_ms_per_event": (
            e2e["pipeline_cpu_ms_per_event"],
            [r["pipeline_cpu_ms_per_event"] for r in e2e["rounds"]],
        ),
        "e2e_p50_ms": (e2e["e2e_p50_ms"], [r["e2e_p50_ms"] for r in e2e["rounds"]]),
        "e2e_p99_ms": (e2e["e2e_p99_ms"], [r["e2e_p99_ms"] for r in e2e["rounds"]]),
    }


def _meets(value: float, rule: str, limit: float) -> bool:
    operator = rule.split()[-1]
    return (
        value >= limit
        if operator == ">="
        else value <= limit
        if operator == "<="
        else value < limit
    )


def compare(new: Report, old: dict[str, Any]) -> dict[str, Any]:
    """The budget's figures of both sides (intake: median of the rounds; e2e: over all the
    phase's events, at the same rate for both), their ranges over the rounds, the ratio
    new/old, the ratio round by round (the sides ran next to each other in each round), and
    whether each budget line is met."""
    new_figures, old_figures = _figures(new.phases), _figures(old["phases"])
    comparison: dict[str, Any] = {"e2e_target_rate": new.phases["e2e"]["target_rate"]}
    for key, rule, limit in BUDGET:
        (new_value, new_rounds), (old_value, old_rounds) = new_figures[key], old_figures[key]
        ratio = new_value / old_value if old_value else float("nan")
        per_round = [n / o for n, o in zip(new_rounds, old_rounds, strict=True) if o]
        comparison[key] = {
            "new": new_value,
            "old": old_value,
            "new_range": [min(new_rounds), max(new_rounds)] if new_rounds else [],
            "old_range": [min(old_rounds), max(old_rounds)] if old_rounds else [],
            "ratio": round(ratio, 3),
            "ratio_per_round": [round(r, 3) for r in per_round],
            "budget": f"{rule} {limit:g}",
            "ok": _meets(ratio if rule.startswith("ratio") else new_value, rule, limit),
        }
    comparison["exactly_once"] = {
        "new": new.checks.get("accepted", 0),
        "old": old["checks"].get("accepted", 0),
        "ok": bool(new.checks.get("ok")) and bool(old["checks"].get("ok")),
    }
    comparison["ok"] = all(
        comparison[key]["ok"] for key in (*(b[0] for b in BUDGET), "exactly_once")
    )
    return comparison


def side_by_side(report: Report) -> str:
    """The budget's lines, new against old: value [range over the rounds], the ratio."""
    assert report.against is not None
    c = report.against["comparison"]
    new_rev, old_rev = report.machine.get("revision", CURRENT), report.against["revision"]
    labels = {
        "intake_requests_per_second": ("intake req/s", "{:.0f}"),
        "e2e_cpu_ms_per_event": (
            f"e2e CPU ms/event at {c['e2e_target_rate']:.0f}/s (web+relay+worker+PostgreSQL)",
            "{:.3f}",
        ),
        "e2e_p50_ms": (f"e2e p50 ms at {c['e2e_target_rate']:.0f}/s", "{:.1f}"),
        "e2e_p99_ms": (f"e2e p99 ms at {c['e2e_target_rate']:.0f}/s", "{:.1f}"),
    }
    rows = [("what", f"new {new_rev}", f"old {old_rev}", "new/old [by round]", "budget")]
    for key, (label, fmt) in labels.items():
        line = c[key]

        def cell(side: str, line: dict[str, Any] = line, fmt: str = fmt) -> str:
            low, high = line[f"{side}_range"] or [line[side], line[side]]
            return f"{fmt.format(line[side])} [{fmt.format(low)}-{fmt.format(high)}]"

        by_round = line["ratio_per_round"]
        spread = f" [{min(by_round):.2f}-{max(by_round):.2f}]" if by_round else ""
        verdict = "ok" if line["ok"] else "MISSED"
        rows.append(
            (
                label,
                cell("new"),
                cell("old"),
                f"{line['ratio']:.2f}x{spread}",
                f"{line['budget']}: {verdict}",
            )
        )
    once = c["exactly_once"]
    rows.append(
        (
            "every event succeeded exactly once",
            f"{once['new']} events",
            f"{once['old']} events",
            "",
            "both: ok" if once["ok"] else "both: FAILED",
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    verdict = "within" if c["ok"] else "OUTSIDE"
    return "\n".join(lines) + f"\n(values [range over the rounds]; {verdict} the budget)"


def write_results(report: Report, output: Path | None) -> Path:
    if output is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        output = RESULTS_DIR / f"{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(report)
    if data["against"] is None:
        del data["against"]
    output.write_text(json.dumps(data, indent=2) + "\n")
    return output


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=stack.ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


__all__ = ["Bench", "BenchmarkFailure", "Options", "Report", "compare", "side_by_side", "table"]
