"""Drive the harness: random schedules, shrunk failures, a CLI."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Final

import attrs

from ._bugs import BUGS
from ._harness import STEP_MAX, ScheduleReport, run_schedule

#: Longest schedule drawn (steps before the drain).
MAX_STEPS = 60
#: Schedules the command explores by default; each injected bug must be
#: caught within this many.
DEFAULT_SCHEDULES = 5000
#: Members at the start of a schedule, drawn for each: some defects need 5.
DEFAULT_MEMBERS: Final = (3, 4, 5)
#: Schedules a worker process runs per task with ``jobs`` > 1 (about a
#: tenth of a second): small enough that a failure stops the run soon,
#: large enough that the hand-over costs little.
CHUNK: Final = 25


def default_jobs() -> int:
    """The CPUs this process may run on: the command line's default ``--jobs``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@attrs.define
class ExploreResult:
    """What :func:`explore` found."""

    #: Schedules run, shrinking included.
    schedules: int
    seconds: float
    #: The shrunk failing schedule, or None.
    failure: ScheduleReport | None = None


def draw_schedule(
    rng: random.Random, sizes: Sequence[int], max_steps: int
) -> tuple[int, list[int]]:
    """One schedule: a group size and 5 to ``max_steps`` step values.

    Biased as a property-based tester would be: short lists are likelier than
    long ones, and a third of the steps take option 0 (the first choice of
    their kind), so that the same link, member or transaction comes up again.
    """
    size = rng.choice(list(sizes))
    length = 5 + int((max_steps - 5) * rng.random() ** 2)
    steps = [
        rng.randrange(100) if rng.random() < 1 / 3 else rng.randrange(STEP_MAX + 1)
        for _ in range(length)
    ]
    return size, steps


def shrink_schedule(report: ScheduleReport, *, budget: int = 3000) -> ScheduleReport:
    """A shorter, simpler schedule that still breaks an invariant (greedy, deterministic).

    Cut to the steps used; then drop steps one at a time, last first, and
    lower values (to their kind's first option, then halving), keeping each
    change that still fails; until nothing more helps or ``budget`` runs.
    """
    best = report
    runs = 0

    def fails(steps: list[int]) -> ScheduleReport | None:
        nonlocal runs
        runs += 1
        candidate = run_schedule(steps, members=report.members, bug=report.bug, trace=False)
        if not candidate.violations:
            return None
        # (Deterministic: the same run again, traced, for the report.)
        return run_schedule(steps, members=report.members, bug=report.bug, trace=True)

    steps = list(best.steps[: best.used + 1])
    found = fails(steps)
    if found is not None:
        best = found
    else:
        steps = list(best.steps)
    changed = True
    while changed and runs < budget:
        changed = False
        for i in reversed(range(len(steps))):
            if runs >= budget or len(steps) <= 1:
                break
            if i >= len(steps):
                continue
            found = fails(steps[:i] + steps[i + 1 :])
            if found is not None:
                steps, best, changed = steps[:i] + steps[i + 1 :], found, True
        for i in range(len(steps)):
            for smaller in (steps[i] % 100, steps[i] // 2):
                if runs >= budget or smaller >= steps[i]:
                    continue
                trial = [*steps[:i], smaller, *steps[i + 1 :]]
                found = fails(trial)
                if found is not None:
                    steps, best, changed = trial, found, True
                    break
    return best


def explore(
    *,
    schedules: int = DEFAULT_SCHEDULES,
    seed: int = 0,
    members: int | Sequence[int] = DEFAULT_MEMBERS,
    bug: str | None = None,
    max_steps: int = MAX_STEPS,
    shrink: bool = True,
    jobs: int = 1,
) -> ExploreResult:
    """Run ``schedules`` random schedules; on a violation, shrink it.

    ``members``: the group's size at the start, or sizes to draw from for
    each schedule. Deterministic for a given ``seed``: the schedules come
    from :func:`draw_schedule` with a generator seeded by it, whatever else
    runs in the process (hypothesis' draws depended on more than its seed).

    ``jobs`` > 1 runs the schedules in that many worker processes. The
    schedules are drawn here, in the same order, and the failure reported is
    the first in that order, so the result is the same as with one job:
    ``schedules`` counts the schedules up to and including it.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    sizes = [members] if isinstance(members, int) else list(members)
    rng = random.Random(seed)
    drawn = (draw_schedule(rng, sizes, max_steps) for _ in range(schedules))
    result = ExploreResult(0, 0.0)
    started = time.perf_counter()
    failed: tuple[int, list[int]] | None = None
    if jobs == 1:
        for size, steps in drawn:
            result.schedules += 1
            if _fails(size, steps, bug):
                failed = size, steps
                break
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(jobs) as pool:
            tasks = ((bug, chunk) for chunk in _chunks(drawn, CHUNK))
            for ran, failure in pool.imap(_run_chunk, tasks):
                result.schedules += ran
                if failure is not None:
                    failed = failure
                    break
            # (Leaving the block terminates the workers still running.)
    if failed is not None:
        size, steps = failed
        # Runs are deterministic: the same schedule again, traced, for the
        # report (formatting a trace is a tenth of an untraced run).
        report = run_schedule(steps, members=size, bug=bug, trace=True)
        result.failure = shrink_schedule(report) if shrink else report
    result.seconds = time.perf_counter() - started
    return result


def _fails(size: int, steps: list[int], bug: str | None) -> bool:
    return bool(run_schedule(steps, members=size, bug=bug, trace=False).violations)


def _chunks(
    drawn: Iterator[tuple[int, list[int]]], size: int
) -> Iterator[list[tuple[int, list[int]]]]:
    chunk: list[tuple[int, list[int]]] = []
    for schedule in drawn:
        chunk.append(schedule)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run_chunk(
    task: tuple[str | None, list[tuple[int, list[int]]]],
) -> tuple[int, tuple[int, list[int]] | None]:
    """A worker's task: schedules run until the first that fails (and that one)."""
    bug, chunk = task
    for ran, (size, steps) in enumerate(chunk, 1):
        if _fails(size, steps, bug):
            return ran, (size, steps)
    return len(chunk), None


def _parse_steps(text: str) -> list[int]:
    steps = [int(part) for part in text.replace(",", " ").split()]
    for value in steps:
        if not 0 <= value <= STEP_MAX:
            raise argparse.ArgumentTypeError(f"step {value} is outside 0..{STEP_MAX}")
    return steps


def _parse_members(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--members takes a number or numbers like 3,4,5, got {text!r}"
        ) from None
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"--members must be numbers >= 1, got {text!r}")
    return sizes


def _replay_command(report: ScheduleReport) -> str:
    parts = ["python -m trio_gm.testing.explore", f"--members {report.members}"]
    if report.bug:
        parts.append(f"--inject-bug {report.bug}")
    parts.append(f"--replay {','.join(map(str, report.steps[: report.used + 1]))}")
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trio_gm.testing.explore",
        description=(
            "Explore schedules of a gm ring (every message, DOWN and store transaction "
            "held until a step delivers it) and check gm's invariants after every step."
        ),
    )
    parser.add_argument(
        "--schedules",
        type=int,
        default=DEFAULT_SCHEDULES,
        help=f"schedules to run (default {DEFAULT_SCHEDULES})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the schedules drawn (default 0)"
    )
    parser.add_argument(
        "--members",
        type=_parse_members,
        default=DEFAULT_MEMBERS,
        help="members at the start, or sizes to draw from, comma-separated (default 3,4,5)",
    )
    parser.add_argument(
        "--inject-bug", choices=sorted(b for b in BUGS if b), help="run a deliberately broken ring"
    )
    parser.add_argument("--list-bugs", action="store_true", help="list the injectable bugs")
    parser.add_argument(
        "--replay",
        type=_parse_steps,
        metavar="STEPS",
        help="run one schedule, given as comma-separated step values, and print its trace",
    )
    parser.add_argument("--no-shrink", action="store_true", help="report failures unshrunk")
    parser.add_argument(
        "--jobs",
        type=int,
        default=default_jobs(),
        help="worker processes running schedules (default: the CPUs available, here "
        f"{default_jobs()}); the result is the same for any number",
    )
    args = parser.parse_args(argv)
    if args.list_bugs:
        for name in sorted(b for b in BUGS if b):
            print(name)
        return 0
    if args.schedules < 1:
        parser.error("--schedules must be >= 1")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.replay is not None:
        if len(args.members) != 1:
            parser.error("--replay needs one --members size")
        report = run_schedule(args.replay, members=args.members[0], bug=args.inject_bug)
        print(report.format())
        print(f"1 schedules, {len(report.violations)} violations")
        return 1 if report.violations else 0

    result = explore(
        schedules=args.schedules,
        seed=args.seed,
        members=args.members,
        bug=args.inject_bug,
        shrink=not args.no_shrink,
        jobs=args.jobs,
    )
    rate = result.schedules / result.seconds if result.seconds else 0.0
    print(f"explored in {result.seconds:.1f}s ({rate:.1f} schedules/s)", file=sys.stderr)
    if result.failure is not None:
        print("shrunk failing schedule:")
        print(result.failure.format())
        print(f"replay: {_replay_command(result.failure)}")
        print(f"{result.schedules} schedules, {len(result.failure.violations)} violations")
        return 1
    print(f"{result.schedules} schedules, 0 violations")
    return 0
