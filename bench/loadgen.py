"""The load generator: realistic signed ``chat.completion`` deliveries over raw HTTP/1.1.

It is deliberately small and cheap per request (asyncio streams, a pre-built header block, one
HMAC per delivery) so that on a 2-core machine it takes as little CPU as possible from the server
it measures. Signing uses the service's own ``webhooks_app.signatures.sign`` so that what is sent
is exactly what the receiver verifies.

Two ways to drive load:

* closed loop (``rate=None``): each of ``connections`` clients sends its next request as soon as
  the previous answer arrived, for ``duration`` seconds;
* fixed rate (``rate=R``): requests are started on a schedule of ``R`` per second spread over the
  clients (a client that falls behind sends at once and the delay shows in the latency).

Connections are kept alive while the server keeps them (gunicorn's gthread workers do; sync
workers close after every answer); when the server closes one, the client reconnects and the
connect time is part of the measured latency, as it is for a provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from webhooks_app.signatures import sign

BODY_TARGET_BYTES = 1024
_FILLER = (
    "Quantum computing uses qubits, which can be in superpositions of 0 and 1, so that some "
    "problems (factoring, simulating molecules, searching) can be solved with fewer steps than "
    "any known classical algorithm needs. "
)


def completion_body(
    event_number: int, *, created: int, target_bytes: int = BODY_TARGET_BYTES
) -> bytes:
    """A realistic ``chat.completion`` event of about ``target_bytes`` bytes (UTF-8 JSON)."""
    head = (
        '{"event":"chat.completion","data":{"id":"chatcmpl_' + f"{event_number:08d}" + '",'
        '"object":"chat.completion","created":' + str(created) + ',"model":"gpt-4.1-mini",'
        '"status":"completed","choices":[{"index":0,"message":{"role":"assistant","content":"'
    )
    tail = (
        '"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":180,'
        '"total_tokens":192},"metadata":{"user":"user_' + str(event_number % 997) + '",'
        '"conversation":"conv_' + str(event_number % 4999) + '"}}}'
    )
    room = max(target_bytes - len(head) - len(tail), 0)
    content = (_FILLER * (room // len(_FILLER) + 1))[:room]
    return (head + content + tail).encode()


@dataclass(frozen=True)
class SignedRequest:
    msg_id: str
    body: bytes
    raw: bytes  # the whole HTTP/1.1 request, ready to write


class Signer:
    """Builds signed requests with ids unique to this run: ``<prefix>_<n>``."""

    def __init__(
        self,
        secret: str,
        *,
        host: str,
        path: str = "/webhooks/events",
        prefix: str | None = None,
        keep_alive: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret = secret
        self.prefix = prefix or f"msg_bench_{uuid.uuid4().hex[:10]}"
        self._counter = itertools.count(1)
        self._clock = clock
        connection = "keep-alive" if keep_alive else "close"
        self._request_line = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode()
        self._fixed_headers = (
            f"Content-Type: application/json\r\nUser-Agent: assisters-bench/1\r\n"
            f"Connection: {connection}\r\n"
        ).encode()

    def next(self) -> SignedRequest:
        number = next(self._counter)
        msg_id = f"{self.prefix}_{number}"
        now = int(self._clock())
        body = completion_body(number, created=now)
        signature = sign(self.secret, msg_id, now, body)
        headers = (
            f"webhook-id: {msg_id}\r\nwebhook-timestamp: {now}\r\n"
            f"webhook-signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        return SignedRequest(
            msg_id, body, self._request_line + self._fixed_headers + headers + body
        )


# --- statistics -------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile of already sorted values (``fraction`` in [0, 1])."""
    if not sorted_values:
        return math.nan
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must be within [0, 1]")
    position = fraction * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    weight = position - low
    return sorted_values[low] * (1 - weight) + sorted_values[high] * weight


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencySummary:
        ordered = sorted(seconds)
        return cls(
            count=len(ordered),
            p50_ms=percentile(ordered, 0.50) * 1000,
            p90_ms=percentile(ordered, 0.90) * 1000,
            p99_ms=percentile(ordered, 0.99) * 1000,
            max_ms=(ordered[-1] * 1000) if ordered else math.nan,
        )


@dataclass
class LoadResult:
    """What one load run measured. ``sent_at`` maps accepted event ids to wall-clock send time."""

    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    per_connection: list[int] = field(default_factory=list)
    reconnects: int = 0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.statuses.items() if code != 200) + sum(
            self.errors.values()
        )

    @property
    def requests_per_second(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def merge(self, other: LoadResult) -> None:
        """Add another run's requests (several rounds reported as one)."""
        self.elapsed += other.elapsed
        self.latencies += other.latencies
        for code, n in other.statuses.items():
            self.statuses[code] = self.statuses.get(code, 0) + n
        for name, n in other.errors.items():
            self.errors[name] = self.errors.get(name, 0) + n
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.sent_at.update(other.sent_at)
        if len(self.per_connection) < len(other.per_connection):
            self.per_connection += [0] * (len(other.per_connection) - len(self.per_connection))
        for i, n in enumerate(other.per_connection):
            self.per_connection[i] += n
        self.reconnects += other.reconnects

    def summary(self) -> LatencySummary:
        return LatencySummary.of(self.latencies)


# --- the client -------------------------------------------------------------------------------


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, raw: bytes) -> tuple[int, bytes, bool]:
        """Send one request, return (status, body, reconnected)."""
        reconnected = False
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            reconnected = True
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, body, reconnected

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def _schedule(rate: float | None, start: float, connections: int, index: int) -> Iterator[float]:
    """When client ``index`` should send its n-th request (monotonic), or 0 for 'at once'."""
    if rate is None:
        while True:
            yield 0.0
    interval = connections / rate
    for n in itertools.count():
        yield start + (index / connections + n) * interval


async def _client(
    index: int,
    signer: Signer,
    host: str,
    port: int,
    *,
    start: float,
    deadline: float,
    rate: float | None,
    connections: int,
    limit: Iterator[int] | None,
    result: LoadResult,
) -> None:
    conn = _Connection(host, port)
    sent = 0
    try:
        for due in _schedule(rate, start, connections, index):
            if limit is not None and next(limit, None) is None:
                break
            now = time.monotonic()
            if now >= deadline:
                break
            if due > now:
                await asyncio.sleep(due - now)
            request = signer.next()
            began = time.monotonic()
            wall = time.time()
            try:
                status, body, reconnected = await conn.exchange(request.raw)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                result.errors[type(exc).__name__] = result.errors.get(type(exc).__name__, 0) + 1
                await conn.close()
                continue
            result.latencies.append(time.monotonic() - began)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            result.reconnects += reconnected
            sent += 1
            if status == 200:
                if b'"accepted"' in body:
                    result.accepted.append(request.msg_id)
                    result.sent_at[request.msg_id] = wall
                else:
                    result.duplicates.append(request.msg_id)
    finally:
        result.per_connection[index] = sent
        await conn.close()


async def _run(
    signer: Signer,
    host: str,
    port: int,
    *,
    connections: int,
    duration: float,
    rate: float | None,
    total: int | None,
) -> LoadResult:
    result = LoadResult(per_connection=[0] * connections)
    limit = iter(range(total)) if total is not None else None
    start = time.monotonic()
    deadline = start + duration
    await asyncio.gather(
        *(
            _client(
                i,
                signer,
                host,
                port,
                start=start,
                deadline=deadline,
                rate=rate,
                connections=connections,
                limit=limit,
                result=result,
            )
            for i in range(connections)
        )
    )
    result.elapsed = time.monotonic() - start
    return result


def run_load(
    signer: Signer,
    host: str,
    port: int,
    *,
    connections: int = 8,
    duration: float = 10.0,
    rate: float | None = None,
    total: int | None = None,
) -> LoadResult:
    """Drive load and return what was measured; ``total`` stops after that many requests."""
    return asyncio.run(
        _run(
            signer,
            host,
            port,
            connections=connections,
            duration=duration,
            rate=rate,
            total=total,
        )
    )
