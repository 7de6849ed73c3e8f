"""The provider client against the emulator as a real HTTP server: typed errors, the seed's
retries, and one Idempotency-Key per POST across its retries."""

from __future__ import annotations

import httpx
import pytest

from tests.support.emulator import RunningEmulator, running_emulator
from tests.support.processes import free_port
from webhooks_app.assisters import (
    AssistersClient,
    BadRequest,
    ConnectionFailed,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
)

JITTER = 0.25


class RecordedSleep:
    """Records the waits the client asks for instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def client_for(
    emulator: RunningEmulator, sleep: RecordedSleep, api_key: str | None = None
) -> AssistersClient:
    return AssistersClient(
        emulator.api_base, api_key or emulator.api_key, sleep=sleep, jitter=lambda: JITTER
    )


def test_lists_models(emulator: RunningEmulator) -> None:
    with client_for(emulator, RecordedSleep()) as client:
        models = client.list_models()
    assert models[0].id == "gpt-4.1-mini"
    assert models[0].max_tokens == 128000
    assert "chat" in models[0].supports


def test_server_errors_are_retried_with_jitter_under_one_idempotency_key(
    emulator: RunningEmulator,
) -> None:
    emulator.fault(500, count=2)
    sleep = RecordedSleep()
    with client_for(emulator, sleep) as client:
        created = client.create_key("dev-key-01")
    posts = emulator.requests("POST", "/v1/keys")
    assert [r["status"] for r in posts] == [500, 500, 201]
    keys = {r["idempotency_key"] for r in posts}
    assert len(keys) == 1
    assert None not in keys
    assert sleep.delays == [0.5 + JITTER, 1.0 + JITTER]
    assert created.key
    with client_for(emulator, RecordedSleep(), api_key=created.key) as client:
        assert client.list_models()  # the created key works


def test_server_errors_give_up_after_three_retries(emulator: RunningEmulator) -> None:
    emulator.fault(500, count=4)
    sleep = RecordedSleep()
    with client_for(emulator, sleep) as client, pytest.raises(ServerError) as raised:
        client.list_models()
    error = raised.value
    assert (error.status, error.type, error.code) == (500, "api_error", "injected_fault")
    assert error.message == "Model inference failed."
    assert len(emulator.requests("GET", "/v1/models")) == 4
    assert len(sleep.delays) == 3


def test_rate_limit_backs_off_1_2_4_seconds_then_raises(emulator: RunningEmulator) -> None:
    emulator.fault(429, count=4)
    sleep = RecordedSleep()
    with client_for(emulator, sleep) as client, pytest.raises(RateLimited) as raised:
        client.list_models()
    assert sleep.delays == [1.0, 2.0, 4.0]
    assert raised.value.type == "rate_limit_error"
    assert len(emulator.requests("GET", "/v1/models")) == 4


def test_rate_limit_honours_retry_after_and_keeps_the_idempotency_key(
    emulator: RunningEmulator,
) -> None:
    emulator.fault(429, count=2, retry_after=7)
    sleep = RecordedSleep()
    with client_for(emulator, sleep) as client:
        client.create_key("dev-key-01")
    assert sleep.delays == [7.0, 7.0]
    posts = emulator.requests("POST", "/v1/keys")
    assert [r["status"] for r in posts] == [429, 429, 201]
    assert len({r["idempotency_key"] for r in posts}) == 1
    assert emulator.created("/v1/keys") == 1


def test_the_emulators_own_rate_limit_is_honoured() -> None:
    with running_emulator(rate_limit=2) as emulator:
        sleep = RecordedSleep()
        with client_for(emulator, sleep) as client:
            client.list_models()
            client.list_models()
            with pytest.raises(RateLimited) as raised:
                client.list_models()
    # The limiter's window is a minute; each 429 said so and the client waited that long.
    assert raised.value.retry_after is not None
    assert 59 <= raised.value.retry_after <= 60
    assert len(sleep.delays) == 3
    assert all(59 <= delay <= 60 for delay in sleep.delays)


def test_bad_request_is_not_retried(emulator: RunningEmulator) -> None:
    sleep = RecordedSleep()
    with client_for(emulator, sleep) as client, pytest.raises(BadRequest) as raised:
        client.create_webhook("http://127.0.0.1:9/webhooks/events", ["no.such.event"])
    assert (raised.value.status, raised.value.param) == (400, "events")
    assert raised.value.code == "invalid_events"
    assert len(emulator.requests("POST", "/v1/webhooks")) == 1
    assert sleep.delays == []


def test_a_wrong_key_is_unauthorized_and_not_retried(emulator: RunningEmulator) -> None:
    sleep = RecordedSleep()
    with (
        client_for(emulator, sleep, api_key="ask_wrong") as client,
        pytest.raises(Unauthorized) as raised,
    ):
        client.list_models()
    assert (raised.value.status, raised.value.type) == (401, "authentication_error")
    assert sleep.delays == []


def test_an_unknown_subscription_is_not_found(emulator: RunningEmulator) -> None:
    with client_for(emulator, RecordedSleep()) as client, pytest.raises(NotFound) as raised:
        client.delete_webhook("wh_missing")
    assert raised.value.code == "webhook_not_found"


def test_each_post_has_its_own_key_and_a_repeated_key_is_done_once(
    emulator: RunningEmulator,
) -> None:
    with client_for(emulator, RecordedSleep()) as client:
        client.create_key("first")
        client.create_key("second")
        again = [client.create_key("third", idempotency_key="fixed-key") for _ in range(2)]
    posts = emulator.requests("POST", "/v1/keys")
    assert len({r["idempotency_key"] for r in posts}) == 3
    assert again[0].id == again[1].id
    assert [r["replayed"] for r in posts] == [False, False, False, True]
    assert emulator.created("/v1/keys") == 3


def test_no_answer_is_retried_then_a_typed_error() -> None:
    sleep = RecordedSleep()
    client = AssistersClient(
        f"http://127.0.0.1:{free_port()}/v1", "ask_x", sleep=sleep, jitter=lambda: 0.0
    )
    with client, pytest.raises(ConnectionFailed):
        client.list_models()
    assert sleep.delays == [0.5, 1.0, 2.0]


def test_the_transport_is_swappable() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "key_1", "name": "k", "key": "ask_new"})

    with AssistersClient(
        "https://api.example/v1", "ask_x", transport=httpx.MockTransport(answer)
    ) as client:
        created = client.create_key("k")
    assert created.id == "key_1"
    assert seen[0].headers["Authorization"] == "Bearer ask_x"
    assert seen[0].headers["Idempotency-Key"]
    assert "ask_new" not in repr(created)
