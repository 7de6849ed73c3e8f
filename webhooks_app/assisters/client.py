"""A small client for the parts of the Assisters API this service manages.

Retries follow the seed: a 429 is retried after 1 s, 2 s, 4 s (or what ``Retry-After`` says);
a 5xx or a lost connection up to 3 times with jitter; any other 4xx never. Every POST carries an
``Idempotency-Key`` that is the same on each of its retries, so a retried create is done once.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from webhooks_app.assisters.errors import (
    AssistersError,
    ConnectionFailed,
    ServerError,
    error_from_response,
)

log = logging.getLogger(__name__)

RATE_LIMIT_BACKOFF = (1.0, 2.0, 4.0)
SERVER_ERROR_RETRIES = 3
SERVER_ERROR_BASE_SECONDS = 0.5
JITTER_SECONDS = 0.5
# A Retry-After longer than this is not waited for in-process; the caller gets RateLimited.
MAX_RETRY_AFTER_SECONDS = 60.0


@dataclass(frozen=True)
class Model:
    id: str
    name: str
    max_tokens: int | None
    supports: tuple[str, ...]


@dataclass(frozen=True, repr=False)
class WebhookSubscription:
    id: str
    url: str
    events: tuple[str, ...]
    # Only the create answer carries the signing secret.
    secret: str | None = field(default=None)

    def __repr__(self) -> str:
        return f"WebhookSubscription(id={self.id!r}, url={self.url!r}, events={self.events!r})"


@dataclass(frozen=True, repr=False)
class ApiKey:
    id: str
    name: str
    # Only the create answer carries the key itself.
    key: str | None = None

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r}, name={self.name!r})"


class AssistersClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout | float = 10.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = lambda: random.uniform(0, JITTER_SECONDS),  # noqa: S311
    ) -> None:
        self._sleep = sleep
        self._jitter = jitter
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=timeout if isinstance(timeout, httpx.Timeout) else _timeout(timeout),
            transport=transport,
            follow_redirects=False,
        )

    def __enter__(self) -> AssistersClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- calls ------------------------------------------------------------------------------

    def list_models(self) -> list[Model]:
        body = self._request("GET", "models")
        return [
            Model(
                id=str(m["id"]),
                name=str(m.get("name", m["id"])),
                max_tokens=m.get("max_tokens"),
                supports=tuple(m.get("supports", ())),
            )
            for m in body.get("models", [])
        ]

    def create_webhook(
        self, url: str, events: list[str], *, idempotency_key: str | None = None
    ) -> WebhookSubscription:
        body = self._request(
            "POST",
            "webhooks",
            json={"url": url, "events": events},
            idempotency_key=idempotency_key,
        )
        return _subscription(body)

    def list_webhooks(self) -> list[WebhookSubscription]:
        body = self._request("GET", "webhooks")
        return [_subscription(item) for item in body.get("webhooks", [])]

    def delete_webhook(self, subscription_id: str) -> None:
        self._request("DELETE", f"webhooks/{_segment(subscription_id)}")

    def create_key(self, name: str, *, idempotency_key: str | None = None) -> ApiKey:
        body = self._request("POST", "keys", json={"name": name}, idempotency_key=idempotency_key)
        return ApiKey(id=str(body["id"]), name=str(body.get("name", name)), key=body.get("key"))

    def delete_key(self, key_id: str) -> None:
        self._request("DELETE", f"keys/{_segment(key_id)}")

    # --- transport --------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {}
        if method == "POST":
            # One key for the call, reused by every retry: the provider does the work once.
            headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        rate_limited = server_failures = 0
        while True:
            try:
                response = self._http.request(method, path, json=json, headers=headers)
            except httpx.TransportError as exc:
                if server_failures >= SERVER_ERROR_RETRIES:
                    raise ConnectionFailed(
                        f"The Assisters API could not be reached ({type(exc).__name__}).",
                        type="connection_error",
                    ) from None
                server_failures += 1
                self._wait(method, path, "no answer", self._server_delay(server_failures))
                continue
            if response.is_success:
                return _json_object(response)
            retry_after = _retry_after_seconds(response)
            if response.status_code == 429 and rate_limited < len(RATE_LIMIT_BACKOFF):
                delay = RATE_LIMIT_BACKOFF[rate_limited] if retry_after is None else retry_after
                if delay <= MAX_RETRY_AFTER_SECONDS:
                    rate_limited += 1
                    self._wait(method, path, "429", delay)
                    continue
            elif response.status_code >= 500 and server_failures < SERVER_ERROR_RETRIES:
                server_failures += 1
                self._wait(
                    method, path, str(response.status_code), self._server_delay(server_failures)
                )
                continue
            raise error_from_response(response, retry_after=retry_after)

    def _server_delay(self, failures: int) -> float:
        return SERVER_ERROR_BASE_SECONDS * 2.0 ** (failures - 1) + self._jitter()

    def _wait(self, method: str, path: str, why: str, delay: float) -> None:
        log.warning("Assisters API %s /%s: %s, retrying in %.1fs", method, path, why, delay)
        self._sleep(delay)


def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, 5.0))


def _segment(value: str) -> str:
    """An id as one path segment, so an id can never point the call at another path."""
    from urllib.parse import quote

    return quote(value, safe="")


def _json_object(response: httpx.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        raise ServerError(
            "The Assisters API answered with a body that is not JSON.",
            status=response.status_code,
            type="api_error",
        ) from None
    if not isinstance(body, dict):
        raise ServerError(
            "The Assisters API answered with JSON that is not an object.",
            status=response.status_code,
            type="api_error",
        )
    return body


def _subscription(body: dict[str, Any]) -> WebhookSubscription:
    try:
        return WebhookSubscription(
            id=str(body["id"]),
            url=str(body["url"]),
            events=tuple(str(e) for e in body.get("events", ())),
            secret=body.get("secret"),
        )
    except KeyError as exc:
        raise AssistersError(
            f"The Assisters API's subscription lacks {exc.args[0]!r}.", type="api_error"
        ) from None


def _retry_after_seconds(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())
