"""Secrets at rest: MultiFernet newest first, no plaintext mode, masking, configuration."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from webhooks_app.config import ConfigError, Settings
from webhooks_app.secretbox import SecretBox, SecretBoxError, mask

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# Any server: these tests read settings, they never connect.
PG = {"DATABASE_URL": "postgresql://db/app"}


def key() -> str:
    return Fernet.generate_key().decode()


def test_round_trip_without_plaintext_in_the_token() -> None:
    box = SecretBox([key()])
    token = box.encrypt(SECRET)
    assert SECRET not in token
    assert SECRET[6:] not in token
    assert box.decrypt(token) == SECRET


def test_newest_key_encrypts_and_older_keys_still_decrypt() -> None:
    old, new = key(), key()
    old_token = SecretBox([old]).encrypt(SECRET)
    both = SecretBox([new, old])
    assert both.decrypt(old_token) == SECRET
    assert SecretBox([new]).decrypt(both.encrypt(SECRET)) == SECRET
    rewrapped = both.rewrap(old_token)
    assert SecretBox([new]).decrypt(rewrapped) == SECRET
    with pytest.raises(SecretBoxError):
        SecretBox([old]).decrypt(rewrapped)


def test_a_wrong_or_missing_key_is_an_error_never_plaintext() -> None:
    token = SecretBox([key()]).encrypt(SECRET)
    with pytest.raises(SecretBoxError, match="cannot be decrypted") as wrong:
        SecretBox([key()]).decrypt(token)
    assert SECRET not in str(wrong.value)
    with pytest.raises(SecretBoxError, match="ENCRYPTION_KEYS is not set"):
        SecretBox([]).encrypt(SECRET)
    with pytest.raises(SecretBoxError, match="ENCRYPTION_KEYS is not set"):
        SecretBox([]).decrypt(token)


def test_mask_shows_the_prefix_and_four_last_characters() -> None:
    assert mask(SECRET) == "whsec_…LaSw"
    assert mask("ask_abcdefghijklmnopqrstuvwxyz") == "ask_…wxyz"
    assert mask("whsec_short") == "whsec_…"
    assert mask("") == ""


def test_encryption_keys_are_validated_without_echoing_them() -> None:
    first = key()
    settings = Settings.from_env({**PG, "ENCRYPTION_KEYS": f" {first} , {key()} "})
    assert settings.encryption_keys[0] == first
    assert len(settings.encryption_keys) == 2
    with pytest.raises(ConfigError, match="ENCRYPTION_KEYS: key 2 is not a Fernet key") as bad:
        Settings.from_env({**PG, "ENCRYPTION_KEYS": f"{first},not-a-key-at-all"})
    assert "not-a-key-at-all" not in str(bad.value)


def test_subscription_settings_from_the_environment() -> None:
    defaults = Settings.from_env(PG)
    assert defaults.assisters_api_base == "https://api.assisters.com/v1"
    assert (defaults.rotation_days, defaults.rotation_grace_hours) == (30, 24.0)
    custom = Settings.from_env(
        {
            **PG,
            "ASSISTERS_API_BASE": "http://127.0.0.1:8090/v1/",
            "ASSISTERS_API_KEY": "ask_x",
            "ASSISTERS_API_KEY_ID": "key_1",
            "PUBLIC_BASE_URL": "https://hooks.example.com/",
            "ROTATION_GRACE_HOURS": "0.5",
            "ROTATION_DAYS": "0",
        }
    )
    assert custom.assisters_api_base == "http://127.0.0.1:8090/v1"
    assert custom.public_base_url == "https://hooks.example.com"
    assert (custom.rotation_days, custom.rotation_grace_hours) == (0, 0.5)
    with pytest.raises(ConfigError, match="ROTATION_GRACE_HOURS"):
        Settings.from_env({**PG, "ROTATION_GRACE_HOURS": "soon"})
    with pytest.raises(ConfigError, match="ASSISTERS_TIMEOUT_SECONDS"):
        Settings.from_env({**PG, "ASSISTERS_TIMEOUT_SECONDS": "0"})


def test_make_runs_embedded_postgres_gets_a_private_persistent_key(tmp_path: Path) -> None:
    # What webhooks_app.embedded leaves while `make run`'s server runs: its URL and its pid file.
    url = "postgresql+psycopg://postgres@/postgres?host=/tmp/socket"
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "postmaster.pid").write_text(f"{os.getpid()}\n{tmp_path}\n")
    (tmp_path / "postgres.url").write_text(url + "\n")
    settings = Settings.from_env({"INSTANCE_DIR": str(tmp_path)})
    assert settings.database_url == url
    box = SecretBox.from_settings(settings)
    token = box.encrypt(SECRET)
    key_file = tmp_path / "encryption.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SecretBox.from_settings(settings).decrypt(token) == SECRET
    # Any other server is a deployment: it sets ENCRYPTION_KEYS, nothing is generated.
    postgres = Settings(database_url="postgresql+psycopg://db/x", instance_dir=tmp_path)
    assert not SecretBox.from_settings(postgres).configured
