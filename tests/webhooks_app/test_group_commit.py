"""Group commit: concurrent submits share a flush; each gets its own result or error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from webhooks_app.group_commit import GroupCommit


class Recorder:
    """A flush that records its groups; the first call can be held open."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: Sequence[str]) -> list[str | BaseException]:
        self.groups.append(list(items))
        self.entered.set()
        self.release.wait(5)
        return [ValueError(item) if item.startswith("bad") else item.upper() for item in items]


def submit_in_threads(
    group: GroupCommit[str, str], items: list[str]
) -> tuple[dict[str, object], list[threading.Thread]]:
    results: dict[str, object] = {}

    def submit(item: str) -> None:
        try:
            results[item] = group.submit(item)
        except Exception as exc:
            results[item] = exc

    threads = [threading.Thread(target=submit, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    return results, threads


def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_lone_submit_is_written_at_once() -> None:
    flush = Recorder()
    assert GroupCommit(flush).submit("a") == "A"
    assert flush.groups == [["a"]]


def test_submits_arriving_during_a_write_share_the_next_one() -> None:
    flush = Recorder()
    group: GroupCommit[str, str] = GroupCommit(flush)
    flush.release.clear()
    leader, leader_thread = submit_in_threads(group, ["first"])
    assert flush.entered.wait(5)
    followers, follower_threads = submit_in_threads(group, ["b", "c", "d"])
    # They wait for the write in flight instead of writing themselves.
    wait_until(lambda: group.waiting == 3)
    assert flush.groups == [["first"]]
    flush.release.set()
    for thread in [*leader_thread, *follower_threads]:
        thread.join(5)
    assert flush.groups[0] == ["first"]
    assert sorted(flush.groups[1]) == ["b", "c", "d"]
    assert len(flush.groups) == 2
    assert leader == {"first": "FIRST"}
    assert followers == {"b": "B", "c": "C", "d": "D"}


def test_each_submit_gets_its_own_error() -> None:
    flush = Recorder()
    group: GroupCommit[str, str] = GroupCommit(flush)
    with pytest.raises(ValueError, match="bad"):
        group.submit("bad")
    assert group.submit("good") == "GOOD"


def test_a_failed_write_fails_every_member_and_the_next_one_still_runs() -> None:
    calls: list[list[str]] = []
    proceed = threading.Event()
    entered = threading.Event()

    def flush(items: Sequence[str]) -> list[str | BaseException]:
        calls.append(list(items))
        if len(calls) == 1:
            entered.set()
            proceed.wait(5)
            return ["A"]
        if len(calls) == 2:
            raise ConnectionError("database gone")
        return [item.upper() for item in items]

    group: GroupCommit[str, str] = GroupCommit(flush)
    leader, leader_thread = submit_in_threads(group, ["a"])
    assert entered.wait(5)
    followers, follower_threads = submit_in_threads(group, ["b", "c"])
    wait_until(lambda: group.waiting == 2)
    proceed.set()
    for thread in [*leader_thread, *follower_threads]:
        thread.join(5)
    assert leader == {"a": "A"}
    assert calls[1] in (["b", "c"], ["c", "b"])
    assert isinstance(followers["b"], ConnectionError)
    assert isinstance(followers["c"], ConnectionError)
    assert group.submit("d") == "D"  # not left stuck "writing"


def test_a_flush_answering_for_the_wrong_number_of_items_fails_loudly() -> None:
    group: GroupCommit[str, str] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="result count"):
        group.submit("a")
