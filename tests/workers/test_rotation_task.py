"""The beat entry and the thin task that moves rotations on."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveService
from tests.support.emulator import RunningEmulator
from webhooks_app.extensions import ROTATE_SUBSCRIPTIONS_TASK, celery_config
from webhooks_app.subscriptions import Subscriptions
from workers import tasks


def test_beat_checks_rotations(live: LiveService) -> None:
    entry = celery_config(live.settings)["beat_schedule"]["rotate-subscriptions"]
    assert entry == {
        "task": ROTATE_SUBSCRIPTIONS_TASK,
        "schedule": live.settings.rotation_check_seconds,
    }
    assert ROTATE_SUBSCRIPTIONS_TASK in live.service.celery.tasks


def test_the_task_finishes_a_rotation_whose_window_has_passed(
    live: LiveService, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    subscriptions = live.service.subscriptions
    old = subscriptions.register()
    subscriptions.rotate()  # a 24-hour window
    # The worker's settings say no grace: read when the window is checked, so it is over.
    live.service.subscriptions = Subscriptions(
        live.service.db,
        subscriptions.box,
        live.settings.replace(rotation_grace_hours=0),
        sleep=lambda _: None,
    )
    emulator.fault(500, count=4)
    with live.app.app_context():
        assert tasks.rotate_subscriptions.run() == []
    assert "subscription rotation postponed" in caplog.text
    assert old.id in emulator.secrets()
    with live.app.app_context():
        [message] = tasks.rotate_subscriptions.run()
    assert message.startswith(f"rotated {old.id} → ")
    assert old.id not in emulator.secrets()
    listed = httpx.get(
        emulator.api_base + "/webhooks", headers={"Authorization": f"Bearer {emulator.api_key}"}
    ).json()["webhooks"]
    assert len(listed) == 1
