"""Structured logs: one JSON object per line on stderr, from structlog and stdlib ``logging``.

stderr, not stdout: a platform collects both, and ``flask subscriptions list`` and the other
commands keep stdout for their own output, which scripts read.

Every line about an event carries ``event_id`` (and ``handler`` when a handler runs): code binds
them with :func:`log_context` (context variables, so stdlib ``logging`` calls inside a handler
get them too) or passes them to :func:`log_event`. Bodies and secrets are never logged: the
service logs ids, types, statuses and reasons only, and :func:`_redact` drops any field whose
name says it holds a secret.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

_SECRET_WORDS = ("secret", "token", "password", "authorization", "signature", "body", "api_key")
_configured: tuple[str, str] | None = None


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key != "event" and any(word in key.lower() for word in _SECRET_WORDS):
            event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and stdlib logging through one JSON (or console) renderer on stderr."""
    global _configured
    if _configured == (level, fmt):
        return
    _configured = (level, fmt)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_webhooks_handler", False):
            root.removeHandler(existing)
    handler._webhooks_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request at INFO: noise in the CLIs' output and the workers' logs. Its
    # failures still reach us as exceptions, which the callers report.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


class _Stderr:
    """Whatever ``sys.stderr`` is at the time of writing (test capture, a redirected stream),
    except a stream that logs what it is given: Celery's ``LoggingProxy`` (its
    ``worker_redirect_stdouts``) would send each line back into logging, and its recursion
    guard drops it. The process's real stderr then."""

    @staticmethod
    def _stream() -> TextIO:
        stream = sys.stderr
        if stream is None or isinstance(stream, logging.Logger) or hasattr(stream, "logger"):
            return sys.__stderr__ or sys.stdout
        return stream

    def write(self, text: str) -> int:
        return self._stream().write(text)

    def flush(self) -> None:
        self._stream().flush()


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Bind ``event_id``, ``handler``, ... to every log line (structlog or stdlib) inside."""
    with structlog.contextvars.bound_contextvars(**values):
        yield


_events_log = structlog.get_logger("webhooks_app.events")


def log_event(message: str, *, level: int = logging.INFO, **values: Any) -> None:
    """One structured line about an event; cheap when the level is filtered out."""
    if logging.getLogger("webhooks_app.events").isEnabledFor(level):
        _events_log.log(level, message, **values)
