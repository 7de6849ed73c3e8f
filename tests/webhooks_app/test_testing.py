"""webhooks_app.testing: build events and deliveries, run handlers in-process, load exports;
and `flask events export`, against the session's PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from webhooks_app import testing
from webhooks_app.events import Event
from webhooks_app.registry import Registry
from webhooks_app.service import Service
from webhooks_app.signatures import VerificationError
from webhooks_app.store import AuditRow

PostEvent = Callable[..., Any]


def local_registry(seen: list[tuple[str, str]]) -> Registry:
    registry = Registry()

    @registry.on("order.paid", name="charge")
    def charge(event: Event) -> str:
        seen.append(("charge", event.id))
        return f"charged {event.data['amount']}"

    @registry.on("order.paid", name="fails")
    def fails(event: Event) -> None:
        seen.append(("fails", event.id))
        raise RuntimeError(f"no stock for {event.data['sku']}")

    @registry.on("*", name="archive")
    def archive(event: Event) -> None:
        seen.append(("archive", event.id))

    return registry


def test_run_handlers_reports_each_outcome_and_runs_them_all() -> None:
    seen: list[tuple[str, str]] = []
    event = testing.make_event("order.paid", {"amount": 5, "sku": "x1"}, id="msg_1", attempt=2)
    assert (event.type, event.data, event.attempt) == ("order.paid", {"amount": 5, "sku": "x1"}, 2)
    assert event.payload == {"event": "order.paid", "data": {"amount": 5, "sku": "x1"}}

    run = testing.run_handlers(event, registry=local_registry(seen))

    assert seen == [("charge", "msg_1"), ("fails", "msg_1"), ("archive", "msg_1")]
    assert not run.ok
    assert [(o.handler, o.ok) for o in run] == [
        ("charge", True),
        ("fails", False),
        ("archive", True),
    ]
    assert run["charge"].returned == "charged 5"
    assert isinstance(run["fails"].error, RuntimeError)
    assert str(run.errors()["fails"]) == "no stock for x1"
    with pytest.raises(KeyError, match="no handler 'nope' ran"):
        run["nope"]


def test_a_type_without_handlers_is_not_ok() -> None:
    run = testing.run_handlers(testing.make_event("nobody.handles"), registry=Registry())
    assert run.outcomes == ()
    assert not run.ok  # a typo in the type must not pass silently


def test_run_handlers_imports_the_handlers_module(runs: Callable[[], list[dict[str, Any]]]) -> None:
    event = testing.make_event("multi.step", {"fail_handler": "step_two"}, id="msg_mod")
    run = testing.run_handlers(event, handlers_module="tests.support.handlers")
    assert run["step_one"].ok
    assert "planned failure of step_two" in str(run["step_two"].error)
    assert [r["handler"] for r in runs()] == ["step_one", "step_two"]


def test_a_signed_delivery_is_verified_and_parsed_like_the_receiver_does() -> None:
    seen: list[tuple[str, str]] = []
    delivery = testing.signed_delivery("order.paid", {"amount": 1, "sku": "s"}, id="msg_sig")
    assert delivery.headers["webhook-signature"].startswith("v1,")
    run = testing.run_delivery(delivery, registry=local_registry(seen))
    assert run.event.id == "msg_sig"
    assert run["charge"].ok
    assert seen[0] == ("charge", "msg_sig")

    tampered = testing.SignedDelivery(
        delivery.body.replace(b"1", b"2"), delivery.headers, delivery.secret
    )
    with pytest.raises(VerificationError):
        testing.run_delivery(tampered, registry=local_registry(seen))


# --- flask events export, and loading its file back -------------------------------------------


def export(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["events", "export", *args], catch_exceptions=False)


def test_export_masks_and_loads_back_as_events(
    app: Flask, post_event: PostEvent, tmp_path: Path
) -> None:
    post_event("chat.completion", {"id": "chat_a", "email": "ann@example.com"}, msg_id="msg_a")
    post_event("model.failed", {"id": "model_b"}, msg_id="msg_b")
    out = tmp_path / "events.jsonl"

    result = export(app, "-o", str(out))

    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["msg_b", "msg_a"]  # newest first
    first = lines[1]
    assert first["payload"]["data"] == {"id": "chat_a", "email": "[masked]"}
    assert first["masked_fields"] == ["/data/email"]
    assert first["type"] == "chat.completion"
    assert first["received_at"].endswith("Z")
    assert "ann@example.com" not in out.read_text()

    events = testing.load_events(out)
    assert [(e.id, e.type, e.data.get("email")) for e in events] == [
        ("msg_b", "model.failed", None),
        ("msg_a", "chat.completion", "[masked]"),
    ]
    # The regression loop: real traffic through the handlers.
    assert testing.run_handlers(events[1], handlers_module="tests.support.handlers").ok


def test_export_filters(app: Flask, service: Service, post_event: PostEvent) -> None:
    for n in range(3):
        post_event("chat.completion", {"id": f"c{n}"}, msg_id=f"msg_c{n}")
    post_event("model.failed", {"id": "m"}, msg_id="msg_m")
    service.dispatcher.process_events(["msg_m"])

    def ids(*args: str) -> list[str]:
        result = export(app, *args)
        assert result.exit_code == 0, result.output
        return [json.loads(line)["id"] for line in result.stdout.splitlines()]

    assert ids("--type", "chat.completion") == ["msg_c2", "msg_c1", "msg_c0"]
    assert ids("--type", "chat.completion", "--limit", "2") == ["msg_c2", "msg_c1"]
    assert ids("--status", "succeeded") == ["msg_m"]
    assert ids("--since", "2999-01-01") == []
    assert ids("--until", "2000-01-01") == []
    assert len(ids("--since", "2000-01-01T00:00:00Z")) == 4
    bad = app.test_cli_runner().invoke(args=["events", "export", "--since", "yesterday"])
    assert bad.exit_code == 2
    assert "since must be a date" in bad.output


def test_export_pages_through_more_than_one_batch(
    app: Flask, post_event: PostEvent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("webhooks_app.export.BATCH_SIZE", 2)
    for n in range(5):
        post_event("chat.completion", {"id": f"p{n}"}, msg_id=f"msg_p{n}")
    result = export(app)
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == [
        f"msg_p{n}" for n in (4, 3, 2, 1, 0)
    ]
    limited = export(app, "--limit", "3")
    assert len(limited.stdout.splitlines()) == 3


def test_unmasked_export_keeps_values_and_is_audited(
    app: Flask, service: Service, post_event: PostEvent
) -> None:
    post_event("chat.completion", {"id": "c", "email": "bo@example.com"}, msg_id="msg_u")
    result = export(app, "--unmasked", "--type", "chat.completion")
    line = json.loads(result.stdout)
    assert line["payload"]["data"]["email"] == "bo@example.com"
    assert line["masked_fields"] == []
    with service.db.transaction() as session:
        entry = session.scalars(select(AuditRow)).one()
        assert (entry.actor, entry.action) == ("cli", "events.export_unmasked")
        assert entry.details["type"] == "chat.completion"


def test_load_events_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not an exported event"):
        testing.load_events(path)
