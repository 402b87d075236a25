"""The soak test (trio_gm.testing.soak): a short run, and proof it can fail."""

from __future__ import annotations

import pytest

import trio_gm
from trio_gm.testing.soak import SoakMember, SoakReport, run_soak


@pytest.mark.parametrize("seed", [1, 2])
async def test_short_soak_with_kills_leaves_and_joins(
    sqlite_store: trio_gm.GroupStore, seed: int
) -> None:
    # At least 12 changes, drawn from the seed: both seeds draw kills and leaves.
    report = await run_soak(
        sqlite_store, seconds=1.0, members=4, seed=seed, change_every=0.05, min_changes=12
    )
    assert report.violations == []
    assert report.kills > 0
    assert report.leaves > 0
    assert report.joins > 4
    assert report.delivered > 1000


def test_the_checker_flags_every_kind_of_violation() -> None:
    report = SoakReport()
    checker = SoakMember(report, "m")
    me, other, late, ghost = (trio_gm.MemberId("n", i) for i in range(4))
    checker.me = me
    checker.joined(None, [me, other])
    checker.handle_msg(None, other, 5)  # first seen from a running sender: fine
    checker.handle_msg(None, other, 6)
    assert report.violations == []
    checker.handle_msg(None, other, 8)
    checker.handle_msg(None, other, 8)
    checker.handle_msg(None, late, 0)
    checker.members_changed(None, [], [ghost])
    checker.members_changed(None, [], [other])
    checker.handle_msg(None, other, 9)
    checker.handle_terminate(None, "shutdown")
    kinds = [v.split(": ", 1)[1].split(" ")[0] for v in report.violations]
    assert kinds == ["gap", "duplicate", "message", "death", "message", "terminated"]
    assert "before it was announced" in report.violations[2]
    assert "after its death" in report.violations[4]
