"""Issue 17's findings on the admin page and the API, each reproduced over HTTP.

Parameters that are bad answer 400 (5); forwarded addresses are believed only from trusted
proxies, and a login is audited or does not happen (2); logging out ends the session for every
copy of its cookie (8); ids with ``/`` can be opened and acted on (9); bidi controls are shown,
not obeyed (10).
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text

from tests.conftest import ADMIN_PASSWORD, ADMIN_TOKEN, ADMIN_USERNAME, csrf_token, login
from webhooks_app import create_app
from webhooks_app.config import Settings
from webhooks_app.openapi import openapi_document
from webhooks_app.service import Service
from webhooks_app.store import AuditRow

PostEvent = Callable[..., Any]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# Login counters outlive a test (in Redis): each client gets an address of its own.
_addresses = itertools.count(1)


def peer_address() -> str:
    n = next(_addresses)
    return f"10.17.{n // 250 % 250}.{n % 250 + 1}"


def client_from(app: Flask, address: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def last_audit(service: Service) -> AuditRow:
    with service.db.transaction() as session:
        row = session.scalars(select(AuditRow).order_by(AuditRow.id.desc()).limit(1)).one()
        session.expunge(row)
        return row


def b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# --- 5: every cursor and query parameter answers 400 when bad -------------------------------

AUDIT_CURSOR_REPRO = b64(["2026-12-01T00:00:00+00:00", "²"])
FREE_TEXT = {"type", "data_id", "q"}
# Wrong for every parameter, free text included: NUL (PostgreSQL text cannot hold it), and
# longer than any stored value.
BAD_ANYWHERE = ["\x00", "a\x00b", "x" * 300]
BAD_TYPED = [
    *BAD_ANYWHERE,
    "²",
    "-1",
    "1.5",
    "9" * 30,
    "2026-13-45",
    "2026-12-01T25:00:00",
    "\u0661\u0662",  # Arabic-Indic digits: str.isdigit() says yes
    "[]",
    b64(["9999-12-31T23:59:59-23:59", "x"]),  # past year 9999 in UTC
    b64(["2026-12-01T00:00:00+00:00", "a\x00b"]),
    b64({"a": 1}),
    b64([1, 2]),
    "%%%",
]


def api_query_parameters() -> Iterator[tuple[str, str]]:
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if method != "get":
                continue
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query":
                    yield path, parameter["name"]


API_PARAMETERS = list(api_query_parameters())
ADMIN_PARAMETERS = [
    (page, name)
    for page, names in {
        "/admin/events": ["type", "status", "since", "until", "data_id", "q", "cursor"],
        "/admin/events/live": ["type", "status", "since", "until", "data_id", "q", "cursor"],
        "/admin/audit": ["start", "end", "cursor"],
    }.items()
    for name in names
]


def test_the_walk_covers_the_api_parameters() -> None:
    names = {name for path, name in API_PARAMETERS if path.startswith("/api/")}
    assert {"type", "status", "since", "until", "data_id", "q", "limit", "cursor"} <= names
    assert {"start", "end"} <= names


@pytest.mark.parametrize(
    ("path", "name"), API_PARAMETERS, ids=[f"{p} {n}" for p, n in API_PARAMETERS]
)
def test_every_api_parameter_answers_400_when_bad(
    client: FlaskClient, path: str, name: str
) -> None:
    values = BAD_ANYWHERE if name in FREE_TEXT else BAD_TYPED
    for value in values:
        response = client.get(path, query_string={name: value}, headers=AUTH)
        if not path.startswith("/api/"):
            # Outside the API (the verification challenge is the provider's): never a 5xx.
            assert response.status_code < 500, (path, name, value)
            continue
        assert response.status_code == 400, (path, name, value, response.get_data(as_text=True))
        error = response.get_json()["error"]
        assert error["param"] == name, (path, name, value, error)
        assert error["type"] == "invalid_request_error"
        assert error["message"]


@pytest.mark.parametrize(
    ("page", "name"), ADMIN_PARAMETERS, ids=[f"{p} {n}" for p, n in ADMIN_PARAMETERS]
)
def test_every_admin_page_parameter_answers_400_when_bad(
    admin_client: FlaskClient, page: str, name: str
) -> None:
    values = BAD_ANYWHERE if name in FREE_TEXT else BAD_TYPED
    for value in values:
        response = admin_client.get(page, query_string={name: value})
        assert response.status_code == 400, (page, name, value)
        assert response.mimetype == "text/html"


def test_a_crafted_audit_cursor_is_a_400(admin_client: FlaskClient) -> None:
    """The red team's repro: ``"²".isdigit()`` is true and ``int("²")`` fails."""
    api = admin_client.get("/api/audit", query_string={"cursor": AUDIT_CURSOR_REPRO})
    assert api.status_code == 400
    assert api.get_json()["error"]["code"] == "invalid_cursor"
    page = admin_client.get("/admin/audit", query_string={"cursor": AUDIT_CURSOR_REPRO})
    assert page.status_code == 400
    assert "cursor" in page.get_data(as_text=True)


def test_impossible_event_ids_are_not_found(admin_client: FlaskClient) -> None:
    for event_id in ["a\x00b", "x" * 300]:
        assert admin_client.get("/api/events/" + event_id).status_code == 404
        assert admin_client.get("/admin/events/" + event_id).status_code == 404
        assert admin_client.get("/admin/events/" + event_id + "/live").status_code == 404
        response = admin_client.post(f"/api/events/{event_id}/replay", headers=AUTH)
        assert response.status_code == 404


# --- 2: forwarded addresses, bounded addresses, a login audited or not at all -----------------


def test_a_client_cannot_pick_its_address_by_default(app: Flask, service: Service) -> None:
    """Rotating X-Forwarded-For gave endless wrong logins; now the peer's address counts."""
    peer = peer_address()
    client = client_from(app, peer)
    statuses = []
    for n in range(8):
        client.environ_base["HTTP_X_FORWARDED_FOR"] = f"198.51.100.{n}"
        statuses.append(login(client, ADMIN_USERNAME, "guess").status_code)
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    assert last_audit(service).remote_addr == peer


@pytest.fixture
def proxied_app(settings: Settings) -> Iterator[Flask]:
    """The app behind one trusted proxy (TRUSTED_PROXIES=1)."""
    app = create_app(settings.replace(trusted_proxies=1))
    yield app
    app.extensions["webhooks"].db.dispose()


def test_behind_a_trusted_proxy_the_forwarded_client_counts(
    proxied_app: Flask, service: Service
) -> None:
    proxy = peer_address()
    one, other = peer_address(), peer_address()
    client = client_from(proxied_app, proxy)
    client.environ_base["HTTP_X_FORWARDED_FOR"] = f"203.0.113.9, {one}"
    for _ in range(5):
        assert login(client, ADMIN_USERNAME, "guess").status_code == 401
    assert last_audit(service).remote_addr == one  # the proxy's entry, not the client's
    assert login(client).status_code == 429
    # Another client behind the same proxy is not locked out.
    client.environ_base["HTTP_X_FORWARDED_FOR"] = other
    assert login(client).status_code == 302
    assert last_audit(service).remote_addr == other


@pytest.mark.parametrize(
    "forwarded",
    [
        "1" * 100,
        "2001:db8::1%" + "e" * 80,
        "not an address",
        "203.0.113.5:4711",
        "[2001:db8::7]:80",
    ],
)
def test_a_forwarded_address_is_stored_bounded_and_valid(
    proxied_app: Flask, service: Service, forwarded: str
) -> None:
    """Over 64 characters used to make every login 400 while the session cookie worked."""
    peer = peer_address()
    client = client_from(proxied_app, peer)
    client.environ_base["HTTP_X_FORWARDED_FOR"] = forwarded
    response = login(client)
    assert response.status_code == 302
    assert client.get("/admin/events").status_code == 200
    stored = last_audit(service)
    assert stored.action == "admin.login"
    expected = {"203.0.113.5:4711": "203.0.113.5", "[2001:db8::7]:80": "2001:db8::7"}
    assert stored.remote_addr == expected.get(forwarded, peer)
    # Wrong logins from there are counted (they were 400s, never counted) and throttled.
    other = client_from(proxied_app, peer_address())
    other.environ_base["HTTP_X_FORWARDED_FOR"] = "1" * 100
    assert {login(other, ADMIN_USERNAME, "guess").status_code for _ in range(5)} == {401}
    assert login(other).status_code == 429


@pytest.fixture
def audit_refuses_logins(service: Service) -> Iterator[None]:
    """PostgreSQL refuses the login's audit entry (a full disk, a lost connection, ...)."""
    with service.db.engine.begin() as connection:
        connection.execute(
            text(
                "CREATE FUNCTION refuse_login_audit() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF NEW.action = 'admin.login' THEN RAISE EXCEPTION 'refused'; END IF;"
                " RETURN NEW; END $$"
            )
        )
        connection.execute(
            text(
                "CREATE TRIGGER refuse_login_audit BEFORE INSERT ON audit_log"
                " FOR EACH ROW EXECUTE FUNCTION refuse_login_audit()"
            )
        )
    try:
        yield
    finally:
        with service.db.engine.begin() as connection:
            connection.execute(text("DROP TRIGGER refuse_login_audit ON audit_log"))
            connection.execute(text("DROP FUNCTION refuse_login_audit()"))


@pytest.mark.usefixtures("audit_refuses_logins")
def test_a_login_that_cannot_be_audited_does_not_happen(app: Flask) -> None:
    client = client_from(app, peer_address())
    response = login(client)
    assert response.status_code >= 500
    assert client.get("/admin/events").status_code == 302
    assert client.get("/api/events").status_code == 401


# --- 8: logging out ends the session server-side ----------------------------------------------


def test_logout_ends_every_copy_of_the_session(app: Flask) -> None:
    client = client_from(app, peer_address())
    assert login(client).status_code == 302
    copied = app.test_client()
    copied.set_cookie("aw_session", client.get_cookie("aw_session").value)  # type: ignore[union-attr]
    assert copied.get("/admin/events").status_code == 200
    assert copied.get("/api/events").status_code == 200

    token = csrf_token(client, "/admin/events")
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert copied.get("/admin/events").status_code == 302
    assert copied.get("/api/events").status_code == 401
    assert copied.get("/admin/events/live", headers={"X-Admin-Poll": "1"}).status_code == 401


def test_a_new_login_does_not_revive_an_ended_session(app: Flask) -> None:
    client = client_from(app, peer_address())
    login(client)
    old_cookie = client.get_cookie("aw_session").value  # type: ignore[union-attr]
    client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/admin/events")})
    assert login(client).status_code == 302
    stale = app.test_client()
    stale.set_cookie("aw_session", old_cookie)
    assert stale.get("/admin/events").status_code == 302
    assert client.get("/admin/events").status_code == 200


# --- 9: ids with "/" can be opened, replayed, revealed and deleted -----------------------------

SLASHED_IDS = [
    "msg/with/slash_x",
    "/leading",
    "double//slash",
    "trailing/",
    "ends/live",
    "ends/replay",
    "live",
    "q?x=1#f%20 y",
]


@pytest.mark.parametrize("event_id", SLASHED_IDS)
def test_an_id_with_slashes_can_be_managed_in_the_api(
    client: FlaskClient, post_event: PostEvent, event_id: str
) -> None:
    assert (
        post_event(
            "chat.completion", {"id": "d", "email": "a@example.com"}, msg_id=event_id
        ).status_code
        < 300
    )
    base = "/api/events/" + _path(event_id)
    opened = client.get(base, headers=AUTH)
    assert opened.status_code == 200, opened.get_data(as_text=True)
    assert opened.get_json()["id"] == event_id
    listed = client.get("/api/events", query_string={"q": event_id}, headers=AUTH).get_json()
    assert [e["id"] for e in listed["data"]] == [event_id]
    replayed = client.post(base + "/replay", json={"handlers": "all"}, headers=AUTH)
    assert replayed.status_code == 202, replayed.get_data(as_text=True)
    assert replayed.get_json()["id"] == event_id
    revealed = client.post(base + "/reveal", json={"field": "/data/email"}, headers=AUTH)
    assert revealed.status_code == 200, revealed.get_data(as_text=True)
    assert revealed.get_json()["value"] == "a@example.com"
    assert client.delete(base, headers=AUTH).status_code == 200
    assert client.get(base, headers=AUTH).status_code == 404


def _path(event_id: str) -> str:
    # What a browser sends for the page's links (url_for quotes ?, # and %).
    return event_id.replace("%", "%25").replace("?", "%3F").replace("#", "%23").replace(" ", "%20")


@pytest.mark.parametrize("event_id", SLASHED_IDS)
def test_an_id_with_slashes_can_be_managed_in_the_admin(
    admin_client: FlaskClient, post_event: PostEvent, service: Service, event_id: str
) -> None:
    post_event("chat.completion", {"id": "d", "email": "a@example.com"}, msg_id=event_id)
    listing = admin_client.get("/admin/events").get_data(as_text=True)
    href = "/admin/events/" + _path(event_id)
    assert f'href="{href}"' in listing
    detail = admin_client.get(href)
    assert detail.status_code == 200
    page = detail.get_data(as_text=True)
    assert "a@example.com" not in page  # masked: this is the detail page, not another's
    assert f'data-live-url="{href}/live"' in page or f"{href}/live" in page
    live = admin_client.get(href + "/live", headers={"X-Admin-Poll": "1"})
    assert live.status_code == 200
    assert 'id="live-region"' in live.get_data(as_text=True)

    token = csrf_token(admin_client, href)
    replayed = admin_client.post(href + "/replay", data={"csrf_token": token, "handlers": "all"})
    assert replayed.status_code == 302
    assert replayed.headers["Location"] == href
    revealed = admin_client.post(
        href + "/reveal", data={"csrf_token": token, "pointer": "/data/email"}
    )
    assert revealed.status_code == 200
    assert "a@example.com" in revealed.get_data(as_text=True)
    deleted = admin_client.post(href + "/delete", data={"csrf_token": token})
    assert deleted.status_code == 302
    assert admin_client.get("/api/events/" + _path(event_id)).status_code == 404
    assert last_audit(service).action == "event.delete"


def test_an_id_and_its_live_sibling_are_told_apart(
    admin_client: FlaskClient, post_event: PostEvent
) -> None:
    """``/admin/events/a/live`` is the live part of ``a`` when ``a`` exists."""
    post_event("chat.completion", {"id": "parent"}, msg_id="pair")
    post_event("chat.completion", {"id": "child"}, msg_id="pair/live")
    fragment = admin_client.get("/admin/events/pair/live", headers={"X-Admin-Poll": "1"})
    assert "<h1" not in fragment.get_data(as_text=True)
    child = admin_client.get("/admin/events/pair/live/live", headers={"X-Admin-Poll": "1"})
    assert child.status_code == 200


# --- 10: bidi controls are shown, not obeyed ---------------------------------------------------

RLO = "\u202e"


def test_bidi_controls_render_as_visible_escapes(
    admin_client: FlaskClient, post_event: PostEvent
) -> None:
    post_event(
        f"invoice{RLO}fdp.exe",
        {"id": f"data{RLO}id", "note": f"pay {RLO}0001$", f"key{RLO}": "\u2066x\u2069"},
        msg_id="msg_bidi",
    )
    pages = {
        "list": admin_client.get("/admin/events"),
        "live": admin_client.get("/admin/events/live", headers={"X-Admin-Poll": "1"}),
        "search": admin_client.get("/admin/events", query_string={"q": f"data{RLO}id"}),
        "detail": admin_client.get("/admin/events/msg_bidi"),
        "fragment": admin_client.get("/admin/events/msg_bidi/live"),
    }
    for name, response in pages.items():
        assert response.status_code == 200, name
        html = response.get_data(as_text=True)
        for control in (RLO, "\u2066", "\u2069"):
            # The search box keeps what was typed: it is sent back as it is.
            if name == "search":
                html = html.replace(f'value="data{RLO}id"', "")
            assert control not in html, (name, repr(control))
    assert "invoice\\u202efdp.exe" in pages["list"].get_data(as_text=True)
    detail = pages["detail"].get_data(as_text=True)
    assert "data\\u202eid" in detail
    assert "pay \\u202e0001$" in detail
    assert "\\u2066x\\u2069" in detail
    search = pages["search"].get_data(as_text=True)
    assert "msg_bidi" in search  # the filter still matches the real data.id


def test_bidi_controls_in_a_filter_are_kept_in_the_form_values(
    admin_client: FlaskClient,
) -> None:
    """The bulk replay form sends the list's filter back: as typed, or it selects other events."""
    page = admin_client.get("/admin/events", query_string={"type": f"a{RLO}b"})
    assert page.status_code == 200
    assert f'<input type="hidden" name="type" value="a{RLO}b">' in page.get_data(as_text=True)


def test_password_login_still_works_end_to_end(app: Flask) -> None:
    client = client_from(app, peer_address())
    token = csrf_token(client)
    response = client.post(
        "/admin/login",
        data={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 302
    assert client.get("/api/events").status_code == 200
