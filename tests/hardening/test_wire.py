"""Issue 17 against real gunicorn, on the wire: deep JSON at the intake (item 1), bad and foreign
Host headers (4), bodies over MAX_BODY_BYTES or cut short (6), the connection after an error
answer (7) and gunicorn's own error answers (10)."""

from __future__ import annotations

import json
import socket
import time
import uuid

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.hardening.conftest import (
    MAX_BODY_BYTES,
    Web,
    closed_by_peer,
    read_answer,
    request_bytes,
    start_web,
)
from tests.support.signing import TEST_SECRET
from webhooks_app.events import MAX_JSON_DEPTH
from webhooks_app.signatures import sign_headers

pytestmark = pytest.mark.e2e


def signed(body: bytes, msg_id: str | None = None) -> dict[str, str]:
    headers = sign_headers(TEST_SECRET, msg_id or f"msg_{uuid.uuid4().hex}", body)
    headers["Content-Type"] = "application/json"
    return headers


def padded_body(size: int) -> bytes:
    """A valid event body of exactly ``size`` bytes."""
    start, end = b'{"event":"big.body","data":{"pad":"', b'"}}'
    return start + b"x" * (size - len(start) - len(end)) + end


def chunked(body: bytes, size: int = 1000) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def event_status(web: Web, event_id: str) -> int:
    return httpx.get(
        f"http://127.0.0.1:{web.port}/api/events/{event_id}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    ).status_code


def error_of(body: bytes) -> dict[str, object]:
    error: dict[str, object] = json.loads(body)["error"]
    assert set(error) == {"type", "message", "param", "code"}
    return error


# --- item 1 -----------------------------------------------------------------------------------


def test_deep_json_is_refused_at_the_intake(web: Web) -> None:
    lists = 500
    body = b'{"event":"deep.nest","data":{"x":' + b"[" * lists + b"]" * lists + b"}}"
    response = httpx.post(
        f"http://127.0.0.1:{web.port}/webhooks/events",
        content=body,
        headers=signed(body, "msg_deep_nest"),
        timeout=10,
    )
    assert response.status_code == 400
    assert error_of(response.content)["code"] == "json_too_deep"
    assert str(MAX_JSON_DEPTH) in response.text
    assert event_status(web, "msg_deep_nest") == 404
    listing = httpx.get(
        f"http://127.0.0.1:{web.port}/api/events",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert listing.status_code == 200


# --- item 4 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["a" * 64 + ".example.com", "a..b"])
@pytest.mark.parametrize("path", ["/admin/", "/admin/events", "/api/events", "/webhooks/events"])
def test_an_invalid_host_is_a_json_400_without_a_traceback(web: Web, host: str, path: str) -> None:
    before = web.process.output().count("Traceback")
    with web.connect() as sock:
        sock.sendall(request_bytes("GET", path, {}, host=host))
        answer = read_answer(sock)
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    error = error_of(answer.body)
    assert (error["code"], error["param"]) == ("invalid_host", "Host")
    time.sleep(0.2)
    assert web.process.output().count("Traceback") == before


def test_a_redirect_does_not_repeat_a_foreign_host(web: Web) -> None:
    with web.connect() as sock:
        sock.sendall(request_bytes("GET", "/admin", {}, host="evil.example"))
        answer = read_answer(sock)
    assert answer.status == 308
    assert answer.headers["location"] == "/admin/"


def test_trusted_hosts_refuse_other_names(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    log_dir = tmp_path_factory.mktemp("trusted-hosts")
    web = start_web(postgres_url, redis_url, log_dir, TRUSTED_HOSTS="127.0.0.1,.example.org")
    try:
        for host, status in [
            ("evil.example", 400),
            ("webhooks.example.org", 404),  # trusted; /nowhere is not a route
            ("127.0.0.1:8000", 404),
        ]:
            with web.connect() as sock:
                sock.sendall(request_bytes("GET", "/nowhere", {}, host=host))
                answer = read_answer(sock)
            assert answer.status == status, host
            if status == 400:
                assert error_of(answer.body)["code"] == "invalid_host"
    finally:
        web.process.stop()


# --- item 6 -----------------------------------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_413_and_not_stored(web: Web) -> None:
    body = padded_body(MAX_BODY_BYTES + 1)
    msg_id = f"msg_{uuid.uuid4().hex}"
    headers = {**signed(body, msg_id), "Transfer-Encoding": "chunked"}
    with web.connect() as sock:
        sock.sendall(request_bytes("POST", "/webhooks/events", headers, chunked(body)))
        answer = read_answer(sock)
    assert answer.status == 413, answer.body
    assert error_of(answer.body)["code"] == "body_too_large"
    assert event_status(web, msg_id) == 404


def test_a_chunked_body_signed_over_its_first_bytes_is_not_cut_to_fit(web: Web) -> None:
    body = padded_body(MAX_BODY_BYTES)
    msg_id = f"msg_{uuid.uuid4().hex}"
    headers = {**signed(body, msg_id), "Transfer-Encoding": "chunked"}
    with web.connect() as sock:
        sock.sendall(request_bytes("POST", "/webhooks/events", headers, chunked(body + b"   ")))
        answer = read_answer(sock)
    assert answer.status == 413, answer.body
    assert event_status(web, msg_id) == 404


def test_a_chunked_body_within_the_limit_is_accepted(web: Web) -> None:
    body = padded_body(MAX_BODY_BYTES)
    msg_id = f"msg_{uuid.uuid4().hex}"
    headers = {**signed(body, msg_id), "Transfer-Encoding": "chunked"}
    with web.connect() as sock:
        sock.sendall(request_bytes("POST", "/webhooks/events", headers, chunked(body)))
        answer = read_answer(sock)
    assert answer.status == 200, answer.body
    assert event_status(web, msg_id) == 200


def test_a_body_shorter_than_its_content_length_is_400_and_not_stored(web: Web) -> None:
    body = padded_body(2000)
    msg_id = f"msg_{uuid.uuid4().hex}"
    sent = body[:1500]
    # Signed over what arrives, so only the length check can tell the body was cut.
    headers = {**signed(sent, msg_id), "Content-Length": str(len(body))}
    with web.connect() as sock:
        sock.sendall(request_bytes("POST", "/webhooks/events", headers, sent))
        sock.shutdown(socket.SHUT_WR)  # the client is gone mid-body
        try:
            answer = read_answer(sock)
            assert answer.status == 400, answer.body
            assert error_of(answer.body)["code"] == "incomplete_body"
        except ConnectionError:
            pass  # nobody is left to answer; what matters is that nothing is stored
    time.sleep(0.5)
    assert event_status(web, msg_id) == 404


# --- item 7 -----------------------------------------------------------------------------------


def test_after_a_413_the_connection_is_closed_and_says_so(web: Web) -> None:
    body = padded_body(MAX_BODY_BYTES * 40)
    with web.connect() as sock:
        sock.sendall(request_bytes("POST", "/webhooks/events", signed(body), body))
        answer = read_answer(sock)
        assert answer.status == 413
        assert answer.headers["connection"] == "close"
        assert closed_by_peer(sock)


@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
def test_a_keep_alive_client_is_served_after_an_error_answer(web: Web, transfer: str) -> None:
    """What a provider's pooled connection sees: the answer, then its next delivery served
    (on the same connection, or on a new one after the server said it closes)."""
    oversized = padded_body(MAX_BODY_BYTES * 40)
    good = padded_body(100)
    good_id = f"msg_{uuid.uuid4().hex}"
    if transfer == "chunked":
        first = request_bytes(
            "POST",
            "/webhooks/events",
            {**signed(oversized), "Transfer-Encoding": "chunked"},
            chunked(oversized),
        )
    else:
        first = request_bytes("POST", "/webhooks/events", signed(oversized), oversized)
    second = request_bytes("POST", "/webhooks/events", signed(good, good_id), good)
    sock = web.connect()
    try:
        sock.sendall(first)
        answer = read_answer(sock)
        assert answer.status == 413
        if answer.headers.get("connection") == "close":
            assert closed_by_peer(sock)
            sock.close()
            sock = web.connect()
        sock.sendall(second)
        answer = read_answer(sock)
        assert answer.status == 200, answer.body
    finally:
        sock.close()
    assert event_status(web, good_id) == 200


def test_a_small_unread_body_keeps_the_connection(web: Web) -> None:
    body = padded_body(200)
    with web.connect() as sock:
        headers = {**signed(body), "Content-Type": "text/plain"}
        sock.sendall(request_bytes("POST", "/webhooks/events", headers, body))
        answer = read_answer(sock)
        assert answer.status == 415
        sock.sendall(request_bytes("GET", "/healthz", {}))
        assert read_answer(sock).status == 200


# --- item 10 (gunicorn's own answers) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),
    ],
)
def test_gunicorns_own_error_answers_are_in_the_error_format(
    web: Web, raw: bytes, status: int
) -> None:
    with web.connect() as sock:
        sock.sendall(raw)
        answer = read_answer(sock)
    assert answer.status == status
    assert answer.headers["content-type"] == "application/json"
    error = error_of(answer.body)
    assert error["type"] == "invalid_request_error"
