"""The soak test (trio_gm.testing.soak): a short run, and proof it can fail."""

from __future__ import annotations

import pytest

import trio_gm
from trio_gm.testing.postgres import PostgresServer
from trio_gm.testing.soak import SoakMember, SoakReport, postgres_outages, run_soak


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


@pytest.mark.postgres
async def test_soak_over_tcp_nodes_with_store_outages(private_postgres: PostgresServer) -> None:
    # Kills, restarts and stops of PostgreSQL beside the joins, leaves and
    # kills of members: no member may stop for an outage shorter than the
    # timeout, and every guarantee holds.
    async with trio_gm.open_store(
        private_postgres.url, connect_timeout=2, outage_timeout=60
    ) as store:
        await store.create_tables()
        report = await run_soak(
            store,
            seconds=6.0,
            members=4,
            seed=3,
            nodes=3,
            change_every=0.3,
            min_changes=8,
            outage=postgres_outages(private_postgres, longest=1.5),
            outage_every=1.0,
        )
    assert report.violations == []
    assert len(report.outages) >= 2, report.outages
    assert report.kills + report.leaves > 0
    assert report.delivered > 1000
