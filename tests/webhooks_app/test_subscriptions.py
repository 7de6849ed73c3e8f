"""Register, rotate and re-encrypt against the emulator as a real HTTP server, with the service
itself served over HTTP (the emulator calls its /webhooks/verify and delivers to it)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from tests.conftest import ENCRYPTION_KEY, LiveService
from tests.support.emulator import Crash, CrashingTransport, RunningEmulator
from tests.support.processes import free_port, wait_until
from webhooks_app import create_app
from webhooks_app.config import ConfigError
from webhooks_app.secretbox import SecretBox
from webhooks_app.service import Service
from webhooks_app.signatures import sign_headers
from webhooks_app.store import (
    ApiKeyRow,
    EventRow,
    RotationRow,
    SubscriptionRow,
    SubscriptionStatus,
    utcnow,
)
from webhooks_app.subscriptions import Subscriptions

GRACE = timedelta(hours=24)


def register(live: LiveService) -> str:
    result = live.app.test_cli_runner().invoke(args=["subscriptions", "register"])
    assert result.exit_code == 0, result.output
    return result.stdout.split()[1]


def deliver(live: LiveService, secret: str, msg_id: str) -> int:
    body = json.dumps({"event": "chat.completion", "data": {"id": msg_id}}).encode()
    headers = {**sign_headers(secret, msg_id, body), "Content-Type": "application/json"}
    return httpx.post(live.url + "/webhooks/events", content=body, headers=headers).status_code


def rows(service: Service) -> list[SubscriptionRow]:
    with service.db.transaction() as session:
        return list(session.scalars(select(SubscriptionRow).order_by(SubscriptionRow.created_at)))


def stored_event(service: Service, msg_id: str) -> EventRow | None:
    with service.db.transaction() as session:
        return session.get(EventRow, msg_id)


def test_register_then_a_signed_delivery_reaches_the_handler(
    live: LiveService,
    emulator: RunningEmulator,
    runs: Callable[[], list[dict[str, Any]]],
) -> None:
    result = live.app.test_cli_runner().invoke(args=["subscriptions", "register"])
    assert result.exit_code == 0, result.output
    [(subscription_id, secret)] = emulator.secrets().items()
    assert f"registered {subscription_id} for {live.url}/webhooks/events" in result.output
    assert f"whsec_…{secret[-4:]}" in result.output
    assert secret not in result.output
    # The provider checked our /webhooks/verify before it accepted.
    [row] = rows(live.service)
    assert row.secret_encrypted is not None
    assert secret not in row.secret_encrypted
    assert live.service.subscriptions.box.decrypt(row.secret_encrypted) == secret
    assert live.settings.webhook_secrets == ()  # stored secrets alone

    sent = emulator.state.trigger("chat.completion", {"id": "chat_registered"})
    wait_until(lambda: stored_event(live.service, sent["id"]), 15, what="the delivery")
    event = stored_event(live.service, sent["id"])
    assert event is not None
    assert event.data_id == "chat_registered"
    live.service.dispatcher.process_events([sent["id"]])
    assert [(r["event"], r["handler"]) for r in runs()] == [(sent["id"], "record")]


def test_a_provider_refusal_exits_non_zero_with_its_message(
    live: LiveService, emulator: RunningEmulator
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/webhooks/events"
    result = live.app.test_cli_runner().invoke(args=["subscriptions", "register", "--url", nobody])
    assert result.exit_code == 1
    assert "The URL failed the verification challenge" in result.output
    assert rows(live.service) == []
    assert emulator.secrets() == {}


def test_registering_without_encryption_keys_is_refused_before_the_provider_is_asked(
    live: LiveService, emulator: RunningEmulator
) -> None:
    keyless = Subscriptions(
        live.service.db, SecretBox([]), live.settings.replace(encryption_keys=())
    )
    with pytest.raises(RuntimeError, match="ENCRYPTION_KEYS is not set"):
        keyless.register()
    assert emulator.requests("POST") == []


def test_rotation_accepts_both_secrets_during_the_window_and_only_the_new_after(
    live: LiveService, emulator: RunningEmulator
) -> None:
    old_id = register(live)
    old_secret = emulator.secrets()[old_id]
    result = live.app.test_cli_runner().invoke(args=["subscriptions", "rotate"])
    assert result.exit_code == 0, result.output
    [new_id] = set(emulator.secrets()) - {old_id}
    new_secret = emulator.secrets()[new_id]
    assert f"rotating {old_id} → {new_id}: both secrets are accepted until" in result.output

    assert deliver(live, old_secret, "msg_old_in_window") == 200
    assert deliver(live, new_secret, "msg_new_in_window") == 200
    # The provider delivers to both subscriptions with one message id: stored once.
    sent = emulator.state.trigger("chat.completion")
    wait_until(lambda: emulator.state.deliverer.idle(), 15, what="both deliveries")
    statuses = [a.status_code for a in emulator.state.deliverer.attempts]
    assert statuses == [200, 200]
    assert stored_event(live.service, sent["id"]) is not None

    messages = live.service.subscriptions.rotate(now=utcnow() + GRACE + timedelta(minutes=1))
    assert messages == [f"rotated {old_id} → {new_id}: the old subscription is deleted"]
    assert set(emulator.secrets()) == {new_id}
    assert deliver(live, old_secret, "msg_old_after") == 401
    assert deliver(live, new_secret, "msg_new_after") == 200
    statuses_by_id = {row.id: (row.status, row.secret_encrypted) for row in rows(live.service)}
    assert statuses_by_id[old_id] == (SubscriptionStatus.RETIRED, None)
    assert statuses_by_id[new_id][0] == SubscriptionStatus.ACTIVE


def test_the_grace_setting_is_read_when_the_window_is_checked(
    live: LiveService, emulator: RunningEmulator
) -> None:
    old_id = register(live)
    live.service.subscriptions.rotate()
    assert old_id in emulator.secrets()
    no_grace = Subscriptions(
        live.service.db,
        live.service.subscriptions.box,
        live.settings.replace(rotation_grace_hours=0),
    )
    [message] = no_grace.rotate()
    assert message.startswith(f"rotated {old_id} → ")
    assert old_id not in emulator.secrets()


@pytest.mark.parametrize(
    ("method", "when"),
    [("POST", "before"), ("POST", "after"), ("DELETE", "before"), ("DELETE", "after")],
)
def test_an_interrupted_rotation_is_completed_by_the_next_run(
    live: LiveService, emulator: RunningEmulator, method: str, when: str
) -> None:
    old_id = register(live)
    service = live.service
    crashing = Subscriptions(
        service.db,
        service.subscriptions.box,
        live.settings,
        transport=CrashingTransport(method, when),
    )
    later = utcnow() + GRACE + timedelta(minutes=1)
    if method == "POST":
        with pytest.raises(Crash):
            crashing.rotate()
        service.subscriptions.rotate()  # resumes: creates (or replays) the replacement
    else:
        service.subscriptions.rotate()
        with pytest.raises(Crash):
            crashing.rotate(now=later)
    [message] = service.subscriptions.rotate(now=later)
    assert message.startswith(f"rotated {old_id} → ")

    # One replacement was created, whatever the crash; the old one is gone on both sides.
    assert emulator.created("/v1/webhooks") == 2
    [(new_id, new_secret)] = emulator.secrets().items()
    by_id = {row.id: row for row in rows(service)}
    assert set(by_id) == {old_id, new_id}
    assert by_id[new_id].status == SubscriptionStatus.ACTIVE
    assert by_id[old_id].status == SubscriptionStatus.RETIRED
    with service.db.transaction() as session:
        [rotation] = session.scalars(select(RotationRow)).all()
        assert (rotation.old_id, rotation.new_id, rotation.step) == (old_id, new_id, "done")
    assert deliver(live, new_secret, f"msg_after_{method}_{when}") == 200
    # A further run has nothing left to finish and starts a fresh rotation instead.
    assert service.subscriptions.rotations(open_only=True) == []


def test_rotate_if_due_follows_rotation_days(live: LiveService, emulator: RunningEmulator) -> None:
    old_id = register(live)
    subscriptions = live.service.subscriptions
    assert subscriptions.rotate_if_due() == []
    month_later = utcnow() + timedelta(days=31)
    switched_off = Subscriptions(
        live.service.db, subscriptions.box, live.settings.replace(rotation_days=0)
    )
    assert switched_off.rotate_if_due(now=month_later) == []
    [message] = subscriptions.rotate_if_due(now=month_later)
    assert message.startswith(f"rotating {old_id} → ")
    [done] = subscriptions.rotate_if_due(now=month_later + GRACE)
    assert done.startswith(f"rotated {old_id} → ")
    assert old_id not in emulator.secrets()


def test_stored_secrets_are_cached_briefly_and_new_ones_seen_without_restart(
    live: LiveService,
) -> None:
    clock = [1000.0]
    receiver = Subscriptions(
        live.service.db,
        live.service.subscriptions.box,
        live.settings.replace(stored_secrets_cache_seconds=5),
        monotonic=lambda: clock[0],
    )
    assert receiver.stored_secrets() == ()
    register(live)  # another process registers
    assert receiver.stored_secrets() == ()  # still within the cache's few seconds
    clock[0] += 5
    assert len(receiver.stored_secrets()) == 1


def test_api_key_rotation_switches_to_the_new_key_and_deletes_the_old(
    live: LiveService, emulator: RunningEmulator
) -> None:
    runner = live.app.test_cli_runner()
    result = runner.invoke(args=["keys", "rotate"])
    assert result.exit_code == 0, result.output
    with live.service.db.transaction() as session:
        [first] = session.scalars(select(ApiKeyRow)).all()
        first_id = first.id
    assert result.stdout.strip() == (
        f"switched to API key {first_id}; the old key {emulator.api_key_id} is deleted"
    )
    old_key_answer = httpx.get(
        emulator.api_base + "/models", headers={"Authorization": f"Bearer {emulator.api_key}"}
    )
    assert old_key_answer.status_code == 401
    with live.service.subscriptions.client() as client:
        assert client.list_models()  # the stored key wins over ASSISTERS_API_KEY

    result = runner.invoke(args=["keys", "rotate"])
    assert result.exit_code == 0, result.output
    assert f"the old key {first_id} is deleted" in result.output
    with live.service.db.transaction() as session:
        first_again = session.get(ApiKeyRow, first_id)
        assert first_again is not None
        assert (first_again.status, first_again.key_encrypted) == ("deleted", None)
    assert set(emulator.state.keys) == {
        r.new_id for r in live.service.subscriptions.rotations()[:1]
    }


def test_api_key_rotation_without_a_key_id_says_to_delete_the_old_key_by_hand(
    live: LiveService, emulator: RunningEmulator
) -> None:
    subscriptions = Subscriptions(
        live.service.db,
        live.service.subscriptions.box,
        live.settings.replace(assisters_api_key_id=None),
    )
    [message] = subscriptions.rotate_api_key()
    assert "delete it by hand" in message
    assert emulator.api_key_id in emulator.state.keys


def test_an_api_key_rotation_whose_create_answer_was_lost_creates_one_key(
    live: LiveService, emulator: RunningEmulator
) -> None:
    crashing = Subscriptions(
        live.service.db,
        live.service.subscriptions.box,
        live.settings,
        transport=CrashingTransport("POST", "after"),
    )
    started = utcnow()
    with pytest.raises(Crash):
        crashing.rotate_api_key(now=started)
    # Resumed a minute later (the next beat tick): the same request again, so the provider
    # replays the key it created instead of refusing the reused idempotency key.
    [message] = live.service.subscriptions.rotate_api_key(now=started + timedelta(minutes=1))
    assert message.endswith(f"the old key {emulator.api_key_id} is deleted")
    assert emulator.created("/v1/keys") == 1
    assert len(emulator.state.keys) == 1


def test_reencrypt_rewraps_every_secret_under_the_newest_key(
    live: LiveService, emulator: RunningEmulator
) -> None:
    register(live)
    live.service.subscriptions.rotate_api_key()
    newest = Fernet.generate_key().decode()
    both = create_app(live.settings.replace(encryption_keys=(newest, ENCRYPTION_KEY)))
    try:
        result = both.test_cli_runner().invoke(args=["secrets", "reencrypt"])
    finally:
        both.extensions["webhooks"].db.dispose()
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "re-encrypted 2 secrets under the newest key"

    only_newest = create_app(live.settings.replace(encryption_keys=(newest,)))
    try:
        service: Service = only_newest.extensions["webhooks"]
        assert len(service.subscriptions.stored_secrets()) == 1
        with service.subscriptions.client() as client:
            assert client.list_models()
    finally:
        only_newest.extensions["webhooks"].db.dispose()
    with pytest.raises(ConfigError, match="ENCRYPTION_KEYS") as wrong:
        create_app(live.settings.replace(encryption_keys=(ENCRYPTION_KEY,)))
    with pytest.raises(ConfigError, match="ENCRYPTION_KEYS is not set"):
        create_app(live.settings.replace(encryption_keys=()))
    assert newest not in str(wrong.value)
    assert ENCRYPTION_KEY not in str(wrong.value)


def test_no_secret_reaches_logs_or_output(
    live: LiveService, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    runner = live.app.test_cli_runner()
    outputs = [runner.invoke(args=["subscriptions", "register"]).output]
    seen_secrets = set(emulator.secrets().values())
    outputs.append(runner.invoke(args=["subscriptions", "rotate"]).output)
    seen_secrets |= set(emulator.secrets().values())
    emulator.state.trigger("model.failed")
    wait_until(lambda: emulator.state.deliverer.idle(), 15, what="the deliveries")
    outputs.append(runner.invoke(args=["subscriptions", "list"]).output)
    outputs.append(runner.invoke(args=["keys", "rotate"]).output)
    seen_keys = {k.key for k in emulator.state.keys.values()} | {emulator.api_key}
    outputs.append(runner.invoke(args=["keys", "rotate"]).output)
    seen_keys |= {k.key for k in emulator.state.keys.values()}
    live.service.subscriptions.rotate(now=utcnow() + GRACE + timedelta(minutes=1))

    everything = caplog.text + "".join(outputs)
    assert "whsec_…" in everything  # masked forms do appear
    assert len(seen_secrets) == 2
    assert len(seen_keys) == 3
    for secret in seen_secrets | seen_keys | {ENCRYPTION_KEY}:
        assert secret not in everything
        assert secret.split("_", 1)[-1] not in everything
