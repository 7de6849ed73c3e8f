"""Secrets at rest: MultiFernet over ``ENCRYPTION_KEYS`` (newest first), and masking for display.

Stored signing secrets and API keys are only ever written through :class:`SecretBox`. There is no
plaintext mode: without a key, storing or reading a secret raises :class:`SecretBoxError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from webhooks_app.config import Settings

log = logging.getLogger(__name__)

DEV_KEY_FILENAME = "encryption.key"


class SecretBoxError(RuntimeError):
    """A secret cannot be encrypted or decrypted; the message names the setting, never a value."""


class SecretBox:
    def __init__(self, keys: Sequence[str]) -> None:
        self._fernet = MultiFernet([Fernet(key) for key in keys]) if keys else None

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        if settings.encryption_keys:
            return cls(settings.encryption_keys)
        if settings.uses_local_dev_defaults:
            # `make run` on its embedded PostgreSQL: a key of its own under instance/, created
            # once, beside the data it protects. A real deployment sets ENCRYPTION_KEYS.
            return cls([load_or_create_dev_key(settings.instance_dir)])
        return cls([])

    @property
    def configured(self) -> bool:
        return self._fernet is not None

    def _require(self) -> MultiFernet:
        if self._fernet is None:
            raise SecretBoxError(
                "ENCRYPTION_KEYS is not set: secrets cannot be stored or read without it"
            )
        return self._fernet

    def encrypt(self, plaintext: str) -> str:
        return self._require().encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._require().decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise SecretBoxError(
                "a stored secret cannot be decrypted with ENCRYPTION_KEYS "
                "(a wrong key, or the key it was encrypted with was removed)"
            ) from None

    def rewrap(self, token: str) -> str:
        """The same secret encrypted under the newest key."""
        try:
            return self._require().rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise SecretBoxError(
                "a stored secret cannot be decrypted with ENCRYPTION_KEYS; "
                "keep its old key in the list until `flask secrets reencrypt` has run"
            ) from None


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


def load_or_create_dev_key(instance_dir: Path) -> str:
    """Read ``instance/encryption.key``, creating it atomically if no process has yet."""
    path = instance_dir / DEV_KEY_FILENAME
    if not path.exists():
        instance_dir.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{DEV_KEY_FILENAME}.{os.getpid()}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_key() + "\n")
        try:
            # link() fails if another process won the race; everyone then reads the winner's key.
            os.link(staging, path)
            log.info("created a development encryption key in %s", path)
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    return path.read_text().strip()


def mask(secret: str | None) -> str:
    """``whsec_…a1B2``: enough to tell secrets apart, never enough to use one."""
    if not secret:
        return ""
    prefix, sep, _ = secret.partition("_")
    shown_prefix = prefix + sep if sep and len(prefix) <= 8 else ""
    if len(secret) - len(shown_prefix) < 12:
        return shown_prefix + "…"
    return f"{shown_prefix}…{secret[-4:]}"
