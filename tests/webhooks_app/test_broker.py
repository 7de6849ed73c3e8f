"""The Redis transport's channel: one client for its commands, Kombu's behaviour otherwise."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

from webhooks_app import broker
from webhooks_app.config import Settings
from webhooks_app.extensions import celery_config


@pytest.fixture
def clients_made(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every command client Kombu's own channel code builds, in order."""
    made: list[Any] = []
    original: Callable[..., Any] = kombu_redis.Channel._create_client

    def counting(self: Any, asynchronous: bool = False) -> Any:
        client = original(self, asynchronous)
        if not asynchronous:
            made.append(client)
        return client

    monkeypatch.setattr(kombu_redis.Channel, "_create_client", counting)
    return made


@pytest.fixture
def connection(redis_url: str) -> Iterator[Connection]:
    with Connection(redis_url, transport=broker.TRANSPORT) as conn:
        yield conn


def test_publishing_consuming_and_acking_share_one_client(
    connection: Connection, clients_made: list[Any]
) -> None:
    queue = connection.SimpleQueue(f"test-broker-{uuid.uuid4().hex}")
    channel = connection.default_channel
    try:
        for n in range(3):
            queue.put({"n": n})
        messages = [queue.get(timeout=1) for _ in range(3)]
        assert [m.payload for m in messages] == [{"n": 0}, {"n": 1}, {"n": 2}]
        # Kombu's ack emulation still records each message taken, and forgets it on ack.
        assert channel.client.hlen(channel.unacked_key) == 3
        for message in messages:
            message.ack()
        assert channel.client.hlen(channel.unacked_key) == 0
    finally:
        queue.clear()
        queue.close()
    assert len(clients_made) == 1


def test_a_replaced_pool_gets_a_client_of_its_own(
    connection: Connection, clients_made: list[Any]
) -> None:
    channel = connection.default_channel
    first = channel._create_client()
    assert channel._create_client() is first
    channel._disconnect_pools()  # what Kombu does after a fork or a lost connection
    second = channel._create_client()
    assert second is not first
    assert second.connection_pool is channel.pool
    assert second.ping()
    assert clients_made == [first, second]


def test_a_message_taken_and_never_acked_comes_back(redis_url: str) -> None:
    # As for a killed worker's messages: back in the queue once the visibility timeout passed.
    options = {"visibility_timeout": 0.05}
    with Connection(redis_url, transport=broker.TRANSPORT, transport_options=options) as conn:
        queue = conn.SimpleQueue(f"test-broker-{uuid.uuid4().hex}")
        try:
            queue.put({"n": 1})
            assert queue.get(timeout=1).payload == {"n": 1}
            time.sleep(0.1)
            conn.default_channel.qos.restore_visible()
            again = queue.get(timeout=1)
            assert again.payload == {"n": 1}
            again.ack()
        finally:
            queue.clear()
            queue.close()


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("redis://127.0.0.1:6379/0", broker.TRANSPORT),
        ("rediss://cache.example:6380/0?ssl_cert_reqs=required", broker.TRANSPORT),
        ("sentinel://127.0.0.1:26379", None),
        ("amqp://guest@127.0.0.1//", None),
    ],
)
def test_the_transport_is_chosen_for_redis_urls_only(
    tmp_path: Path, url: str, transport: str | None
) -> None:
    config = celery_config(Settings(instance_dir=tmp_path, broker_url=url))
    assert config.get("broker_transport") == transport


def test_the_embedded_broker_is_polled_often_enough_for_handlers_to_start_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    embedded = replace(settings, broker_url="", instance_dir=tmp_path / "instance")
    assert embedded.uses_embedded_broker
    config = celery_config(embedded)
    with Connection(
        config["broker_url"], transport_options=config["broker_transport_options"]
    ) as conn:
        queue = conn.SimpleQueue(f"test-embedded-{uuid.uuid4().hex}")
        try:
            queue.put({"n": 1})
            assert queue.get(timeout=1).payload == {"n": 1}
            # The consumer's wait between looks at the queue folder (Kombu's default is 1 s).
            assert conn.transport.polling_interval <= 0.1
        finally:
            queue.close()
