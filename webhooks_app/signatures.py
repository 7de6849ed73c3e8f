"""Standard Webhooks signatures: parse secrets, sign, and verify deliveries.

Pure functions over bytes and strings, with no web framework in sight, so the receiver, the
provider emulator, the benchmark's load generator and the tests all share one implementation.

Signed content is ``{webhook-id}.{webhook-timestamp}.{raw body}``. ``v1`` entries carry a base64
HMAC-SHA256 keyed by the decoded ``whsec_`` secret; ``v1a`` entries carry a base64 Ed25519
signature checked against a ``whpk_`` public key. Entries of other versions are skipped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HMAC_SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
ED25519_PUBLIC_PREFIX = "whpk_"
ED25519_PRIVATE_PREFIX = "whsk_"

DEFAULT_TOLERANCE_SECONDS = 300
# Bounds that keep a hostile header from costing more than a handful of HMACs.
MAX_SIGNATURE_ENTRIES = 16
MAX_HEADER_LENGTH = 4096


class Reason(StrEnum):
    """Why a delivery failed verification; safe to show (it names no secret)."""

    MISSING_HEADERS = "missing_headers"
    INVALID_ID = "invalid_id"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_TOO_OLD = "timestamp_too_old"
    TIMESTAMP_TOO_NEW = "timestamp_too_new"
    MALFORMED_SIGNATURE = "malformed_signature"
    NO_MATCHING_SIGNATURE = "no_matching_signature"
    NO_SECRETS = "no_secrets"


_MESSAGES = {
    Reason.MISSING_HEADERS: (
        "The webhook-id, webhook-timestamp and webhook-signature headers are required."
    ),
    Reason.INVALID_ID: "The webhook-id header is empty, too long or contains a '.'.",
    Reason.INVALID_TIMESTAMP: "The webhook-timestamp header must be integer Unix seconds.",
    Reason.TIMESTAMP_TOO_OLD: "The webhook-timestamp is too far in the past.",
    Reason.TIMESTAMP_TOO_NEW: "The webhook-timestamp is too far in the future.",
    Reason.MALFORMED_SIGNATURE: "The webhook-signature header is malformed.",
    Reason.NO_MATCHING_SIGNATURE: "No signature in the webhook-signature header matches.",
    Reason.NO_SECRETS: "The receiver has no signing secret configured.",
}


class HeaderLookup(Protocol):
    """Request headers, looked up case-insensitively (Werkzeug's ``Headers``, or a plain dict
    with lower-case names)."""

    def get(self, key: str) -> str | None: ...

    def __getitem__(self, key: str) -> str: ...

    def __contains__(self, key: str, /) -> bool: ...


class VerificationError(Exception):
    """A delivery did not verify. ``reason`` is machine-readable, ``str(err)`` human-readable."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(_MESSAGES[reason])
        self.reason = reason


class SecretFormatError(ValueError):
    """A configured secret is not ``whsec_<base64>`` or ``whpk_<base64>``."""


@dataclass(frozen=True, repr=False)
class HmacSecret:
    key: bytes

    def __repr__(self) -> str:
        return "HmacSecret(<redacted>)"


@dataclass(frozen=True, repr=False)
class Ed25519Key:
    public_key: Ed25519PublicKey

    def __repr__(self) -> str:
        return "Ed25519Key(<public>)"


Secret = HmacSecret | Ed25519Key


def _b64decode(value: str) -> bytes:
    # Unpadded base64 is accepted, as the spec's reference library does.
    value = value.strip()
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecretFormatError("the part after the prefix is not valid base64") from exc


def parse_secret(text: str) -> Secret:
    """Parse one configured secret; raises :class:`SecretFormatError` without echoing it."""
    text = text.strip()
    if text.startswith(HMAC_SECRET_PREFIX):
        key = _b64decode(text[len(HMAC_SECRET_PREFIX) :])
        if not key:
            raise SecretFormatError("an HMAC secret must not be empty")
        return HmacSecret(key)
    if text.startswith(ED25519_PUBLIC_PREFIX):
        raw = _b64decode(text[len(ED25519_PUBLIC_PREFIX) :])
        if len(raw) != 32:
            raise SecretFormatError("an Ed25519 public key is 32 bytes")
        return Ed25519Key(Ed25519PublicKey.from_public_bytes(raw))
    raise SecretFormatError("a secret must start with 'whsec_' (HMAC) or 'whpk_' (Ed25519)")


def parse_secrets(texts: Iterable[str]) -> tuple[Secret, ...]:
    return tuple(parse_secret(t) for t in texts if t.strip())


def signed_content(msg_id: str, timestamp: int | str, body: bytes) -> bytes:
    return f"{msg_id}.{timestamp}.".encode() + body


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return one ``webhook-signature`` entry for ``whsec_`` (v1) or ``whsk_`` (v1a) secrets."""
    content = signed_content(msg_id, timestamp, body)
    if secret.startswith(HMAC_SECRET_PREFIX):
        key = _b64decode(secret[len(HMAC_SECRET_PREFIX) :])
        digest = hmac.new(key, content, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode()
    if secret.startswith(ED25519_PRIVATE_PREFIX):
        private = Ed25519PrivateKey.from_private_bytes(
            _b64decode(secret[len(ED25519_PRIVATE_PREFIX) :])[:32]
        )
        return "v1a," + base64.b64encode(private.sign(content)).decode()
    raise SecretFormatError("signing needs a 'whsec_' or 'whsk_' secret")


def generate_hmac_secret() -> str:
    import secrets

    return HMAC_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def generate_ed25519_keypair() -> tuple[str, str]:
    """Return ``(whsk_..., whpk_...)``: the signing key and the key a receiver configures."""
    from cryptography.hazmat.primitives import serialization

    private = Ed25519PrivateKey.generate()
    raw_private = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return (
        ED25519_PRIVATE_PREFIX + base64.b64encode(raw_private).decode(),
        ED25519_PUBLIC_PREFIX + base64.b64encode(raw_public).decode(),
    )


def sign_headers(
    secret: str, msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for a delivery of ``body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
    }


@dataclass(frozen=True)
class VerifiedDelivery:
    msg_id: str
    timestamp: int


def verify(
    secrets: Iterable[Secret],
    headers: HeaderLookup,
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> VerifiedDelivery:
    """Verify a delivery on its raw bytes before anything parses them.

    ``headers`` must look names up case-insensitively (Werkzeug's ``Headers`` does) or use the
    lower-case names. Passes when any signature entry matches any secret; raises
    :class:`VerificationError` otherwise.
    """
    msg_id = headers.get("webhook-id")
    raw_timestamp = headers.get("webhook-timestamp")
    raw_signatures = headers.get("webhook-signature")
    if not msg_id or not raw_timestamp or not raw_signatures:
        raise VerificationError(Reason.MISSING_HEADERS)
    if "." in msg_id or len(msg_id) > 255 or not msg_id.isprintable():
        raise VerificationError(Reason.INVALID_ID)
    timestamp = _parse_timestamp(raw_timestamp)
    current = time.time() if now is None else now
    if timestamp < current - tolerance_seconds:
        raise VerificationError(Reason.TIMESTAMP_TOO_OLD)
    if timestamp > current + tolerance_seconds:
        raise VerificationError(Reason.TIMESTAMP_TOO_NEW)

    keys = tuple(secrets)
    if not keys:
        raise VerificationError(Reason.NO_SECRETS)
    entries = _parse_signature_header(raw_signatures)
    content = signed_content(msg_id, timestamp, body)
    if _any_matches(keys, entries, content):
        return VerifiedDelivery(msg_id=msg_id, timestamp=timestamp)
    raise VerificationError(Reason.NO_MATCHING_SIGNATURE)


def _parse_timestamp(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise VerificationError(Reason.INVALID_TIMESTAMP)
    return int(raw)


def _parse_signature_header(raw: str) -> list[tuple[str, bytes]]:
    if len(raw) > MAX_HEADER_LENGTH:
        raise VerificationError(Reason.MALFORMED_SIGNATURE)
    entries: list[tuple[str, bytes]] = []
    for token in raw.split()[:MAX_SIGNATURE_ENTRIES]:
        version, sep, value = token.partition(",")
        if not sep or not value:
            continue
        try:
            entries.append((version, base64.b64decode(value, validate=True)))
        except (binascii.Error, ValueError):
            continue
    return entries


def _any_matches(
    keys: tuple[Secret, ...], entries: list[tuple[str, bytes]], content: bytes
) -> bool:
    hmac_digests: list[bytes] | None = None
    for version, signature in entries:
        if version == "v1":
            if hmac_digests is None:
                hmac_digests = [
                    hmac.new(k.key, content, hashlib.sha256).digest()
                    for k in keys
                    if isinstance(k, HmacSecret)
                ]
            # Compare against every key so timing does not reveal which one matched.
            if sum(hmac.compare_digest(signature, d) for d in hmac_digests):
                return True
        elif version == "v1a":
            for key in keys:
                if isinstance(key, Ed25519Key):
                    try:
                        key.public_key.verify(signature, content)
                    except InvalidSignature:
                        continue
                    return True
    return False
