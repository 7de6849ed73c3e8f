"""``python -m bench``: run the benchmark, print the table, write bench/results/<date>.json.

With ``--against REV`` it also runs REV's tree (checked out in a git worktree), alternating with
this one round by round in the same run, and ends with the two side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import stack
from bench.run import (
    Bench,
    BenchmarkFailure,
    Options,
    Report,
    git_revision,
    side_by_side,
    table,
    write_results,
)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--duration", type=float, default=Options.duration, help="seconds per other load phase"
    )
    parser.add_argument("--connections", type=int, default=Options.connections)
    parser.add_argument(
        "--rounds", type=int, default=Options.rounds, help="alternating bare/intake rounds"
    )
    parser.add_argument(
        "--round-duration", type=float, default=Options.round_duration, help="seconds per round"
    )
    parser.add_argument("--web-concurrency", type=int, default=Options.web_concurrency)
    parser.add_argument("--worker-concurrency", type=int, default=Options.worker_concurrency)
    parser.add_argument(
        "--burst", type=int, default=10_000, help="events in the burst phase (0: skip it)"
    )
    parser.add_argument("--output", type=Path, default=None, help="where to write the JSON")
    parser.add_argument(
        "--smoke", action="store_true", help="a few seconds of everything (CI): no figures"
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        default=None,
        help="also run REV's tree (a commit, branch or tag), alternating with this one round by"
        " round, same options; the JSON gains 'against' (REV's phases) and the comparison",
    )
    args = parser.parse_args(argv)
    if args.against is not None:
        try:
            stack.resolve_revision(args.against)
        except ValueError as exc:
            parser.error(str(exc))
    options = Options(
        duration=args.duration,
        connections=args.connections,
        web_concurrency=args.web_concurrency,
        worker_concurrency=args.worker_concurrency,
        burst=args.burst,
        rounds=args.rounds,
        round_duration=args.round_duration,
        output=args.output,
        against=args.against,
    )
    if args.smoke:
        options.duration, options.warmup, options.burst = 1.0, 0.2, min(args.burst, 200)
        options.rounds, options.round_duration = 1, 1.0
        options.smoke = True
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    bench = Bench(options)
    try:
        report = bench.run()
    except BenchmarkFailure as exc:
        print(f"BENCHMARK FAILED: {exc}", file=sys.stderr)
        write_results(bench.report, options.output)
        return 1
    report.machine["revision"] = git_revision()
    if report.against is None:
        print(table(report))
    else:
        against = report.against
        other = Report(
            report.started_at,
            report.machine,
            report.options,
            against["phases"],
            against["ratios"],
            against["checks"],
        )
        print(f"current tree ({report.machine['revision']})\n{table(report)}\n")
        print(f"against {against['revision']}\n{table(other)}\n")
        print(side_by_side(report))
    path = write_results(report, options.output)
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
