"""Members on simulated hosts, under partitions, kills and pauses (issue 12, section 3).

Every member is a ``trio-gm member --json`` process inside a simulated host
(:mod:`trio_gm.testing.netns`), listening on ``0.0.0.0:0`` and advertising
its host's address, with a 1 s heartbeat. The store is a private PostgreSQL
server on a host of its own, ``db``, so that a host can lose the store; the
first two scenarios also run on one SQLite file on the shared filesystem
(the hosts share this machine's disk: one real host).

Messages are numbered (``flood N`` broadcasts 0 .. N-1) and each phase ends
with a ``confirm`` per member, the fence: once it returns, every member
holds it and, by per-sender order, everything its sender broadcast before.
The checks of :mod:`tests.netns.hosts` then run over every member's log:
per-sender order with no gap and no duplicate, nothing delivered from a
member after its death was reported, and what was confirmed before a cut
held by every member still alive.

No test sleeps. The durations that are part of an outcome are bounds that
fail only a member that does not stop at all: a cut pair decides within a
few heartbeats (1.0 to 1.3 s here), which ``DECIDED_WITHIN`` bounds at 20;
the pause of the SIGSTOP scenario lasts until the others have recorded the
paused member dead, more than a heartbeat by construction.
docs/partitions.md tabulates the outcomes.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import trio_gm
from tests.conftest import MakeNetwork, MakePostgres
from tests.netns.hosts import (
    GROUP,
    HEARTBEAT,
    HostMember,
    assert_agree_on,
    assert_held_by,
    assert_nothing_after_death,
    assert_sender_order,
    assert_stopped_by_group,
    assert_stopped_by_store,
    check_all,
    confirm_all,
    confirmed_so_far,
    deaths_reported,
    exited_first,
    flood_all,
    host_group,
    phase,
)
from trio_gm.testing.netns import Host, SimulatedNetwork
from trio_gm.testing.postgres import PostgresServer

pytestmark = pytest.mark.slow

#: Seconds within which a cut pair has decided (one side stopped): a few
#: heartbeats in practice; this bound only fails a member that never stops.
DECIDED_WITHIN = 20 * HEARTBEAT
#: The store outage timeout of members that are to lose the store for good.
SHORT_OUTAGE = 5.0
#: The store's connect_timeout (the default), which bounds a silent query too.
CONNECT_TIMEOUT = 5.0
#: Messages each member floods per phase.
FLOOD = 200
#: How far into an endless flood its sender is killed, at least.
MID = 50


@attrs.frozen
class Hosts:
    """Hosts a, b, c, the store every member uses, and its host (PostgreSQL only)."""

    net: SimulatedNetwork
    a: Host
    b: Host
    c: Host
    store_url: str
    db: Host | None = None
    pg: PostgresServer | None = None


def _postgres_hosts(network: MakeNetwork, make_postgres: MakePostgres) -> Hosts:
    net = network(["a", "b", "c", "db"])
    a, b, c, db = net.hosts
    pg = make_postgres(db.address, netns=db.netns)
    return Hosts(net, a, b, c, pg.url, db, pg)


@pytest.fixture
def pg_hosts(simulated_network: MakeNetwork, make_private_postgres: MakePostgres) -> Hosts:
    """Hosts a, b, c and db, with a private PostgreSQL server on db as the store."""
    return _postgres_hosts(simulated_network, make_private_postgres)


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def any_hosts(
    request: pytest.FixtureRequest, simulated_network: MakeNetwork, tmp_path: Path
) -> Hosts:
    """:func:`pg_hosts`, or hosts a, b, c on one SQLite file on the shared filesystem."""
    if request.param == "postgresql":
        return _postgres_hosts(simulated_network, request.getfixturevalue("make_private_postgres"))
    net = simulated_network(["a", "b", "c"])
    a, b, c = net.hosts
    return Hosts(net, a, b, c, f"sqlite:///{tmp_path / 'gm.db'}")


# ------------------------------------------------------------------ helpers


async def stored_alive(hosts: Hosts) -> list[str]:
    """The ids of the members the store lists alive, read from outside the network."""
    url = hosts.pg.socket_url if hosts.pg is not None else hosts.store_url
    async with trio_gm.open_store(url) as store:
        group = await store.read_group(GROUP)
    assert group is not None
    return [str(member) for member in group.alive]


def message_from(sender: HostMember, msg: Any, event: dict[str, Any]) -> bool:
    """Whether ``event`` delivers ``msg`` from ``sender`` (``functools.partial`` it)."""
    return bool(event["event"] == "msg" and event["sender"] == sender.id and event["msg"] == msg)


async def one_of_a_cut_pair_stops(hosts: Hosts, cut: Callable[[], Awaitable[None]]) -> None:
    """A and B lose each other through ``cut`` (C and the store stay in reach of both).

    One of a and b stops with ``shutdown`` within a few heartbeats: each
    records the other dead, and the store lets one of them win. The other
    and c go on with no gap, record the death, and hold every message
    confirmed before the cut; the messages flooded into the cut break no
    guarantee. After the heal, a new member on the stopped one's host joins.
    """
    h = hosts
    async with host_group(h.net, h.store_url) as group:
        a, b, c = await group.start_all([("a", h.a), ("b", h.b), ("c", h.c)])
        await phase([a, b, c], "before", FLOOD)
        confirmed = confirmed_so_far([a, b, c])

        await cut()
        await flood_all([a, b, c], FLOOD)  # into the cut
        stopped = await exited_first(group, [a, b], DECIDED_WITHIN)
        assert_stopped_by_group(stopped, await group.exit_status(stopped))
        kept = b if stopped is a else a
        survivors = [kept, c]
        await confirm_all(survivors, "during")
        await deaths_reported(survivors, [stopped])
        assert kept.running
        assert stopped.id not in await stored_alive(h)
        assert_held_by(survivors, confirmed)
        assert_agree_on(survivors, stopped)
        check_all([a, b, c])

        await h.net.heal_all_async()
        again = await group.start(f"{stopped.name}2", stopped.host)
        everyone = [*survivors, again]
        await phase(everyone, "after", FLOOD)
        # A birth, like a death, is reported with the next activity that
        # carries the new view: the phase's.
        for survivor in survivors:
            await survivor.saw_birth(again)
        check_all([a, b, c, again])
        assert_sender_order(everyone, everyone, complete=True)
        for member in everyone:
            await group.quit(member)


# ---------------------------------------------------------------- scenarios


async def test_three_hosts_all_broadcasting_every_member_gets_everything_in_order(
    any_hosts: Hosts,
) -> None:
    h = any_hosts
    async with host_group(h.net, h.store_url) as group:
        members = await group.start_all(
            [(f"{host.name}{i}", host) for host in (h.a, h.b, h.c) for i in (1, 2)]
        )
        await phase(members, "done", FLOOD)
        assert_sender_order(members, members, complete=True)
        assert_nothing_after_death(members)
        assert [m.name for m in members if any(e.get("deaths") for e in m.events)] == []
        for member in members:
            await group.quit(member)


async def test_partial_partition_a_b_one_stops_the_rest_go_on_and_it_rejoins(
    any_hosts: Hosts,
) -> None:
    h = any_hosts
    await one_of_a_cut_pair_stops(h, functools.partial(h.net.cut_async, h.a, h.b))


@pytest.mark.postgres
async def test_one_way_cut_a_to_b_one_stops_the_rest_go_on_and_it_rejoins(
    pg_hosts: Hosts,
) -> None:
    # b drops a's packets, a gets b's: b finds a silent a heartbeat after the
    # cut and records it dead; a, hearing b all along, learns that from the
    # store (its membership check) and stops. For b to stop instead, a would
    # have to record b dead first (had its writes to b stalled for a
    # heartbeat, say): a has stopped in every run so far, but what is
    # asserted is the outcome gm promises, one of them.
    h = pg_hosts
    await one_of_a_cut_pair_stops(h, functools.partial(h.net.cut_one_way_async, h.a, h.b))


@pytest.mark.postgres
async def test_an_isolated_host_s_members_stop_the_majority_goes_on_and_fresh_ones_rejoin(
    pg_hosts: Hosts,
) -> None:
    h = pg_hosts
    outage = ["--store-outage-timeout", f"{SHORT_OUTAGE:g}"]
    async with host_group(h.net, h.store_url) as group:
        # Two members on A: they still reach each other, but not the rest.
        a1, a2, b, c = await group.start_all(
            [("a1", h.a), ("a2", h.a), ("b", h.b), ("c", h.c)], *outage
        )
        await phase([a1, a2, b, c], "before", FLOOD)
        confirmed = confirmed_so_far([a1, a2, b, c])

        await h.net.isolate_async(h.a)  # from its peers and from the store
        await flood_all([a1, a2, b, c], FLOOD)
        await a1.send_confirmed("island-a1")  # can never return: b and c cannot have it
        majority = [b, c]
        await confirm_all(majority, "during")
        await deaths_reported(majority, [a1, a2])
        # A's members cannot learn that they were recorded dead: each stops
        # once the store it needs to record its lost neighbours has been
        # away for its outage timeout (a heartbeat, plus the store's
        # connect_timeout for its first silent query, plus the timeout).
        for member in (a1, a2):
            status = await group.exit_status(
                member, within=DECIDED_WITHIN + CONNECT_TIMEOUT + SHORT_OUTAGE
            )
            assert_stopped_by_store(member, status, SHORT_OUTAGE)
            assert any(e["event"] == "store_away" for e in member.events)
        assert not any(e.get("msg") == "island-a1" for e in a1.events if e["event"] == "confirmed")
        assert all(m.messages_from(a1.id)[-1:] != ["island-a1"] for m in majority)
        assert_held_by(majority, confirmed)
        assert_agree_on(majority, a1)
        assert_agree_on(majority, a2)
        check_all([a1, a2, b, c])

        await h.net.rejoin_async(h.a)
        fresh = await group.start_all([("a3", h.a), ("a4", h.a)], *outage)
        everyone = [*majority, *fresh]
        await phase(everyone, "after", FLOOD)
        for member in majority:
            for born in fresh:
                await member.saw_birth(born)
        check_all([a1, a2, b, c, *fresh])
        for member in everyone:
            await group.quit(member)


@pytest.mark.postgres
async def test_the_store_s_host_unreachable_for_less_than_the_timeout_stops_nothing(
    pg_hosts: Hosts,
) -> None:
    h = pg_hosts
    assert h.db is not None
    async with host_group(h.net, h.store_url) as group:
        members = await group.start_all(
            [("a", h.a), ("b", h.b), ("c", h.c)], "--store-outage-timeout", "30"
        )
        await phase(members, "before", FLOOD)

        await h.net.isolate_async(h.db)
        # The ring keeps delivering: confirms return while the store is
        # away, round after round, until every member has met the outage
        # (its membership check, which runs beside the ring, found the store
        # silent for connect_timeout).
        rounds = 0
        while not all(any(e["event"] == "store_away" for e in m.events) for m in members):
            await phase(members, f"cut{rounds}", 20)
            rounds += 1
        assert h.net.isolated == {"db"}
        await h.net.rejoin_async(h.db)
        for member in members:
            await member.expect(lambda e: e["event"] == "store_back")

        await phase(members, "after", FLOOD)
        assert_sender_order(members, members, complete=True)
        assert_nothing_after_death(members)
        assert [m.name for m in members if any(e.get("deaths") for e in m.events)] == []
        for member in members:
            await group.quit(member)


@pytest.mark.postgres
async def test_every_process_on_a_host_killed_mid_broadcast_survivors_agree_on_a_prefix(
    pg_hosts: Hosts,
) -> None:
    h = pg_hosts
    async with host_group(h.net, h.store_url) as group:
        a1, a2, b, c = await group.start_all([("a1", h.a), ("a2", h.a), ("b", h.b), ("c", h.c)])
        await phase([a1, a2, b, c], "before", FLOOD)
        survivors = [b, c]
        marks = {survivor: len(survivor.events) for survivor in survivors}
        for sender in (a1, a2):
            await sender.flood_forever()
        # Mid-broadcast: both are flooding, and both survivors have some of it.
        for survivor in survivors:
            for sender in (a1, a2):
                await survivor.expect(
                    functools.partial(message_from, sender, MID), after=marks[survivor]
                )
        await trio.to_thread.run_sync(h.a.signal_processes, signal.SIGKILL)
        for member in (a1, a2):
            assert await group.exit_status(member) == -signal.SIGKILL
        await confirm_all(survivors, "after")
        await deaths_reported(survivors, [a1, a2])
        for dead in (a1, a2):
            assert_agree_on(survivors, dead)
            assert len(b.messages_from(dead.id)) > FLOOD + 1 + MID
        check_all([a1, a2, b, c])
        for member in survivors:
            await group.quit(member)


@pytest.mark.postgres
async def test_a_host_paused_past_the_heartbeat_stops_and_nothing_comes_after_a_death(
    pg_hosts: Hosts,
) -> None:
    h = pg_hosts
    async with host_group(h.net, h.store_url) as group:
        a, b, c = await group.start_all([("a", h.a), ("b", h.b), ("c", h.c)])
        await phase([a, b, c], "before", FLOOD)
        await flood_all([a, b, c], FLOOD)  # some of it still on its way when a stops
        await trio.to_thread.run_sync(h.a.signal_processes, signal.SIGSTOP)
        others = [b, c]
        # The pause outlasts the heartbeat: the others record a dead.
        await confirm_all(others, "paused")
        await deaths_reported(others, [a])
        await trio.to_thread.run_sync(h.a.signal_processes, signal.SIGCONT)
        # Woken, a finds itself dead in the store, and stops.
        assert_stopped_by_group(a, await group.exit_status(a, within=DECIDED_WITHIN))
        await confirm_all(others, "after")
        check_all([a, b, c])
        assert_agree_on(others, a)
        for member in others:
            await group.quit(member)
