"""Web-layer pieces the admin page and the API share: who the client is, and event ids in
URLs."""

from __future__ import annotations

import ipaddress

from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import PathConverter

from webhooks_app.actions import ActionError
from webhooks_app.errors import ApiError, respond
from webhooks_app.params import ParamError

UNKNOWN_ADDRESS = "unknown"


def trust_proxies(app: Flask, count: int) -> None:
    """Believe ``X-Forwarded-For``/``-Proto`` as set by the ``count`` proxies in front.

    With none (the default) the headers are ignored: any client could write them, and pick
    the address the login limiter and the audit log see.
    """
    if count > 0:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=count, x_proto=count
        )


def _parse_address(raw: str | None) -> str | None:
    """``raw`` as a normalised IP address, accepting a port some proxies append."""
    if not raw:
        return None
    raw = raw.strip()
    if len(raw) > 64:
        return None
    candidates = [raw]
    if raw.startswith("[") and "]" in raw:  # [v6]:port
        candidates.append(raw[1 : raw.index("]")])
    elif raw.count(":") == 1:  # v4:port
        candidates.append(raw.partition(":")[0])
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        # A scope (``%eth0``) says nothing about the client, and has no length bound.
        return str(address).partition("%")[0]
    return None


def client_address() -> str:
    """The client's IP address, always a valid one that fits the audit log: the forwarded one
    from trusted proxies, else the peer's; ``unknown`` only on a socket without addresses."""
    found = _parse_address(request.remote_addr)
    if found is None:
        # A trusted proxy that passed garbage: count the peer rather than the garbage.
        original = request.environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR")
        found = _parse_address(original)
    return found or UNKNOWN_ADDRESS


class EventIdConverter(PathConverter):
    """Event ids may hold ``/`` (even first, or twice): routes take them whole, and a rule
    with a trailing action segment (``/<event_id:id>/replay``) wins over the bare one."""

    regex = ".+?"
    part_isolating = False


def init_app(app: Flask) -> None:
    """Event ids in routes, and the core's refusals answered in the seed's error format (JSON,
    or the admin's HTML page under /admin)."""
    app.url_map.converters["event_id"] = EventIdConverter

    @app.errorhandler(ActionError)
    def _refused(exc: ActionError) -> Response:
        return respond(ApiError(exc.status, exc.message, code=exc.code, param=exc.param))

    @app.errorhandler(ParamError)
    def _bad_parameter(exc: ParamError) -> Response:
        return respond(ApiError(400, exc.message, code=exc.code, param=exc.param))
