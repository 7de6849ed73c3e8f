"""The emulator itself: verification challenge, Bearer auth, signed deliveries with retries,
and ``emulator trigger``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner
from flask import Flask, Response, request
from standardwebhooks import Webhook

from tests.support.emulator import RunningEmulator, served, server_url
from tests.support.processes import free_port, wait_until
from webhooks_app.emulator.cli import emulator_cli


class Subscriber:
    """A receiver that answers 500 to the first ``failures`` deliveries and keeps them all."""

    def __init__(self, failures: int = 0, echo_challenge: bool = True) -> None:
        self.failures = failures
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.app = Flask("subscriber")

        @self.app.get("/hooks/verify")
        def verify() -> str:
            return request.args["challenge"] if echo_challenge else "something else"

        @self.app.post("/hooks/events")
        def events() -> Response:
            self.received.append((request.get_data(), dict(request.headers)))
            failed = len(self.received) <= self.failures
            return Response(status=500 if failed else 200)


@pytest.fixture
def subscriber() -> Iterator[tuple[Subscriber, str]]:
    sub = Subscriber(failures=2)
    with served(sub.app) as server:
        yield sub, server_url(server) + "/hooks/events"


def create(emulator: RunningEmulator, url: str, key: str | None = None) -> httpx.Response:
    return httpx.post(
        emulator.api_base + "/webhooks",
        json={"url": url, "events": ["chat.completion"]},
        headers={"Authorization": f"Bearer {key or emulator.api_key}"},
    )


def test_a_subscriber_that_fails_the_challenge_is_refused(emulator: RunningEmulator) -> None:
    wrong = Subscriber(echo_challenge=False)
    with served(wrong.app) as server:
        answer = create(emulator, server_url(server) + "/hooks/events")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "url_verification_failed"
    assert answer.json()["error"]["param"] == "url"
    unreachable = create(emulator, f"http://127.0.0.1:{free_port()}/hooks/events")
    assert unreachable.status_code == 400
    assert emulator.secrets() == {}


def test_only_keys_it_issued_are_accepted(emulator: RunningEmulator) -> None:
    models = emulator.api_base + "/models"
    assert httpx.get(models).status_code == 401
    wrong = httpx.get(models, headers={"Authorization": "Bearer ask_wrong"})
    assert wrong.status_code == 401
    assert set(wrong.json()["error"]) == {"type", "message", "param", "code"}
    boot = {"Authorization": f"Bearer {emulator.api_key}"}
    issued = httpx.post(emulator.api_base + "/keys", json={"name": "dev-key-01"}, headers=boot)
    new = {"Authorization": f"Bearer {issued.json()['key']}"}
    assert httpx.get(models, headers=new).status_code == 200
    deleted = httpx.delete(f"{emulator.api_base}/keys/{issued.json()['id']}", headers=boot)
    assert deleted.status_code == 200
    assert httpx.get(models, headers=new).status_code == 401


def test_deliveries_are_signed_per_subscription_and_retried(
    emulator: RunningEmulator, subscriber: tuple[Subscriber, str]
) -> None:
    sub, url = subscriber
    created = create(emulator, url)
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret.startswith("whsec_")
    sent = emulator.state.trigger("chat.completion", {"id": "chat_signed"})
    wait_until(lambda: len(sub.received) == 3, 15, what="two retries")
    wait_until(emulator.state.deliverer.idle, 15, what="the deliverer")
    for body, headers in sub.received:
        # The Standard Webhooks reference library accepts every attempt.
        payload = Webhook(secret).verify(body, headers)
        assert payload["data"]["id"] == "chat_signed"
        assert headers["Webhook-Id"] == sent["id"]
    attempts = [(a.attempt, a.status_code) for a in emulator.state.deliverer.attempts]
    assert attempts == [(1, 500), (2, 500), (3, 200)]


def test_trigger_command_sends_through_the_running_emulator(
    emulator: RunningEmulator, subscriber: tuple[Subscriber, str]
) -> None:
    runner = CliRunner()
    args = ["trigger", "model.failed", "--emulator-url", emulator.url]
    nobody = runner.invoke(emulator_cli, args)
    assert nobody.exit_code == 1
    assert "no subscription listens to model.failed" in nobody.output

    sub, url = subscriber
    sub.failures = 0
    httpx.post(
        emulator.api_base + "/webhooks",
        json={"url": url, "events": ["model.failed"]},
        headers={"Authorization": f"Bearer {emulator.api_key}"},
    ).raise_for_status()
    sent = runner.invoke(emulator_cli, [*args, "--data", '{"id": "chat_cli"}'])
    assert sent.exit_code == 0, sent.output
    assert sent.stdout.startswith("sent model.failed msg_")
    wait_until(lambda: sub.received, 15, what="the delivery")
    event = json.loads(sub.received[0][0])
    assert event["event"] == "model.failed"
    assert event["data"]["id"] == "chat_cli"
    assert event["data"]["error"]["code"] == "inference_failed"
