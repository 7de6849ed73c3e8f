"""Settings read once from the environment and validated, so a bad value stops startup."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from limits import parse as parse_limit

from webhooks_app.signatures import Secret, SecretFormatError, parse_secrets


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable, never its value."""


def normalize_database_url(url: str) -> str:
    """Accept PaaS-style ``postgres://`` URLs and pick the psycopg 3 driver for PostgreSQL."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def default_instance_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where local state lives: the embedded PostgreSQL, the filesystem broker, dev keys."""
    env = os.environ if environ is None else environ
    return Path(env.get("INSTANCE_DIR") or Path.cwd() / "instance").resolve()


NO_DATABASE_MESSAGE = (
    "DATABASE_URL is not set and no embedded PostgreSQL is running: start the service with "
    "`make run` (it starts one under INSTANCE_DIR), or set DATABASE_URL to a PostgreSQL server"
)


def database_url_from_env(env: Mapping[str, str], instance_dir: Path) -> str:
    """DATABASE_URL, else the embedded server `make run` started on INSTANCE_DIR."""
    url = env.get("DATABASE_URL", "").strip()
    if url:
        return normalize_database_url(url)
    from webhooks_app import embedded

    running = embedded.running_url(instance_dir)
    if running is None:
        raise ConfigError(NO_DATABASE_MESSAGE)
    return running


def instance_secret_key(instance_dir: Path) -> str:
    """A key generated once and kept in the instance folder, so that every process of a local
    run (and every gunicorn worker) signs sessions alike without SECRET_KEY being set."""
    instance_dir.mkdir(parents=True, exist_ok=True)
    path = instance_dir / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(32))
    return path.read_text().strip()


_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"\.?({_LABEL}\.)*{_LABEL}")


def trusted_hosts(value: str) -> tuple[str, ...]:
    """TRUSTED_HOSTS: comma-separated host names (or IPv4 addresses), without scheme or port; a
    leading dot admits every subdomain too (".example.com")."""
    names = tuple(name.strip().lower() for name in value.split(",") if name.strip())
    if not all(_HOST_NAME.fullmatch(name) for name in names):
        raise ConfigError(
            "TRUSTED_HOSTS must be host names separated by commas, without scheme or port"
            " (for example: webhooks.example.com,.example.org)"
        )
    return names


# The operator's name in a session opened by `make run`'s one-time login link.
LOCAL_ADMIN = "local"
ADMIN_LOGIN_TOKEN_ENV = "WEBHOOKS_ADMIN_LOGIN_TOKEN"  # noqa: S105 - a variable name

DEFAULT_PII_MASK_FIELDS = ("email", "phone", "content", "input", "arguments")


@dataclass(frozen=True)
class Settings:
    # No default server: Settings.from_env finds DATABASE_URL or `make run`'s embedded one.
    database_url: str = ""
    # Empty means the embedded broker: Kombu's filesystem transport under INSTANCE_DIR.
    broker_url: str = ""
    webhook_secrets: tuple[Secret, ...] = ()
    webhook_tolerance_seconds: int = 300
    max_body_bytes: int = 1024 * 1024
    handlers_module: str = "handlers"
    admin_api_token: str | None = None
    secret_key: str = field(default_factory=lambda: secrets.token_hex(32))
    # Delivery guarantees (see README, "How delivery is guaranteed").
    default_max_attempts: int = 5
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    handler_lease_seconds: int = 30
    broker_visibility_timeout: int = 60
    sweep_interval_seconds: float = 10.0
    handoff_grace_seconds: int = 10
    requeue_after_seconds: int = 600
    instance_dir: Path = field(default_factory=default_instance_dir)
    testing: bool = False
    # Subscriptions and API keys (see README, "Subscriptions and API keys").
    assisters_api_base: str = "https://api.assisters.com/v1"
    assisters_api_key: str | None = None
    assisters_api_key_id: str | None = None
    assisters_timeout_seconds: float = 10.0
    public_base_url: str | None = None
    # Host names the web answers to ("example.com", ".example.com" with subdomains); empty: any.
    trusted_hosts: tuple[str, ...] = ()
    # Fernet keys, newest first; empty means secrets cannot be stored (see secretbox.py).
    encryption_keys: tuple[str, ...] = ()
    rotation_grace_hours: float = 24.0
    rotation_days: int = 30
    rotation_check_seconds: float = 900.0
    stored_secrets_cache_seconds: float = 5.0
    # Admin page (see README, "Admin page").
    admin_username: str | None = None
    admin_password_hash: str | None = None  # Argon2id, PHC string format
    admin_login_limit: str = "5 per minute"
    # Set by `make run` (webhooks_app.devserver) on a loopback bind with no admin configured:
    # the token of the one-time login link it prints (see webhooks_app/admin/login_link.py).
    admin_login_token: str | None = None
    # Proxies in front that append to X-Forwarded-For; none: the headers are not believed.
    trusted_proxies: int = 0
    # Dotted payload paths masked in the page and the API; a bare name matches at any depth.
    pii_mask_fields: tuple[str, ...] = DEFAULT_PII_MASK_FIELDS
    event_retention_days: int | None = None  # None: keep events forever
    # Hand-off and observability (see README, "Observability"; bench/HISTORY.md).
    handoff_batch_size: int = 50  # event ids per Celery message, at most
    web_threads: int = 4  # gunicorn threads per web process (gunicorn.conf.py reads it too)
    relay_poll_seconds: float = 1.0  # the outbox relay looks even without a wake-up
    relay_linger_seconds: float = 0.007  # after a hand-off, gather events this long
    log_level: str = "INFO"
    log_format: str = "json"
    metrics_token: str | None = None

    @property
    def uses_embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def admin_password_enabled(self) -> bool:
        return bool(self.admin_username and self.admin_password_hash)

    @property
    def admin_login_enabled(self) -> bool:
        """The admin page is on: a configured operator, or `make run`'s one-time login link."""
        return self.admin_password_enabled or self.admin_login_token is not None

    @property
    def admin_name(self) -> str | None:
        """Who a session belongs to: ADMIN_USERNAME, or ``local`` for the login link."""
        if self.admin_password_enabled:
            return self.admin_username
        return LOCAL_ADMIN if self.admin_login_token is not None else None

    @property
    def uses_local_dev_defaults(self) -> bool:
        """`make run`'s embedded PostgreSQL: local state (keys) may live under INSTANCE_DIR."""
        from webhooks_app import embedded

        return self.database_url == embedded.running_url(self.instance_dir)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()
        instance_dir = default_instance_dir(env)

        def number(
            name: str, default: float, minimum: float, kind: type[float] | type[int]
        ) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(
                    f"{name} must be {'an integer' if kind is int else 'a number'}"
                ) from None
            if not math.isfinite(value) or value < minimum:
                raise ConfigError(f"{name} must be a finite number, at least {minimum}")
            return value

        def integer(name: str, default: int, minimum: int = 0) -> int:
            return int(number(name, default, minimum, int))

        encryption_keys = tuple(
            k.strip() for k in env.get("ENCRYPTION_KEYS", "").split(",") if k.strip()
        )
        for position, key in enumerate(encryption_keys, start=1):
            try:
                Fernet(key)
            except ValueError:
                raise ConfigError(
                    f"ENCRYPTION_KEYS: key {position} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes)"
                ) from None

        timeout = number("ASSISTERS_TIMEOUT_SECONDS", 10.0, 0, float)
        if timeout == 0:
            raise ConfigError("ASSISTERS_TIMEOUT_SECONDS must be more than 0")

        raw_secrets = [s for s in env.get("WEBHOOK_SECRETS", "").split(",") if s.strip()]
        try:
            webhook_secrets = parse_secrets(raw_secrets)
        except SecretFormatError as exc:
            raise ConfigError(f"WEBHOOK_SECRETS: {exc}") from None

        username = env.get("ADMIN_USERNAME", "").strip() or None
        password_hash = env.get("ADMIN_PASSWORD_HASH", "").strip() or None
        if password_hash is not None and not password_hash.startswith("$argon2id$"):
            raise ConfigError(
                "ADMIN_PASSWORD_HASH must be an Argon2id hash (make one with: make hash-password)"
            )
        raw_mask = env.get("PII_MASK_FIELDS")
        mask_fields = (
            DEFAULT_PII_MASK_FIELDS
            if raw_mask is None
            else tuple(f.strip() for f in raw_mask.split(",") if f.strip())
        )
        login_limit = env.get("ADMIN_LOGIN_RATE_LIMIT", "").strip() or defaults.admin_login_limit
        try:
            parse_limit(login_limit)
        except ValueError:
            raise ConfigError(
                "ADMIN_LOGIN_RATE_LIMIT must read like '5 per minute' or '20/hour'"
            ) from None
        retention = (
            integer("EVENT_RETENTION_DAYS", 0, minimum=1)
            if env.get("EVENT_RETENTION_DAYS", "").strip()
            else None
        )
        level = (env.get("LOG_LEVEL", "").strip() or "INFO").upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError("LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        log_format = (env.get("LOG_FORMAT", "").strip() or "json").lower()
        if log_format not in {"json", "console"}:
            raise ConfigError("LOG_FORMAT must be json or console")

        broker_url = (env.get("CELERY_BROKER_URL") or env.get("REDIS_URL") or "").strip()
        return cls(
            broker_url=broker_url,
            webhook_secrets=webhook_secrets,
            webhook_tolerance_seconds=integer("WEBHOOK_TOLERANCE_SECONDS", 300),
            max_body_bytes=integer("MAX_BODY_BYTES", defaults.max_body_bytes, minimum=1),
            handlers_module=env.get("HANDLERS_MODULE", "").strip() or "handlers",
            admin_api_token=env.get("ADMIN_API_TOKEN", "").strip() or None,
            secret_key=env.get("SECRET_KEY", "").strip() or instance_secret_key(instance_dir),
            default_max_attempts=integer("HANDLER_MAX_ATTEMPTS", 5, minimum=1),
            handler_lease_seconds=integer("HANDLER_LEASE_SECONDS", 30, minimum=1),
            broker_visibility_timeout=integer("BROKER_VISIBILITY_TIMEOUT", 60, minimum=1),
            sweep_interval_seconds=number("SWEEP_INTERVAL_SECONDS", 10.0, 0.5, float),
            handoff_grace_seconds=integer("HANDOFF_GRACE_SECONDS", 10, minimum=1),
            instance_dir=instance_dir,
            assisters_api_base=(
                env.get("ASSISTERS_API_BASE", "").strip().rstrip("/") or defaults.assisters_api_base
            ),
            assisters_api_key=env.get("ASSISTERS_API_KEY", "").strip() or None,
            assisters_api_key_id=env.get("ASSISTERS_API_KEY_ID", "").strip() or None,
            assisters_timeout_seconds=timeout,
            public_base_url=env.get("PUBLIC_BASE_URL", "").strip().rstrip("/") or None,
            trusted_hosts=trusted_hosts(env.get("TRUSTED_HOSTS", "")),
            encryption_keys=encryption_keys,
            rotation_grace_hours=number("ROTATION_GRACE_HOURS", 24.0, 0, float),
            rotation_days=integer("ROTATION_DAYS", 30),
            admin_username=username,
            admin_password_hash=password_hash,
            admin_login_limit=login_limit,
            admin_login_token=(
                None
                if username and password_hash
                else env.get(ADMIN_LOGIN_TOKEN_ENV, "").strip() or None
            ),
            trusted_proxies=integer("TRUSTED_PROXIES", defaults.trusted_proxies),
            pii_mask_fields=mask_fields,
            event_retention_days=retention,
            handoff_batch_size=integer("HANDOFF_BATCH_SIZE", 50, minimum=1),
            web_threads=integer("WEB_THREADS", 4, minimum=1),
            relay_poll_seconds=number("RELAY_POLL_SECONDS", 1.0, 0.05, float),
            relay_linger_seconds=integer("RELAY_LINGER_MS", 7) / 1000,
            log_level=level,
            log_format=log_format,
            metrics_token=env.get("METRICS_TOKEN", "").strip() or None,
            # Last: a bad value of any other setting is reported first.
            database_url=database_url_from_env(env, instance_dir),
        )
