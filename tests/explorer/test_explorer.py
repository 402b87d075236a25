"""The schedule explorer: clean on the ring, catches every injected bug.

Every run here is deterministic (a fixed hypothesis seed, or a fixed step
list), so a failure reproduces with the same arguments.
"""

from __future__ import annotations

import pytest

from trio_gm.testing.explore import BUGS, DEFAULT_SCHEDULES, explore, main, run_schedule

#: A schedule that exercises joins, kills, a leave and confirmed broadcasts.
BUSY = [88, 4591, 82, 2050, 65, 177, 77, 4, 40, 50, 1, 93, 2, 3, 0, 97, 0, 0, 0, 0]


def test_a_few_hundred_schedules_find_no_violation() -> None:
    result = explore(schedules=300, seed=0, members=3)
    assert result.failure is None, result.failure.format()
    assert result.schedules == 300


def test_four_members() -> None:
    result = explore(schedules=60, seed=1, members=4)
    assert result.failure is None, result.failure.format()


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_injected_bug_is_caught(bug: str) -> None:
    result = explore(schedules=DEFAULT_SCHEDULES, seed=0, bug=bug, shrink=False)
    assert result.failure is not None, f"{bug} went unnoticed in {result.schedules} schedules"
    assert result.failure.violations


def test_a_caught_bug_shrinks_to_a_short_schedule() -> None:
    result = explore(schedules=DEFAULT_SCHEDULES, seed=0, bug="acks-before-pubs")
    assert result.failure is not None
    assert result.failure.used <= 5
    text = result.failure.format()
    assert "VIOLATION" in text
    assert "broadcast" in text


def test_left_down_overtaking_is_reported_as_such() -> None:
    report = run_schedule([0, 0, 4093, 0, 40], bug="left-down-overtakes")
    assert report.violations == [
        "m2 handles the DOWN of its left m1 before that left's last message, "
        "which was delivered to it first"
    ]


def test_a_schedule_replays_identically() -> None:
    first = run_schedule(BUSY)
    second = run_schedule(BUSY)
    assert first.violations == second.violations == []
    assert first.trace == second.trace
    assert any(line.startswith("join") for line in first.trace)
    assert any(line.startswith("kill") for line in first.trace)


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--schedules", "20", "--seed", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "20 schedules, 0 violations"
    assert main(["--list-bugs"]) == 0
    assert capsys.readouterr().out.split() == sorted(BUGS)


def test_command_line_reports_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--schedules", "50", "--inject-bug", "acks-before-pubs"]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION" in out
    assert "--replay" in out
    assert out.splitlines()[-1].endswith("violations")


# -- real defects the explorer found in the ring, now fixed --------------------


def test_alias_ack_lost_is_fixed() -> None:
    """A joiner copies its left's alias entry (pending empty, last_ack behind).

    After a death its catch-up used to reset the heir's alias last_ack, and
    the acks lost with the dead member never came again: the dead alias was
    never erased. Fixed in ``members.catchup_entries``.
    """
    steps = [2706, 3361, 6384, 1044, 5250, 1015, 2047, 2928, 6235, 5906, 3869]
    steps += [3616, 1423, 5629, 2900, 3503, 3574, 3359, 2987, 4784, 864, 719]
    report = run_schedule(steps)
    assert report.violations == [], report.format()
    assert any(line.startswith("join") for line in report.trace)
    assert any(line.startswith("kill") for line in report.trace)


def test_alone_keeps_state_is_fixed() -> None:
    """A member left alone by a view change other than its own DOWN.

    Its DOWNs had been demonitored, so it used to keep pending entries
    nobody would acknowledge. Fixed in ``MemberActor._change_view``.
    """
    steps = [1083, 1276, 609, 4745, 1162, 5542, 1771, 3965, 6286, 2748, 2990, 2394]
    steps += [1308, 1274, 3127, 3602, 3323, 965]
    report = run_schedule(steps)
    assert report.violations == [], report.format()


def test_orphan_join_is_fixed() -> None:
    """The left commits a join and dies before its catch-up.

    The joiner used to adopt its new left's state as history and miss the
    messages published after it joined. Fixed in ``MemberActor._join``: when
    the call to the left fails and the store shows the joiner recorded, the
    joiner records itself dead and raises ``OrphanedJoin``; ``open_member``
    then joins again under a new id.
    """
    report = run_schedule([188, 188, 440, 0, 0, 0, 0, 0, 0, 0, 0, 65, 182])
    assert report.violations == [], report.format()
    assert any(line.startswith("join") for line in report.trace)


# -- real defects the explorer found with 5 members, now fixed -----------------


def test_orphan_heir_erasing_early_is_fixed() -> None:
    # 5 members; m2 publishes 0..2, they reach m0 (m2's right); m5 joins
    # right of m2, which commits the join and dies before replying; m0 dies.
    # m5, an orphan and m2's heir, takes m4's catch-up (m4 had not handled
    # m2's publications yet) as its first state, finds m2 with nothing
    # pending and erases it; m2's 0..2, pending at m3, m1 and m4, then reach
    # m5 from m4 and are dropped there: they are never acknowledged.
    report = run_schedule([200, 0, 488, 100, 488, 82, 782], members=5)
    assert report.violations == [], report.format()


def test_joiner_first_state_from_a_later_left_is_fixed() -> None:
    # 5 members; m4 publishes 0..1, which go round by m2; m4 leaves; m5
    # joins right of m2, which records m4 dead and m5, replies, and leaves.
    # m5 handles its call's reply after m1 (its left in the view it reads)
    # sent it a catch-up without m4's publications: that is its first state,
    # m2's catch-up is dropped as a stray, and m5 erases m2 and m4 at once;
    # m4's 0..1, pending at m0, m3 and m1, are never acknowledged.
    steps = [400, 0, 0, 188, 493, 840, 0, 3050, 0, 950, 4793, 0, 6040, 50]
    report = run_schedule(steps, members=5)
    assert report.violations == [], report.format()
