"""Drive the harness: random schedules, shrunk failures, a CLI."""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
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
) -> ExploreResult:
    """Run ``schedules`` random schedules; on a violation, shrink it.

    ``members``: the group's size at the start, or sizes to draw from for
    each schedule. Deterministic for a given ``seed``: the schedules come
    from :func:`draw_schedule` with a generator seeded by it, whatever else
    runs in the process (hypothesis' draws depended on more than its seed).
    """
    sizes = [members] if isinstance(members, int) else list(members)
    rng = random.Random(seed)
    result = ExploreResult(0, 0.0)
    started = time.perf_counter()
    for _ in range(schedules):
        size, steps = draw_schedule(rng, sizes, max_steps)
        result.schedules += 1
        report = run_schedule(steps, members=size, bug=bug, trace=False)
        if report.violations:
            # Runs are deterministic: the same schedule again, traced, for the
            # report (formatting a trace is a tenth of an untraced run).
            report = run_schedule(steps, members=size, bug=bug, trace=True)
            result.failure = shrink_schedule(report) if shrink else report
            break
    result.seconds = time.perf_counter() - started
    return result


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
    args = parser.parse_args(argv)
    if args.list_bugs:
        for name in sorted(b for b in BUGS if b):
            print(name)
        return 0
    if args.schedules < 1:
        parser.error("--schedules must be >= 1")
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
