"""The explorer's shortcuts agree with the straightforward runs they replace.

* the well-formedness check after a step rechecks only the publishers
  whose state or in-flight messages the step changed
  (``_checks.changed``); with ``CROSS_CHECK`` the straightforward check
  of every publisher runs too and any difference raises;
* a schedule starts from a pickled copy of the settled initial members
  (``settled_harness``), not from a settle of its own;
* ``explore`` runs untraced and replays a failing schedule traced.
"""

from __future__ import annotations

import random

import pytest

from trio_gm.testing.explore import BUGS, Harness, ScheduleReport, _checks, explore
from trio_gm.testing.explore._driver import MAX_STEPS, draw_schedule
from trio_gm.testing.explore._harness import run_schedule


def _schedules(seed: int, count: int) -> list[tuple[int, list[int]]]:
    rng = random.Random(seed)
    return [draw_schedule(rng, (3, 4, 5), MAX_STEPS) for _ in range(count)]


@pytest.mark.parametrize("bug", [None, *sorted(b for b in BUGS if b)])
def test_the_fast_check_finds_what_the_straightforward_one_does(
    bug: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 100 clean schedules and 40 for each injected bug (failing or not: each
    # runs to its first violation), both checks after every step.
    monkeypatch.setattr(_checks, "CROSS_CHECK", True)
    count = 100 if bug is None else 40
    failed = 0
    for size, steps in _schedules(17 if bug is None else 5, count):
        report = run_schedule(steps, members=size, bug=bug, trace=False)
        failed += bool(report.violations)
    if bug is None:
        assert failed == 0


def test_the_cross_check_notices_a_difference(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fast check that forgets every publisher (as a wrong skip would).
    monkeypatch.setattr(_checks, "CROSS_CHECK", True)
    monkeypatch.setattr(_checks, "changed", lambda h: set())
    schedules = _schedules(5, 200)

    def run_all() -> None:
        for size, steps in schedules:
            run_schedule(steps, members=size, bug="skip-catchup-after-death", trace=False)

    with pytest.raises(AssertionError, match="the fast check found"):
        run_all()


@pytest.mark.parametrize("bug", [None, "acks-before-pubs", "alone-keeps-state"])
def test_a_settled_copy_runs_as_a_fresh_settle(bug: str | None) -> None:
    for size, steps in _schedules(3, 60):
        copied = run_schedule(steps, members=size, bug=bug, trace=True)
        fresh = ScheduleReport(list(steps), size, bug)
        harness = Harness(members=size, bug=bug)
        harness.main(steps, fresh)
        assert copied.trace == harness.trace
        assert copied.violations == harness.violations
        assert copied.used == fresh.used
        assert copied.deliveries == harness.deliveries


def test_a_failure_found_untraced_is_reported_traced() -> None:
    result = explore(schedules=100, seed=0, bug="acks-before-pubs", shrink=False)
    assert result.failure is not None
    assert result.failure.trace
    assert any(line.startswith("| ") for line in result.failure.trace)
