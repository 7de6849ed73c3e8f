"""The benchmark's command line."""

from __future__ import annotations

import pytest

from bench.__main__ import parse_args


def test_the_bare_and_intake_rounds_are_set_apart_from_the_other_phases() -> None:
    options = parse_args(["--rounds", "7", "--round-duration", "2.5", "--duration", "4"])
    assert (options.rounds, options.round_duration, options.duration) == (7, 2.5, 4.0)


def test_by_default_five_rounds_of_six_seconds_and_ten_seconds_per_other_phase() -> None:
    options = parse_args([])
    assert (options.rounds, options.round_duration, options.duration) == (5, 6.0, 10.0)
    assert options.connections == 8
    assert not options.smoke
    assert options.against is None


def test_smoke_is_one_short_round_of_everything() -> None:
    options = parse_args(["--smoke"])
    assert options.smoke
    assert (options.rounds, options.round_duration, options.duration) == (1, 1.0, 1.0)
    assert options.burst <= 200


def test_against_takes_any_revision_git_knows() -> None:
    options = parse_args(["--against", "HEAD~1", "--rounds", "3"])
    assert options.against == "HEAD~1"
    assert options.rounds == 3  # the same options apply to both sides


def test_against_an_unknown_revision_is_refused_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--against", "no-such-revision-0123"])
    assert exit_.value.code == 2
    assert "'no-such-revision-0123' is not a commit of this repository" in capsys.readouterr().err
