"""Ports of RabbitMQ's unit_gm_SUITE: the contract, member by member.

Each test ends by asserting that no callback happened that it did not
expect (the suite's final ``receive X -> throw({unexpected_message, X})``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_gm
from tests.gm_helpers import Events, Reporter

GROUP = "unit_gm"


@pytest.fixture(params=["one node", "two nodes over TCP"])
def spread(request: pytest.FixtureRequest) -> bool:
    """Whether the test's members live on nodes of their own, talking over TCP."""
    return bool(request.param != "one node")


@asynccontextmanager
async def open_nodes(
    store: trio_gm.GroupStore, spread: bool
) -> AsyncIterator[tuple[trio_gm.Node, trio_gm.Node]]:
    """Two nodes on loopback with ``spread``, else the same node twice."""
    if not spread:
        async with trio_gm.open_node(store) as node:
            yield node, node
        return
    async with (
        trio_gm.open_node(store, listen="127.0.0.1:0", cookie="unit") as first,
        trio_gm.open_node(store, listen="127.0.0.1:0", cookie="unit") as second,
    ):
        yield first, second


@pytest.fixture
async def two_members(
    gm_store: trio_gm.GroupStore, events: Events, spread: bool
) -> AsyncIterator[tuple[trio_gm.Node, trio_gm.Member, trio_gm.Member]]:
    """gm's with_two_members: a and b join; both leave and are seen to go."""
    async with open_nodes(gm_store, spread) as (node, other):
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            await events.expect("joined", "a", [a.id])
            async with other.open_member(GROUP, Reporter(events), "b") as b:
                await events.expect("joined", "b", sorted([a.id, b.id]))
                await events.expect("members_changed", "a", [b.id], [])
                yield node, a, b
                await a.leave()
                await events.expect("members_changed", "b", [], [a.id])
                await events.expect("terminate", "a", "normal")
            await events.expect("terminate", "b", "normal")
    events.assert_empty()


Members = tuple[trio_gm.Node, trio_gm.Member, trio_gm.Member]


async def test_join_leave(two_members: Members) -> None:
    pass


BroadcastFn = Callable[[trio_gm.Member, Any], Awaitable[None]]


async def _broadcast(member: trio_gm.Member, msg: Any) -> None:
    await member.broadcast(msg)


async def _confirmed(member: trio_gm.Member, msg: Any) -> None:
    await member.confirmed_broadcast(msg)


async def _magic(events: Events, a: trio_gm.Member, fn: BroadcastFn, msg: Any) -> None:
    await fn(a, msg)
    await events.expect("msg", "a", a.id, msg)
    await events.expect("msg", "b", a.id, msg)


@pytest.mark.parametrize("fn", [_broadcast, _confirmed], ids=["broadcast", "confirmed"])
async def test_broadcast(two_members: Members, events: Events, fn: BroadcastFn) -> None:
    _node, a, _b = two_members
    await _magic(events, a, fn, "magic_message")


async def test_confirmed_broadcast_returns_after_every_member_has_it(
    two_members: Members, events: Events
) -> None:
    _node, a, _b = two_members
    await a.confirmed_broadcast("magic")
    # Both deliveries happened before confirmed_broadcast returned.
    assert ("msg", "b", a.id, "magic") in events.log
    assert ("msg", "a", a.id, "magic") in events.log
    events.log.clear()


async def test_member_death(two_members: Members, events: Events) -> None:
    node, a, b = two_members
    async with node.open_member(GROUP, Reporter(events), "c") as c:
        await events.expect("joined", "c", sorted([a.id, b.id, c.id]))
        await events.expect("members_changed", "a", [c.id], [])
        await events.expect("members_changed", "b", [c.id], [])
        c.kill()
        # Deaths are reported once the dead member's alias is erased, which
        # takes ring traffic.
        await _magic(events, a, _confirmed, "one")
        await _magic(events, a, _confirmed, "two")
        await events.expect("members_changed", "a", [], [c.id])
        await events.expect("members_changed", "b", [], [c.id])
    assert not c.alive


async def test_receive_in_order(two_members: Members, events: Events) -> None:
    _node, a, b = two_members
    numbers = list(range(1, 1001))
    for n in numbers:
        await a.broadcast(n)
        await b.broadcast(n)
    for receiver in ("a", "b"):
        for sender in (a.id, b.id):
            for n in numbers:
                got = await events.receive(
                    lambda e, r=receiver, s=sender: e[0] == "msg" and e[1] == r and e[2] == s
                )
                assert got[3] == n, f"{receiver} got {got[3]} from {sender}, expected {n}"


async def test_unexpected_msg(two_members: Members) -> None:
    node, a, _b = two_members
    node.actors.send(a.id, ("late reply", object()))
    node.actors.cast(a.id, "not a ring message")
    await trio.testing.wait_all_tasks_blocked()
    assert a.alive
    assert (await a.group_members()) != []


async def test_down_in_members_change(sqlite_store: trio_gm.GroupStore, events: Events) -> None:
    """The group is deleted while a member handles its neighbour's DOWN: it
    stops with ``shutdown`` instead of crashing (RabbitMQ issue 953)."""
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            await events.expect("joined", "a", [a.id])
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                await events.expect("joined", "b", sorted([a.id, b.id]))
                await events.expect("members_changed", "a", [b.id], [])
                await sqlite_store.forget_group(GROUP)
                await b.leave()
                await events.expect("terminate", "b", "normal")
                await events.expect("terminate", "a", "shutdown")
                await trio.testing.wait_all_tasks_blocked()
                assert not a.alive
                with pytest.raises(trio_gm.MemberStopped, match="has stopped"):
                    await a.broadcast("too late")
    events.assert_empty()
