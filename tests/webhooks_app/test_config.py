"""Settings from the environment: PaaS conventions, defaults, and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from webhooks_app.config import ConfigError, Settings, normalize_database_url

# Any server: these tests read settings, they never connect.
PG = {"DATABASE_URL": "postgresql://db/app"}


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
    ],
)
def test_database_urls_are_normalized(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected
    assert Settings.from_env({**PG, "DATABASE_URL": given}).database_url == expected


def test_defaults_need_no_server_but_the_database(tmp_path: Path) -> None:
    settings = Settings.from_env(PG)
    assert settings.instance_dir == tmp_path / "instance"
    assert settings.uses_embedded_broker
    assert settings.webhook_tolerance_seconds == 300
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.handlers_module == "handlers"
    assert settings.admin_api_token is None
    assert not settings.admin_login_enabled


def test_no_database_url_and_no_embedded_server_stops_startup_naming_both() -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env({})
    assert "DATABASE_URL" in str(error.value)
    assert "make run" in str(error.value)


def test_the_embedded_server_of_make_run_is_found_while_it_runs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "postgres").mkdir(parents=True)
    url = "postgresql+psycopg://postgres@/postgres?host=/tmp/s"
    (state / "postgres.url").write_text(url + "\n")
    env = {"INSTANCE_DIR": str(state)}
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        Settings.from_env(env)  # a URL file, but no server behind it
    (state / "postgres" / "postmaster.pid").write_text(f"{os.getpid()}\n")
    assert Settings.from_env(env).database_url == url
    assert Settings.from_env({**env, **PG}).database_url == "postgresql+psycopg://db/app"


def test_the_login_link_token_is_ignored_once_an_admin_is_configured() -> None:
    token = {"WEBHOOKS_ADMIN_LOGIN_TOKEN": "t0ken"}
    local = Settings.from_env({**PG, **token})
    assert local.admin_login_enabled
    assert local.admin_name == "local"
    configured = Settings.from_env(
        {**PG, **token, "ADMIN_USERNAME": "ops", "ADMIN_PASSWORD_HASH": "$argon2id$v=19$x"}
    )
    assert configured.admin_login_token is None
    assert configured.admin_name == "ops"


def test_broker_url_prefers_celery_broker_url() -> None:
    assert Settings.from_env({**PG, "REDIS_URL": "redis://a/0"}).broker_url == "redis://a/0"
    both = {**PG, "REDIS_URL": "redis://a/0", "CELERY_BROKER_URL": "redis://b/1"}
    assert Settings.from_env(both).broker_url == "redis://b/1"


def test_values_are_read() -> None:
    settings = Settings.from_env(
        {
            **PG,
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
        Settings.from_env({**PG, name: value})


def test_a_bad_secret_stops_startup_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_SECRETS") as error:
        Settings.from_env(
            {**PG, "WEBHOOK_SECRETS": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,hunter2"}
        )
    assert "hunter2" not in str(error.value)
    assert "MfKQ" not in str(error.value)


def test_unset_secret_key_is_generated_once_and_shared(tmp_path: Path) -> None:
    first = Settings.from_env(PG).secret_key
    second = Settings.from_env(PG).secret_key
    assert first == second
    assert len(first) == 64
    assert (tmp_path / "instance" / "secret_key").stat().st_mode & 0o777 == 0o600
    assert Settings.from_env({**PG, "SECRET_KEY": "set"}).secret_key == "set"


def test_trusted_hosts_are_read() -> None:
    assert Settings.from_env(PG).trusted_hosts == ()
    settings = Settings.from_env(
        {**PG, "TRUSTED_HOSTS": " Hooks.Example.com, .example.org ,127.0.0.1"}
    )
    assert settings.trusted_hosts == ("hooks.example.com", ".example.org", "127.0.0.1")


@pytest.mark.parametrize(
    "value", ["https://hooks.example.com", "hooks.example.com:443", "a..b", "-a.com", "x/y"]
)
def test_bad_trusted_hosts_stop_startup(value: str) -> None:
    with pytest.raises(ConfigError, match="TRUSTED_HOSTS"):
        Settings.from_env({**PG, "TRUSTED_HOSTS": value})
