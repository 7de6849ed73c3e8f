"""How the admin page shows times and attempt histories: plain functions, no Flask."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from webhooks_app.store import AttemptRow


def relative(moment: datetime, now: datetime) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, ``2 d ago`` (``in 5 s`` for the future)."""
    seconds = (now - moment).total_seconds()
    ahead, seconds = seconds < 0, abs(seconds)
    if seconds < 1:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size:
            amount = f"{int(seconds // size)} {unit}"
            return f"in {amount}" if ahead else f"{amount} ago"
    raise AssertionError("unreachable")  # pragma: no cover


def stack_of(traceback: str) -> str:
    """A traceback without its final ``Type: message`` line: the frames only. Two attempts that
    failed at the same place count as the same, whatever their messages said (the message is
    shown on every attempt anyway)."""
    lines = traceback.rstrip().splitlines()
    return "\n".join(lines[:-1]) if len(lines) > 1 else traceback


@dataclass(frozen=True)
class ShownAttempt:
    attempt: AttemptRow
    # The attempt number of an earlier attempt of this handler with the same stack, if any:
    # the page shows a reference instead of the whole traceback again.
    same_stack_as: int | None = None


@dataclass
class RunGroup:
    run: int
    attempts: list[ShownAttempt] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        counts = Counter(a.attempt.status for a in self.attempts)
        return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def group_by_run(attempts: list[AttemptRow]) -> list[RunGroup]:
    """Attempts (oldest first) grouped by run, identical stacks collapsed to a reference."""
    groups: dict[int, RunGroup] = {}
    first_with: dict[tuple[str, str], int] = {}
    for attempt in attempts:
        same = None
        if attempt.traceback:
            key = (attempt.handler, stack_of(attempt.traceback))
            same = first_with.setdefault(key, attempt.number)
            same = None if same == attempt.number else same
        groups.setdefault(attempt.run, RunGroup(attempt.run)).attempts.append(
            ShownAttempt(attempt, same)
        )
    return [groups[run] for run in sorted(groups)]
