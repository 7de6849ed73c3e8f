"""Which ``Host`` names the service answers to, and answers that never repeat one back."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from flask import Flask, Response, request


def configure_hosts(app: Flask, trusted_hosts: tuple[str, ...]) -> None:
    """Refuse (400 ``invalid_host``) a request whose Host is not one of ``trusted_hosts``
    (none: any well-formed name), and make redirects to this service relative."""
    app.config["TRUSTED_HOSTS"] = list(trusted_hosts) or None
    app.after_request(_relative_location)


def _relative_location(response: Response) -> Response:
    # Werkzeug's slash redirect (/admin -> /admin/) names the request's own Host: answering a
    # forged Host with a link to it is what a cache-poisoning or phishing page wants.
    location = response.headers.get("Location")
    if location and response.status_code in {301, 302, 303, 307, 308}:
        parts = urlsplit(location)
        if parts.netloc and parts.netloc == request.host:
            response.headers["Location"] = urlunsplit(("", "", parts.path, parts.query, ""))
    return response
