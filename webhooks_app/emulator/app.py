"""The emulator's HTTP API: ``/v1/models``, ``/v1/webhooks``, ``/v1/keys`` as the seed describes
them, plus private ``/_emulator/...`` endpoints to trigger events and inject faults."""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
from flask import Flask, Response, g, jsonify, request

from webhooks_app.emulator.delivery import STANDARD_SCHEDULE, Deliverer, PendingDelivery
from webhooks_app.errors import ApiError, error_response, register_error_handlers
from webhooks_app.signatures import generate_hmac_secret

EVENT_TYPES = ("chat.completion", "model.failed")
DEFAULT_API_KEY = "ask_emulator_local_development_key"  # the emulator's own; not a secret
DEFAULT_API_KEY_ID = "key_emulator_bootstrap"

MODELS = [
    {
        "id": "gpt-4.1-mini",
        "name": "GPT-4.1 Mini",
        "max_tokens": 128000,
        "supports": ["chat", "embeddings", "reasoning"],
    },
    {
        "id": "text-embedding-3-small",
        "name": "Text Embedding 3 Small",
        "max_tokens": 8191,
        "supports": ["embeddings"],
    },
]


@dataclass(frozen=True)
class EmulatorConfig:
    api_key: str = DEFAULT_API_KEY
    api_key_id: str = DEFAULT_API_KEY_ID
    # Requests per key per window; 0 turns the limiter off.
    rate_limit: int = 600
    rate_window_seconds: float = 60.0
    # Divides the delivery retry schedule: 1000 turns 5 min into 0.3 s.
    retry_compression: float = 1.0
    retry_schedule: tuple[float, ...] = STANDARD_SCHEDULE
    verify_timeout_seconds: float = 5.0
    delivery_timeout_seconds: float = 15.0


@dataclass
class Subscription:
    id: str
    url: str
    events: list[str]
    secret: str
    created_at: str

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "created_at": self.created_at,
        }


@dataclass
class IssuedKey:
    id: str
    name: str
    key: str
    created_at: str


@dataclass
class Fault:
    status: int
    remaining: int
    retry_after: int | None


@dataclass
class EmulatorState:
    """Everything the emulator knows, in memory, behind one lock."""

    config: EmulatorConfig
    lock: threading.Lock = field(default_factory=threading.Lock)
    keys: dict[str, IssuedKey] = field(default_factory=dict)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    idempotent: dict[tuple[str, str], tuple[str, int, bytes]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    windows: dict[str, tuple[float, int]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    deliverer: Deliverer = field(init=False)

    def __post_init__(self) -> None:
        self.keys[self.config.api_key_id] = IssuedKey(
            self.config.api_key_id, "bootstrap", self.config.api_key, _now()
        )
        self.deliverer = Deliverer(
            self.delivery_target,
            schedule=self.config.retry_schedule,
            compression=self.config.retry_compression,
            timeout=self.config.delivery_timeout_seconds,
        )

    def delivery_target(self, subscription_id: str) -> tuple[str, str] | None:
        with self.lock:
            sub = self.subscriptions.get(subscription_id)
            return (sub.url, sub.secret) if sub else None

    def key_for(self, token: str) -> IssuedKey | None:
        with self.lock:
            for issued in self.keys.values():
                if secrets.compare_digest(issued.key, token):
                    return issued
        return None

    def trigger(self, event_type: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = sample_event(event_type, data)
        msg_id = f"msg_{uuid.uuid4().hex}"
        body = orjson.dumps(payload)
        with self.lock:
            targets = [s.id for s in self.subscriptions.values() if event_type in s.events]
        # One message id for every subscription, as Standard Webhooks does: a receiver reached
        # through two subscriptions (during a rotation) stores the event once.
        for subscription_id in targets:
            self.deliverer.enqueue(PendingDelivery(msg_id, subscription_id, body))
        return {"id": msg_id, "event": event_type, "subscriptions": targets, "payload": payload}


def sample_event(event_type: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": f"chat_{uuid.uuid4().hex[:12]}",
        "model": "gpt-4.1-mini",
        "created": int(time.time()),
    }
    if event_type == "chat.completion":
        base.update(
            status="completed",
            usage={"prompt_tokens": 12, "completion_tokens": 48, "total_tokens": 60},
        )
    elif event_type == "model.failed":
        base.update(
            status="failed",
            error={
                "type": "api_error",
                "message": "Model inference failed.",
                "param": None,
                "code": "inference_failed",
            },
        )
    base.update(data or {})
    return {"event": event_type, "data": base}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def create_emulator_app(config: EmulatorConfig | None = None) -> Flask:
    config = config or EmulatorConfig()
    state = EmulatorState(config)
    app = Flask("assisters_emulator")
    app.extensions["emulator"] = state
    register_error_handlers(app)

    @app.before_request
    def _gate() -> Response | None:
        if not request.path.startswith("/v1/"):
            return None
        g.started = True
        token = _bearer()
        issued = state.key_for(token) if token else None
        if issued is None:
            return _logged(
                error_response(
                    ApiError(401, "Invalid API key.", code="invalid_api_key", param=None)
                )
            )
        g.key_id = issued.id
        limited = _rate_limited(issued.id)
        if limited is not None:
            return _logged(limited)
        fault = _take_fault()
        if fault is not None:
            return _logged(fault)
        if request.method == "POST":
            replay = _idempotent_replay(issued.id)
            if replay is not None:
                return _logged(replay, replayed=True)
        return None

    @app.after_request
    def _remember(response: Response) -> Response:
        if request.path.startswith("/v1/") and g.get("started") and not g.get("logged"):
            _logged(response)
            key = request.headers.get("Idempotency-Key")
            if request.method == "POST" and key and response.status_code < 500:
                with state.lock:
                    state.idempotent[(g.key_id, key)] = (
                        _fingerprint(),
                        response.status_code,
                        response.get_data(),
                    )
        return response

    def _bearer() -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _logged(response: Response, *, replayed: bool = False) -> Response:
        g.logged = True
        with state.lock:
            state.requests.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "idempotency_key": request.headers.get("Idempotency-Key"),
                    "status": response.status_code,
                    "replayed": replayed,
                }
            )
        return response

    def _rate_limited(key_id: str) -> Response | None:
        if not config.rate_limit:
            return None
        now = time.monotonic()
        with state.lock:
            started, count = state.windows.get(key_id, (now, 0))
            if now - started >= config.rate_window_seconds:
                started, count = now, 0
            count += 1
            state.windows[key_id] = (started, count)
        if count <= config.rate_limit:
            return None
        wait = max(1, math.ceil(config.rate_window_seconds - (now - started)))
        return error_response(
            ApiError(
                429,
                "Rate limit exceeded.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            )
        )

    def _take_fault() -> Response | None:
        with state.lock:
            if not state.faults:
                return None
            fault = state.faults[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                state.faults.pop(0)
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        message = {429: "Rate limit exceeded.", 500: "Model inference failed."}.get(
            fault.status, "Injected failure."
        )
        return error_response(
            ApiError(fault.status, message, code="injected_fault", headers=headers)
        )

    def _fingerprint() -> str:
        return hashlib.sha256(
            request.method.encode() + request.path.encode() + request.get_data()
        ).hexdigest()

    def _idempotent_replay(key_id: str) -> Response | None:
        key = request.headers.get("Idempotency-Key")
        if not key:
            return None
        with state.lock:
            stored = state.idempotent.get((key_id, key))
        if stored is None:
            return None
        fingerprint, status, body = stored
        if fingerprint != _fingerprint():
            return error_response(
                ApiError(
                    400,
                    "This Idempotency-Key was used with a different request.",
                    code="idempotency_key_reused",
                    param="Idempotency-Key",
                )
            )
        response = Response(body, status=status, mimetype="application/json")
        response.headers["Idempotent-Replayed"] = "true"
        return response

    def _json_body() -> dict[str, Any]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ApiError(400, "The body must be a JSON object.", code="invalid_json")
        return body

    @app.get("/v1/models")
    def list_models() -> Response:
        return jsonify({"models": MODELS})

    @app.post("/v1/webhooks")
    def create_webhook() -> tuple[Response, int]:
        body = _json_body()
        url = body.get("url")
        events = body.get("events")
        if not isinstance(url, str) or urlsplit(url).scheme not in {"http", "https"}:
            raise ApiError(400, "url must be an http(s) URL.", code="invalid_url", param="url")
        if (
            not isinstance(events, list)
            or not events
            or not all(isinstance(e, str) and e in EVENT_TYPES for e in events)
        ):
            raise ApiError(
                400,
                f"events must be a non-empty list of: {', '.join(EVENT_TYPES)}.",
                code="invalid_events",
                param="events",
            )
        _verify_subscriber(url)
        subscription = Subscription(
            id=f"wh_{uuid.uuid4().hex[:20]}",
            url=url,
            events=list(dict.fromkeys(events)),
            secret=generate_hmac_secret(),
            created_at=_now(),
        )
        with state.lock:
            state.subscriptions[subscription.id] = subscription
        return jsonify({**subscription.public(), "secret": subscription.secret}), 201

    def _verify_subscriber(url: str) -> None:
        # The seed: the provider calls GET /webhooks/verify with a challenge token first.
        verify_url = urljoin(url, "verify")
        challenge = secrets.token_urlsafe(24)
        reason = None
        try:
            answer = httpx.get(
                verify_url,
                params={"challenge": challenge},
                timeout=config.verify_timeout_seconds,
            )
        except httpx.HTTPError as exc:
            reason = f"{verify_url} could not be reached ({type(exc).__name__})"
        else:
            echoed = answer.text.strip()
            if answer.headers.get("content-type", "").startswith("application/json"):
                try:
                    echoed = str(answer.json().get("challenge"))
                except (ValueError, AttributeError):
                    echoed = ""
            if answer.status_code != 200:
                reason = f"{verify_url} answered {answer.status_code}"
            elif echoed != challenge:
                reason = f"{verify_url} did not echo the challenge"
        if reason:
            raise ApiError(
                400,
                f"The URL failed the verification challenge: {reason}.",
                code="url_verification_failed",
                param="url",
            )

    @app.get("/v1/webhooks")
    def list_webhooks() -> Response:
        with state.lock:
            items = [s.public() for s in state.subscriptions.values()]
        return jsonify({"webhooks": items})

    @app.delete("/v1/webhooks/<subscription_id>")
    def delete_webhook(subscription_id: str) -> Response:
        with state.lock:
            removed = state.subscriptions.pop(subscription_id, None)
        if removed is None:
            raise ApiError(404, "Webhook not found.", code="webhook_not_found", param="id")
        return jsonify({"id": subscription_id, "deleted": True})

    @app.post("/v1/keys")
    def create_key() -> tuple[Response, int]:
        name = _json_body().get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ApiError(
                400, "name must be 1 to 200 characters.", code="invalid_name", param="name"
            )
        issued = IssuedKey(
            id=f"key_{uuid.uuid4().hex[:20]}",
            name=name,
            key="ask_" + secrets.token_urlsafe(32),
            created_at=_now(),
        )
        with state.lock:
            state.keys[issued.id] = issued
        body = {"id": issued.id, "name": issued.name, "key": issued.key}
        return jsonify({**body, "created_at": issued.created_at}), 201

    @app.get("/v1/keys")
    def list_keys() -> Response:
        with state.lock:
            items = [
                {"id": k.id, "name": k.name, "created_at": k.created_at}
                for k in state.keys.values()
            ]
        return jsonify({"keys": items})

    @app.delete("/v1/keys/<key_id>")
    def delete_key(key_id: str) -> Response:
        with state.lock:
            removed = state.keys.pop(key_id, None)
        if removed is None:
            raise ApiError(404, "API key not found.", code="key_not_found", param="key_id")
        return jsonify({"id": key_id, "deleted": True})

    # --- private endpoints: local development and tests --------------------------------------

    @app.post("/_emulator/trigger")
    def trigger() -> Response:
        body = _json_body()
        event_type = body.get("event")
        data = body.get("data")
        if event_type not in EVENT_TYPES:
            raise ApiError(
                400,
                f"event must be one of: {', '.join(EVENT_TYPES)}.",
                code="invalid_event",
                param="event",
            )
        if data is not None and not isinstance(data, dict):
            raise ApiError(400, "data must be an object.", code="invalid_data", param="data")
        return jsonify(state.trigger(event_type, data))

    @app.post("/_emulator/faults")
    def add_fault() -> Response:
        body = _json_body()
        status, count = body.get("status"), body.get("count", 1)
        retry_after = body.get("retry_after")
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ApiError(400, "status must be 400-599.", code="invalid_status", param="status")
        if not isinstance(count, int) or count < 1:
            raise ApiError(400, "count must be at least 1.", code="invalid_count", param="count")
        if retry_after is not None and not isinstance(retry_after, int):
            raise ApiError(
                400, "retry_after must be seconds.", code="invalid_retry", param="retry_after"
            )
        with state.lock:
            state.faults.append(Fault(status, count, retry_after))
        return jsonify({"status": status, "count": count, "retry_after": retry_after})

    @app.get("/_emulator/requests")
    def requests_seen() -> Response:
        with state.lock:
            return jsonify({"requests": list(state.requests)})

    @app.get("/_emulator/deliveries")
    def deliveries() -> Response:
        attempts = [a.as_dict() for a in list(state.deliverer.attempts)]
        return jsonify({"attempts": attempts, "idle": state.deliverer.idle()})

    @app.get("/_emulator/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    return app
