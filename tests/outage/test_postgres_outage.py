"""PostgreSQL killed, restarted or stopped under a flooding group of TCP nodes.

Each test runs its own server (``private_postgres``, never the shared one)
and three nodes in this process, each with its own store and one member,
talking over TCP. While they flood, the server goes away:

* SIGKILL of the postmaster, started again 3 s later;
* ``pg_ctl restart -m immediate`` (crash recovery, well under a second);
* ``pg_ctl stop`` for 3 s, during which a member is killed;
* away for longer than the outage timeout.

In the first three nobody stops, confirmed broadcasts keep returning while
the server is down (except while a dead member breaks the ring), the killed
member is reported dead once the server is back, and afterwards every
survivor holds every survivor's messages, in order, with no gap. In the
last the members stop with ``StoreUnavailable``, URL password masked.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio

import trio_gm
from tests.outage.flood import (
    Flooder,
    Recorder,
    check_delivery,
    confirms_after,
    flooding,
    full_ring,
    until,
)
from trio_gm.testing.postgres import PostgresServer

pytestmark = pytest.mark.postgres

#: Long enough that no test's outage reaches it, except the one that means to.
PATIENT = 60.0


@contextlib.asynccontextmanager
async def tcp_group(
    url: str, *, outage_timeout: float, nodes: int = 3
) -> AsyncIterator[tuple[list[trio_gm.GroupStore], list[Flooder]]]:
    """``nodes`` TCP nodes, each with its own store and one member of group "g"."""
    async with contextlib.AsyncExitStack() as stack:
        stores: list[trio_gm.GroupStore] = []
        flooders: list[Flooder] = []
        for index in range(nodes):
            store = await stack.enter_async_context(
                trio_gm.open_store(
                    url, connect_timeout=2, lock_timeout=0.5, outage_timeout=outage_timeout
                )
            )
            if index == 0:
                await store.create_tables()
            stores.append(store)
            node = await stack.enter_async_context(
                trio_gm.open_node(
                    store, listen="127.0.0.1:0", cookie="outage-test", heartbeat_interval=2
                )
            )
            recorder = Recorder()
            member = await stack.enter_async_context(node.open_member("g", recorder))
            flooders.append(Flooder(member, recorder))
        await full_ring(flooders)
        yield stores, flooders


async def _assert_outage_seen(stores: list[trio_gm.GroupStore]) -> None:
    """Every store met the outage (so the group really ran without it), and it ends.

    (A membership check still backing off when the store came back ends it
    at its next attempt.)
    """
    await until(
        lambda: all(store.statistics().outages >= 1 for store in stores),
        "every store to meet the outage (its membership checks go on)",
    )
    await until(
        lambda: all(store.statistics().unavailable_for == 0.0 for store in stores),
        "every store to see the end of the outage",
    )


async def _confirmed_while_down(flooders: list[Flooder], down: float, seconds: float) -> None:
    """The server stays down ``seconds``; every member's confirmed broadcasts return meanwhile."""
    await trio.sleep(seconds)
    up = trio.current_time()
    for flooder in flooders:
        during = [t for t in flooder.confirmed_at if down < t < up]
        assert during, (
            f"{flooder.member.id}: no confirmed broadcast returned while the store was down"
        )
        assert flooder.member.alive


async def test_postmaster_sigkill_then_restart_3s_later_loses_nothing(
    private_postgres: PostgresServer,
) -> None:
    async with tcp_group(private_postgres.url, outage_timeout=PATIENT) as (stores, flooders):
        async with flooding(flooders):
            await confirms_after(flooders, 0.0)
            await private_postgres.kill_async()
            await _confirmed_while_down(flooders, trio.current_time(), 3.0)
            await private_postgres.start_async()
            await confirms_after(flooders, trio.current_time(), count=2)
        for flooder in flooders:
            await flooder.finish()
        check_delivery(flooders)
        await _assert_outage_seen(stores)
        assert all(f.recorder.reason is None for f in flooders)


async def test_restart_immediate_loses_nothing(private_postgres: PostgresServer) -> None:
    async with tcp_group(private_postgres.url, outage_timeout=PATIENT) as (stores, flooders):
        async with flooding(flooders):
            await confirms_after(flooders, 0.0)
            await private_postgres.restart_async(mode="immediate")
            await confirms_after(flooders, trio.current_time(), count=2)
            # Each store's pooled connections died with the restart: the next
            # membership check met that, as an outage.
            await _assert_outage_seen(stores)
        for flooder in flooders:
            await flooder.finish()
        check_delivery(flooders)
        assert all(f.recorder.reason is None for f in flooders)


async def test_a_member_killed_during_a_3s_stop_is_recorded_dead_once_the_store_is_back(
    private_postgres: PostgresServer,
) -> None:
    async with tcp_group(private_postgres.url, outage_timeout=PATIENT) as (stores, flooders):
        victim, survivors = flooders[1], [flooders[0], flooders[2]]
        async with flooding(flooders):
            await confirms_after(flooders, 0.0)
            await private_postgres.stop_async(mode="fast")
            victim.member.kill()
            await trio.sleep(3.0)
            # Nobody could record the death: the ring waits, nobody stopped.
            assert all(f.member.alive for f in survivors)
            assert all(victim.member.id not in f.recorder.deaths for f in survivors)
            await private_postgres.start_async()
            await confirms_after(survivors, trio.current_time(), count=2)
        for flooder in survivors:
            await flooder.finish()
        check_delivery(survivors, dead=[victim])
        await _assert_outage_seen([stores[0], stores[2]])


async def test_an_outage_longer_than_the_timeout_stops_members_with_store_unavailable(
    private_postgres: PostgresServer,
) -> None:
    url = private_postgres.url.replace("postgres@", "postgres:hunter2@", 1)
    assert "hunter2" in url  # trust authentication ignores it; messages must not show it
    async with tcp_group(url, outage_timeout=2.0) as (_stores, flooders):
        async with flooding(flooders):
            await confirms_after(flooders, 0.0)
            await private_postgres.kill_async()
            with trio.fail_after(60):
                for flooder in flooders:
                    await flooder.recorder.terminated.wait()
        for flooder in flooders:
            reason = flooder.recorder.reason
            assert isinstance(reason, trio_gm.StoreUnavailable), reason
            message = str(reason)
            assert "hunter2" not in message
            assert "***" in message
            assert "unreachable for" in message
            assert reason.unavailable_for is not None
            assert reason.unavailable_for >= 2.0
            with pytest.raises(trio_gm.MemberStopped) as info:
                await flooder.member.info()
            assert info.value.__cause__ is reason
        # Let the blocks leave with the server back (leaving needs no store).
        await private_postgres.start_async()
