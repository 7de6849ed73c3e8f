"""The load generator: what it signs, and the statistics it reports."""

from __future__ import annotations

import json
import math

import pytest
from standardwebhooks.webhooks import Webhook

from bench.loadgen import LatencySummary, LoadResult, Signer, completion_body, percentile
from tests.support.signing import TEST_SECRET
from webhooks_app.signatures import parse_secrets, verify


def test_bodies_are_realistic_one_kilobyte_completions() -> None:
    body = completion_body(7, created=1_700_000_000)
    assert 1000 <= len(body) <= 1100
    payload = json.loads(body)
    assert payload["event"] == "chat.completion"
    assert payload["data"]["id"] == "chatcmpl_00000007"
    assert payload["data"]["usage"]["total_tokens"] == 192
    assert completion_body(8, created=0) != completion_body(7, created=0)


def test_signed_requests_verify_with_the_service_and_the_reference_library() -> None:
    signer = Signer(TEST_SECRET, host="127.0.0.1:8000", clock=lambda: 1_700_000_000.5)
    request = signer.next()
    head, body = request.raw.split(b"\r\n\r\n", 1)
    assert body == request.body
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /webhooks/events HTTP/1.1"
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == request.msg_id
    assert headers["webhook-timestamp"] == "1700000000"
    delivery = verify(parse_secrets([TEST_SECRET]), headers, body, now=1_700_000_001)
    assert delivery.msg_id == request.msg_id
    reference = Webhook(TEST_SECRET)
    assert (
        reference.sign(request.msg_id, _dt(1_700_000_000), body.decode())
        == (headers["webhook-signature"])
    )


def _dt(seconds: int):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, tz=UTC)


def test_ids_are_unique_within_and_across_signers() -> None:
    first, second = Signer(TEST_SECRET, host="h"), Signer(TEST_SECRET, host="h")
    ids = [first.next().msg_id for _ in range(1000)] + [second.next().msg_id for _ in range(10)]
    assert len(set(ids)) == len(ids)
    assert all("." not in i for i in ids)  # a '.' would make the signature ambiguous


def test_percentiles_interpolate_between_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 4.0
    assert percentile(values, 0.5) == 2.5
    assert percentile(values, 0.99) == pytest.approx(3.97)
    assert percentile([5.0], 0.99) == 5.0
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError, match="fraction"):
        percentile(values, 1.5)


def test_latency_summary_is_in_milliseconds() -> None:
    summary = LatencySummary.of([0.001 * i for i in range(1, 101)])  # 1..100 ms
    assert summary.count == 100
    assert summary.p50_ms == pytest.approx(50.5)
    assert summary.p90_ms == pytest.approx(90.1)
    assert summary.p99_ms == pytest.approx(99.01)
    assert summary.max_ms == pytest.approx(100.0)
    empty = LatencySummary.of([])
    assert empty.count == 0
    assert math.isnan(empty.p50_ms)


def test_results_merge_and_count_errors() -> None:
    a = LoadResult(elapsed=1.0, latencies=[0.01], statuses={200: 1}, accepted=["x"])
    a.per_connection = [1, 0]
    b = LoadResult(elapsed=2.0, latencies=[0.02, 0.03], statuses={200: 1, 503: 1})
    b.errors = {"ConnectionResetError": 2}
    b.per_connection = [1, 1]
    a.merge(b)
    assert a.ok == 2
    assert a.failed == 3
    assert a.requests_per_second == pytest.approx(2 / 3)
    assert a.per_connection == [2, 1]
    assert a.summary().count == 3
