"""Standard Webhooks verification: the spec's vector, the reference library, Ed25519, rotation,
and fuzzing where verification only ever passes or raises VerificationError."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from webhooks_app.signatures import (
    Reason,
    SecretFormatError,
    VerificationError,
    generate_ed25519_keypair,
    generate_hmac_secret,
    parse_secret,
    parse_secrets,
    sign,
    sign_headers,
    verify,
)

# The known-answer vector from the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(msg_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_spec_vector_signs_to_the_published_signature() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_spec_vector_verifies() -> None:
    result = verify(
        parse_secrets([SPEC_SECRET]),
        headers(SPEC_ID, SPEC_TIMESTAMP, SPEC_SIGNATURE),
        SPEC_BODY,
        now=SPEC_TIMESTAMP,
    )
    assert (result.msg_id, result.timestamp) == (SPEC_ID, SPEC_TIMESTAMP)


def test_a_changed_body_byte_fails() -> None:
    with pytest.raises(VerificationError) as error:
        verify(
            parse_secrets([SPEC_SECRET]),
            headers(SPEC_ID, SPEC_TIMESTAMP, SPEC_SIGNATURE),
            SPEC_BODY.replace(b"4", b"5"),
            now=SPEC_TIMESTAMP,
        )
    assert error.value.reason is Reason.NO_MATCHING_SIGNATURE


@given(msg_id=st.from_regex(r"[A-Za-z0-9_\-]{1,40}", fullmatch=True), body=st.binary(max_size=512))
@settings(max_examples=50)
def test_signatures_match_the_reference_library(msg_id: str, body: bytes) -> None:
    secret = generate_hmac_secret()
    timestamp = 1_700_000_000
    reference = Webhook(secret)
    text = body.decode("latin-1")
    # The reference library signs text; latin-1 maps each byte to one character and back.
    ours = sign(secret, msg_id, timestamp, text.encode("utf-8"))
    assert ours == reference.sign(msg_id, datetime.fromtimestamp(timestamp, UTC), text)
    verify(parse_secrets([secret]), headers(msg_id, timestamp, ours), text.encode(), now=timestamp)


def test_reference_library_accepts_what_we_sign() -> None:
    secret = generate_hmac_secret()
    body = b'{"event": "chat.completion", "data": {"id": "chat_1"}}'
    signed = sign_headers(secret, "msg_abc", body)
    assert Webhook(secret).verify(body, signed) == {
        "event": "chat.completion",
        "data": {"id": "chat_1"},
    }


def test_ed25519_signature_verifies_with_the_public_key() -> None:
    private, public = generate_ed25519_keypair()
    body = b'{"event": "model.failed", "data": {}}'
    signed = sign_headers(private, "msg_ed", body)
    assert signed["webhook-signature"].startswith("v1a,")
    assert verify(parse_secrets([public]), signed, body).msg_id == "msg_ed"


def test_ed25519_signature_from_another_key_fails() -> None:
    private, _ = generate_ed25519_keypair()
    _, other_public = generate_ed25519_keypair()
    body = b"{}"
    with pytest.raises(VerificationError):
        verify(parse_secrets([other_public]), sign_headers(private, "msg_ed", body), body)


def test_rotation_any_active_secret_passes() -> None:
    old, new = generate_hmac_secret(), generate_hmac_secret()
    active = parse_secrets([old, new])
    body = b"{}"
    assert verify(active, sign_headers(old, "msg_old", body), body).msg_id == "msg_old"
    assert verify(active, sign_headers(new, "msg_new", body), body).msg_id == "msg_new"
    with pytest.raises(VerificationError):
        verify(parse_secrets([new]), sign_headers(old, "msg_old", body), body)


def test_several_entries_pass_when_any_matches_and_unknown_versions_are_skipped() -> None:
    secret = generate_hmac_secret()
    body = b"{}"
    signed = sign_headers(secret, "msg_multi", body)
    junk = "v1," + base64.b64encode(b"x" * 32).decode()
    signed["webhook-signature"] = f"v9,whatever {junk} nonsense {signed['webhook-signature']}"
    assert verify(parse_secrets([secret]), signed, body).msg_id == "msg_multi"


def test_only_unknown_versions_fail() -> None:
    secret = generate_hmac_secret()
    body = b"{}"
    signed = sign_headers(secret, "msg_v2", body)
    signed["webhook-signature"] = signed["webhook-signature"].replace("v1,", "v2,")
    with pytest.raises(VerificationError) as error:
        verify(parse_secrets([secret]), signed, body)
    assert error.value.reason is Reason.NO_MATCHING_SIGNATURE


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(-301, Reason.TIMESTAMP_TOO_OLD), (301, Reason.TIMESTAMP_TOO_NEW)],
)
def test_timestamp_outside_tolerance_fails(offset: int, reason: Reason) -> None:
    now = 1_700_000_000
    secret = generate_hmac_secret()
    signed = sign_headers(secret, "msg_t", b"{}", timestamp=now + offset)
    with pytest.raises(VerificationError) as error:
        verify(parse_secrets([secret]), signed, b"{}", now=now)
    assert error.value.reason is reason


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamp_inside_tolerance_passes(offset: int) -> None:
    now = 1_700_000_000
    secret = generate_hmac_secret()
    signed = sign_headers(secret, "msg_t", b"{}", timestamp=now + offset)
    assert verify(parse_secrets([secret]), signed, b"{}", now=now).timestamp == now + offset


def test_tolerance_is_configurable() -> None:
    now = 1_700_000_000
    secret = generate_hmac_secret()
    signed = sign_headers(secret, "msg_t", b"{}", timestamp=now - 30)
    with pytest.raises(VerificationError):
        verify(parse_secrets([secret]), signed, b"{}", now=now, tolerance_seconds=10)


@pytest.mark.parametrize("timestamp", ["", "12.5", "-5", "abc", "1e9", "\uff11\uff12\uff13"])
def test_non_integer_timestamps_fail(timestamp: str) -> None:
    secret = generate_hmac_secret()
    signed = sign_headers(secret, "msg_t", b"{}")
    signed["webhook-timestamp"] = timestamp
    with pytest.raises(VerificationError) as error:
        verify(parse_secrets([secret]), signed, b"{}")
    assert error.value.reason in {Reason.INVALID_TIMESTAMP, Reason.MISSING_HEADERS}


def test_an_id_with_a_dot_fails_even_when_signed() -> None:
    secret = generate_hmac_secret()
    signed = sign_headers(secret, "msg.evil", b"{}")
    with pytest.raises(VerificationError) as error:
        verify(parse_secrets([secret]), signed, b"{}")
    assert error.value.reason is Reason.INVALID_ID


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_fail(missing: str) -> None:
    secret = generate_hmac_secret()
    signed = sign_headers(secret, "msg_m", b"{}")
    del signed[missing]
    with pytest.raises(VerificationError) as error:
        verify(parse_secrets([secret]), signed, b"{}")
    assert error.value.reason is Reason.MISSING_HEADERS


def test_no_configured_secret_fails_closed() -> None:
    signed = sign_headers(generate_hmac_secret(), "msg_n", b"{}")
    with pytest.raises(VerificationError) as error:
        verify((), signed, b"{}")
    assert error.value.reason is Reason.NO_SECRETS


@pytest.mark.parametrize(
    ("bad", "hidden"),
    [
        ("s3cr3t-value-xyz", "s3cr3t"),
        ("whsec_", "whsec_"),
        ("whsec_!!!notbase64", "notbase64"),
        ("whpk_QUJD", "QUJD"),
        ("sk_live_123", "live_123"),
    ],
)
def test_malformed_secrets_are_refused_without_echoing_them(bad: str, hidden: str) -> None:
    with pytest.raises(SecretFormatError) as error:
        parse_secret(bad)
    assert hidden not in str(error.value).replace("'whsec_'", "")


def test_secrets_do_not_show_in_repr() -> None:
    secret = parse_secret(SPEC_SECRET)
    assert "MfKQ" not in repr(secret)


header_text = st.text(max_size=200)


@given(
    msg_id=header_text,
    timestamp=header_text,
    signature=st.one_of(
        header_text,
        st.lists(st.tuples(header_text, st.binary(max_size=80))).map(
            lambda entries: " ".join(f"{v},{base64.b64encode(s).decode()}" for v, s in entries)
        ),
    ),
    body=st.binary(max_size=300),
)
@settings(max_examples=300)
def test_fuzzed_deliveries_pass_or_fail_cleanly(
    msg_id: str, timestamp: str, signature: str, body: bytes
) -> None:
    secrets = parse_secrets([SPEC_SECRET])
    try:
        verify(
            secrets,
            {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature},
            body,
        )
    except VerificationError:
        return
    pytest.fail("a random delivery verified")  # pragma: no cover


@given(body=st.binary(max_size=300), flip=st.integers(min_value=0, max_value=299))
@settings(max_examples=100)
def test_any_single_byte_change_fails(body: bytes, flip: int) -> None:
    if not body:
        return
    signed = sign_headers(SPEC_SECRET, "msg_f", body)
    index = flip % len(body)
    tampered = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
    with pytest.raises(VerificationError):
        verify(parse_secrets([SPEC_SECRET]), signed, tampered)
