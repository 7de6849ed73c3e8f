"""Kombu's Redis transport, with one Redis client per channel for its commands.

Kombu's Redis channel builds a new ``redis.Redis`` for every command it sends outside its
BRPOP loop: each publish, and each message's "unacked" bookkeeping and its ack, three per
message. redis-py fills a case-insensitive table of about 170 response callbacks for every new
client, 0.15-0.3 ms of CPU on the project's machine, about as much as the command's round
trip. A client over a connection pool is safe to share (each command takes a connection from
the pool and gives it back), so the channel keeps one per pool: a new one only after its pool
was replaced (a fork, a lost connection).

Selected for ``redis://`` and ``rediss://`` broker URLs (``extensions.celery_config``); the
rest is Kombu's transport unchanged. It overrides Kombu's ``Channel._create_client``, which
is not public: ``tests/webhooks_app/test_broker.py`` fails if Kombu stops calling it.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _command_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            # The consumer's BRPOP client: Kombu keeps that one itself and sets its connection.
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        pool = self.pool
        client = self._command_client
        if client is None or client.connection_pool is not pool:
            client = self._command_client = super()._create_client()  # type: ignore[misc]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:{Transport.__name__}"
