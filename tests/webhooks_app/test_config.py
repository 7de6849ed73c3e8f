"""Settings from the environment: PaaS conventions, defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhooks_app.config import ConfigError, Settings, normalize_database_url


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """from_env writes a generated SECRET_KEY under ./instance; keep it out of the checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INSTANCE_DIR", raising=False)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db:5432/app", "postgresql+psycopg://u:p@db:5432/app"),
        ("postgresql://u@db/app", "postgresql+psycopg://u@db/app"),
        ("postgresql+psycopg://u@db/app", "postgresql+psycopg://u@db/app"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_database_urls_are_normalized(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected
    assert Settings.from_env({"DATABASE_URL": given}).database_url == expected


def test_defaults_need_no_server(tmp_path: Path) -> None:
    settings = Settings.from_env({})
    assert settings.database_url == f"sqlite:///{tmp_path / 'instance' / 'webhooks.sqlite3'}"
    assert settings.instance_dir == tmp_path / "instance"
    assert settings.uses_embedded_broker
    assert settings.webhook_tolerance_seconds == 300
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.handlers_module == "handlers"
    assert settings.admin_api_token is None


def test_broker_url_prefers_celery_broker_url() -> None:
    assert Settings.from_env({"REDIS_URL": "redis://a/0"}).broker_url == "redis://a/0"
    both = {"REDIS_URL": "redis://a/0", "CELERY_BROKER_URL": "redis://b/1"}
    assert Settings.from_env(both).broker_url == "redis://b/1"


def test_values_are_read() -> None:
    settings = Settings.from_env(
        {
            "WEBHOOK_SECRETS": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, whsec_dGVzdA==",
            "WEBHOOK_TOLERANCE_SECONDS": "60",
            "MAX_BODY_BYTES": "2048",
            "HANDLERS_MODULE": "my.handlers",
            "ADMIN_API_TOKEN": "tok",
            "SECRET_KEY": "k",
            "WEB_THREADS": "8",
        }
    )
    assert len(settings.webhook_secrets) == 2
    assert settings.web_threads == 8
    assert settings.webhook_tolerance_seconds == 60
    assert settings.max_body_bytes == 2048
    assert settings.handlers_module == "my.handlers"
    assert settings.admin_api_token == "tok"
    assert settings.secret_key == "k"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBHOOK_TOLERANCE_SECONDS", "soon"),
        ("MAX_BODY_BYTES", "0"),
        ("HANDLER_MAX_ATTEMPTS", "-1"),
        ("WEB_THREADS", "0"),
    ],
)
def test_bad_numbers_stop_startup(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_a_bad_secret_stops_startup_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_SECRETS") as error:
        Settings.from_env({"WEBHOOK_SECRETS": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,hunter2"})
    assert "hunter2" not in str(error.value)
    assert "MfKQ" not in str(error.value)


def test_instance_dir_moves_local_state(tmp_path: Path) -> None:
    settings = Settings.from_env({"INSTANCE_DIR": str(tmp_path / "state")})
    assert settings.database_url == f"sqlite:///{tmp_path / 'state' / 'webhooks.sqlite3'}"


def test_unset_secret_key_is_generated_once_and_shared(tmp_path: Path) -> None:
    first = Settings.from_env({}).secret_key
    second = Settings.from_env({}).secret_key
    assert first == second
    assert len(first) == 64
    assert (tmp_path / "instance" / "secret_key").stat().st_mode & 0o777 == 0o600
    assert Settings.from_env({"SECRET_KEY": "set"}).secret_key == "set"


def test_trusted_hosts_are_read() -> None:
    assert Settings.from_env({}).trusted_hosts == ()
    settings = Settings.from_env({"TRUSTED_HOSTS": " Hooks.Example.com, .example.org ,127.0.0.1"})
    assert settings.trusted_hosts == ("hooks.example.com", ".example.org", "127.0.0.1")


@pytest.mark.parametrize(
    "value", ["https://hooks.example.com", "hooks.example.com:443", "a..b", "-a.com", "x/y"]
)
def test_bad_trusted_hosts_stop_startup(value: str) -> None:
    with pytest.raises(ConfigError, match="TRUSTED_HOSTS"):
        Settings.from_env({"TRUSTED_HOSTS": value})
