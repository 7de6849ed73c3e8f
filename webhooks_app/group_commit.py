"""Group commit: the writes of concurrent requests in one statement, each request still
answered only after its own write is durable.

The first request to arrive while no write is in flight becomes the *leader*: it writes what
is waiting (at first, just its own row) and returns; a request arriving while a write is in
flight waits, and when that write ends, one of the waiting requests leads the next write with
everything that gathered meanwhile. Alone, a request writes at once, as it would without this;
under load, one round trip and one commit serve several requests. The database stays the
judge of every row (the statement is the transaction); nothing is acknowledged from memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Writes one group; returns, in order, each item's result or the exception it failed with.
Flush = Callable[[Sequence[Item]], Sequence["Result | BaseException"]]


class _Ticket(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.done = False
        self.result: Result | None = None
        self.error: BaseException | None = None

    def settle(self, outcome: Result | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self.error = outcome
        else:
            self.result = outcome
        self.done = True


class GroupCommit(Generic[Item, Result]):
    """Batches ``submit`` calls of concurrent threads into calls of ``flush``."""

    def __init__(self, flush: Flush[Item, Result], *, max_group: int = 64) -> None:
        self._flush = flush
        self._max_group = max_group
        self._changed = threading.Condition()
        self._waiting: list[_Ticket[Item, Result]] = []
        self._writing = False

    @property
    def waiting(self) -> int:
        """Submits waiting for the write in flight to end."""
        with self._changed:
            return len(self._waiting)

    def submit(self, item: Item) -> Result:
        """Write ``item`` with whatever else is waiting; its result, or its exception raised."""
        ticket: _Ticket[Item, Result] = _Ticket(item)
        with self._changed:
            self._waiting.append(ticket)
            while self._writing and not ticket.done:
                self._changed.wait()
            if not ticket.done:
                self._writing = True
                group = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
        if not ticket.done:
            self._lead(group)
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    def _lead(self, group: list[_Ticket[Item, Result]]) -> None:
        outcomes: Sequence[Result | BaseException]
        try:
            outcomes = self._flush([ticket.item for ticket in group])
            if len(outcomes) != len(group):
                raise RuntimeError("flush returned a result count unlike its group's size")
        except BaseException as exc:
            # The followers fail with the leader's error (a database outage, or the worker being
            # stopped); the leader raises it too, from ``submit``.
            outcomes = [exc] * len(group)
        with self._changed:
            for ticket, outcome in zip(group, outcomes, strict=True):
                ticket.settle(outcome)
            self._writing = False
            self._changed.notify_all()
