"""Closing a keep-alive connection after an answer that leaves the request body unread.

The unread bytes would be taken for the next request, so gunicorn drains a small remainder
itself (up to 64 KiB) and closes the connection otherwise, but only after announcing
``Connection: keep-alive``: a client reusing the connection then loses its next request. An
application's own ``Connection`` header never reaches the wire (gunicorn drops hop-by-hop
headers), so gunicorn.conf.py's ``pre_request`` hook hands the request's ``force_close`` over
with ``offer_close``, and ``CloseAfterUnreadBody`` calls it before the answer's head is sent.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from typing import Any

from webhooks_app.errors import ApiError

# The body remainder gunicorn drains by itself before reusing a connection (its parser's cap).
DRAINED_BY_SERVER = 64 * 1024

_CLOSE = "webhooks_close_connection"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def offer_close(body: object, close: Callable[[], None]) -> None:
    """Let the application close this request's connection (``body`` is its ``wsgi.input``)."""
    # No body object (or one that takes no attributes): nothing can be left unread.
    with contextlib.suppress(AttributeError):
        setattr(body, _CLOSE, close)


class _TrackedInput:
    """``wsgi.input``, counting what the application read of it."""

    def __init__(self, stream: Any, length: int | None) -> None:
        self._stream = stream
        self.length = length  # None: chunked, its end unknown until read
        self.read_bytes = 0
        self.ended = length == 0

    def _count(self, data: bytes, *, ended: bool) -> bytes:
        self.read_bytes += len(data)
        if ended or (self.length is not None and self.read_bytes >= self.length):
            self.ended = True
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._count(self._stream.read(), ended=True)
        data: bytes = self._stream.read(size)
        return self._count(data, ended=size > 0 and not data)

    def readline(self, size: int | None = -1) -> bytes:
        line: bytes = self._stream.readline(-1 if size is None else size)
        return self._count(line, ended=size != 0 and not line)

    def __iter__(self) -> _TrackedInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def left_too_much(self) -> bool:
        """More of the body is left than the server drains: the connection must close."""
        if self.ended:
            return False
        if self.length is None:
            return True
        return self.length - self.read_bytes > DRAINED_BY_SERVER


class CloseAfterUnreadBody:
    """WSGI middleware: an answer that leaves much of the body unread closes the connection."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        stream = environ.get("wsgi.input")
        close = getattr(stream, _CLOSE, None)
        if close is None:  # not under gunicorn.conf.py: nothing to close with
            return self.app(environ, start_response)
        try:
            length: int | None = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            length = None
        tracked = _TrackedInput(stream, length)
        environ["wsgi.input"] = tracked

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if tracked.left_too_much():
                close()
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def server_error_answer(status: int, reason: str, message: str) -> bytes:
    """gunicorn's answer to a request it refuses before the application sees it (a malformed
    request line or header, 414, 431), in the error format instead of its HTML page: what
    gunicorn.conf.py installs as ``gunicorn.util.write_error`` writes."""
    error = ApiError(
        status, message[:200] or reason, code=reason.lower().replace(" ", "_").replace("-", "_")
    )
    body = json.dumps(error.body()).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body
