"""The launcher's decisions, without starting anything: bind, login link, no-wheel message."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from webhooks_app import devserver, embedded
from webhooks_app.config import ADMIN_LOGIN_TOKEN_ENV

ANY = "0.0.0.0"  # noqa: S104 - a bind the launcher is asked for, not one made here


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        (ANY, False),
        ("10.0.0.5", False),
    ],
)
def test_only_a_loopback_bind_gets_a_login_link(host: str, loopback: bool) -> None:
    env: dict[str, str] = {}
    token = devserver.child_environment(env, host, 8000)
    assert (token is not None) is loopback
    assert (ADMIN_LOGIN_TOKEN_ENV in env) is loopback
    assert devserver.is_loopback(host) is loopback


def test_a_configured_admin_gets_no_link_and_an_inherited_token_is_dropped() -> None:
    env = {
        "ADMIN_USERNAME": "ops",
        "ADMIN_PASSWORD_HASH": "$argon2id$x",
        ADMIN_LOGIN_TOKEN_ENV: "t",
    }
    assert devserver.child_environment(env, "127.0.0.1", 8000) is None
    assert ADMIN_LOGIN_TOKEN_ENV not in env
    opened = {ADMIN_LOGIN_TOKEN_ENV: "t"}
    assert devserver.child_environment(opened, ANY, 8000) is None
    assert ADMIN_LOGIN_TOKEN_ENV not in opened


def test_web_binds_host_and_port_and_the_other_lines_are_the_procfiles() -> None:
    commands = devserver.procfile_commands("127.0.0.1", 8123)
    assert set(commands) == {"web", "worker", "beat"}
    assert shlex.split(commands["web"])[-2:] == ["--bind", "127.0.0.1:8123"]
    assert devserver.procfile_commands("::1", 80)["web"].endswith("--bind '[::1]:80'")
    procfile = (devserver.ROOT / "Procfile").read_text()
    assert f"worker: {commands['worker']}" in procfile
    assert devserver.browse_url(ANY, 8000) == "http://127.0.0.1:8000"


def test_no_wheel_for_this_platform_is_one_line_naming_the_ways_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def no_wheel() -> None:
        raise embedded.EmbeddedUnavailable(embedded.unavailable_message())

    monkeypatch.setattr(embedded, "_import_wheel", no_wheel)
    assert devserver.run({"INSTANCE_DIR": str(tmp_path)}, "127.0.0.1", 8000) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "DATABASE_URL" in err
    assert "docker compose" in err
