"""The admin's subscriptions page and its Rotate now action, against the emulator as a real
HTTP server (the service served over HTTP, so the emulator can verify and deliver to it)."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import ADMIN_USERNAME, LiveService, csrf_token, login
from tests.support.emulator import RunningEmulator
from webhooks_app.store import AuditRow, RotationRow, RotationStep


def admin(live: LiveService) -> FlaskClient:
    client = live.app.test_client()
    login(client)
    return client


def register(live: LiveService) -> str:
    result = live.app.test_cli_runner().invoke(args=["subscriptions", "register"])
    assert result.exit_code == 0, result.output
    return result.stdout.split()[1]


def audit(live: LiveService) -> list[tuple[str, str, dict[str, object]]]:
    with live.service.db.transaction() as session:
        rows = session.scalars(select(AuditRow).where(AuditRow.action != "admin.login"))
        return [(r.actor, r.action, r.details) for r in rows]


def test_the_page_shows_subscriptions_rotations_and_keys(
    live: LiveService, emulator: RunningEmulator
) -> None:
    client = admin(live)
    empty = client.get("/admin/subscriptions")
    assert empty.status_code == 200
    assert "No subscription yet" in empty.get_data(as_text=True)

    sub_id = register(live)
    secret = emulator.secrets()[sub_id]
    html = client.get("/admin/subscriptions").get_data(as_text=True)
    row = re.search(rf'<tr data-subscription-id="{sub_id}">(.*?)</tr>', html, re.S)
    assert row, html
    cells = row.group(1)
    assert live.url + "/webhooks/events" in cells
    assert "chat.completion" in cells
    assert "model.failed" in cells
    assert 'data-status="active"' in cells
    assert "<time datetime=" in cells
    assert secret not in html  # only the masked hint
    assert f"whsec_…{secret[-4:]}" in cells
    assert "No rotation in progress" in html
    # The key the service started with, by id, never by value.
    assert f'data-key-id="{emulator.api_key_id}"' in html
    assert emulator.api_key not in html
    # The nav links here.
    assert 'href="/admin/subscriptions"' in html


def test_rotate_now_starts_a_rotation_and_is_audited(
    live: LiveService, emulator: RunningEmulator
) -> None:
    client = admin(live)
    old_id = register(live)
    token = csrf_token(client, "/admin/subscriptions")

    refused = client.post("/admin/subscriptions/rotate", data={"kind": "subscription"})
    assert refused.status_code == 400  # no CSRF token
    assert set(emulator.secrets()) == {old_id}

    response = client.post(
        "/admin/subscriptions/rotate", data={"kind": "subscription", "csrf_token": token}
    )
    assert response.status_code == 302
    [new_id] = set(emulator.secrets()) - {old_id}
    with live.service.db.transaction() as session:
        rotation = session.scalars(select(RotationRow)).one()
        assert (rotation.old_id, rotation.new_id) == (old_id, new_id)
        assert rotation.step == RotationStep.RETIRE_OLD
    [(actor, action, details)] = audit(live)
    assert (actor, action) == (ADMIN_USERNAME, "subscription.rotate")
    assert f"rotating {old_id} → {new_id}" in str(details["outcome"])

    page = client.get("/admin/subscriptions").get_data(as_text=True)
    assert "rotating " in page  # the flashed outcome
    assert 'data-rotation-step="retire_old"' in page
    assert f"{old_id} → {new_id}" in page
    assert "delete the old one" in page
    assert re.search(rf'data-subscription-id="{old_id}">.*?data-status="retiring"', page, re.S)


def test_rotate_the_api_key_and_a_refusal_is_shown_and_audited(
    live: LiveService, emulator: RunningEmulator
) -> None:
    client = admin(live)
    token = csrf_token(client, "/admin/subscriptions")
    nothing = client.post(
        "/admin/subscriptions/rotate",
        data={"kind": "subscription", "csrf_token": token},
        follow_redirects=True,
    )
    assert "Rotation not started: there is no active subscription" in nothing.get_data(as_text=True)
    assert [a for _, a, _ in audit(live)] == ["subscription.rotate_failed"]

    response = client.post(
        "/admin/subscriptions/rotate",
        data={"kind": "api_key", "csrf_token": token},
        follow_redirects=True,
    )
    html = response.get_data(as_text=True)
    assert "switched to API key" in html
    assert re.search(
        rf'data-key-id="{emulator.api_key_id}">.*?data-status="deleted"', html, re.S
    ), html
    assert html.count('data-status="current"') == 1
    assert [a for _, a, _ in audit(live)][-1] == "api_key.rotate"

    bad = client.post("/admin/subscriptions/rotate", data={"kind": "x", "csrf_token": token})
    assert bad.status_code == 400
