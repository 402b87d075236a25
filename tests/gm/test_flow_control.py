"""Flow control: ``broadcast_nowait`` and a ``broadcast`` waiting for room.

A member's own messages in flight (handed over, buffered or not yet
acknowledged) are bounded by ``max_in_flight``. Each test holds them in
flight the same way: member b's ``handle_msg`` blocks on "block" (a
:class:`~tests.gm_helpers.Blocker`), after passing it on, so "block" goes
round and everything a broadcasts after it stays unacknowledged until b is
released.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_gm
from tests.gm_helpers import WAIT, Blocker, Events, Reporter
from trio_gm.ring import core

GROUP = "flow"


@pytest.fixture(autouse=True)
def no_membership_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """No store read in a worker thread while a test waits for all tasks to block."""
    monkeypatch.setattr(core, "MEMBERSHIP_CHECK_INTERVAL", 3600.0)


@asynccontextmanager
async def held_window(
    store: trio_gm.GroupStore, events: Events, max_in_flight: int
) -> AsyncIterator[tuple[trio_gm.Member, Blocker]]:
    """Member a (``max_in_flight``) and b, b stuck in ``handle_msg``, a with nothing in flight."""
    blocker = Blocker(events, "b")
    async with trio_gm.open_node(store) as node:
        async with node.open_member(GROUP, Reporter(events), "a", max_in_flight=max_in_flight) as a:
            async with node.open_member(GROUP, blocker, "b"):
                await a.broadcast("block")
                await events.expect("msg", "b", a.id, "block")
                await trio.testing.wait_all_tasks_blocked()
                assert (await a.statistics()).in_flight == 0
                try:
                    yield a, blocker
                finally:
                    blocker.release()


def parked(member: trio_gm.Member) -> int:
    """Tasks waiting for room on ``member`` (the one ParkingLot of its flow control)."""
    return len(member._actor.room)


async def test_broadcast_nowait_accepts_while_there_is_room_then_would_block(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with held_window(sqlite_store, events, max_in_flight=3) as (a, blocker):
        for msg in ("1", "2", "3"):
            a.broadcast_nowait(msg)  # accepted here and now: nothing to await
        assert (await a.statistics()).in_flight == 3
        with pytest.raises(trio.WouldBlock):
            a.broadcast_nowait("refused")
        with pytest.raises(trio.WouldBlock):  # still full: the refusal took no room
            a.broadcast_nowait("refused again")
        assert (await a.statistics()).in_flight == 3

        blocker.release()
        await a.confirmed_broadcast("end")  # once acknowledged, all is round
        a.broadcast_nowait("after")  # room again
        await a.confirmed_broadcast("end 2")
    received = [e[3] for e in events.log if e[:3] == ("msg", "b", a.id)]
    assert received == ["1", "2", "3", "end", "after", "end 2"]  # never the refused ones


async def test_broadcast_nowait_never_would_block_in_the_members_own_callback(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    members: list[trio_gm.Member] = []
    raised: list[BaseException] = []

    class Burst(Reporter):
        def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:
            super().handle_msg(args, sender, msg)
            if msg == "go" and args == "a":
                try:
                    for n in range(3):  # max_in_flight=1: over it from the second
                        members[0].broadcast_nowait(n)
                except Exception as exc:
                    raised.append(exc)

    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Burst(events), "a", max_in_flight=1) as a:
            members.append(a)
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                await b.broadcast("go")
                for n in range(3):
                    await events.expect("msg", "b", a.id, n)
    assert raised == []


async def test_broadcast_nowait_on_a_stopped_member_raises_member_stopped(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            await a.leave()
            with pytest.raises(trio_gm.MemberStopped, match=str(a.id)):
                a.broadcast_nowait("late")
        async with node.open_member(GROUP, Reporter(events), "k") as k:
            k.kill()
            with pytest.raises(trio_gm.MemberStopped, match=str(k.id)):
                k.broadcast_nowait("late")
    assert not [e for e in events.log if e[0] == "msg" and e[3] == "late"]


async def test_a_stopped_member_raises_member_stopped_even_when_full(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """Stopped beats full: a caller told WouldBlock would wait for room that never comes."""
    async with held_window(sqlite_store, events, max_in_flight=1) as (a, _blocker):
        a.broadcast_nowait("fills the window")
        with pytest.raises(trio.WouldBlock):
            a.broadcast_nowait("full")
        a.kill()
        with pytest.raises(trio_gm.MemberStopped):
            a.broadcast_nowait("after the kill")


async def test_a_broadcast_waiting_for_room_wakes_when_room_appears(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with held_window(sqlite_store, events, max_in_flight=2) as (a, blocker):
        a.broadcast_nowait("1")
        a.broadcast_nowait("2")
        sent: list[str] = []

        async def waiter() -> None:
            await a.broadcast("3")
            sent.append("3")

        with trio.fail_after(WAIT):  # a waiter nobody wakes fails, not hangs
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                # Fence: it waits on the member's room, and on nothing else.
                assert parked(a) == 1
                assert sent == []
                blocker.release()  # b acknowledges "1" and "2": room
        assert sent == ["3"]
        assert parked(a) == 0
        await events.expect("msg", "b", a.id, "3")


async def test_a_broadcast_waiting_for_room_raises_member_stopped_promptly_on_a_kill(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with held_window(sqlite_store, events, max_in_flight=1) as (a, _blocker):
        a.broadcast_nowait("fills the window")
        outcome: list[str] = []
        killed = trio.Event()

        async def waiter() -> None:
            try:
                await a.broadcast("waits")
                outcome.append("sent")
            except trio_gm.MemberStopped:
                outcome.append("stopped")
                assert killed.is_set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert parked(a) == 1
            assert outcome == []
            killed.set()
            a.kill()
            # Nothing else happens meanwhile (b is still stuck, no timer runs
            # out): the kill alone wakes it.
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == ["stopped"]
        assert not a.alive


async def test_a_broadcast_waiting_for_room_raises_member_stopped_when_it_leaves(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with held_window(sqlite_store, events, max_in_flight=1) as (a, _blocker):
        a.broadcast_nowait("fills the window")
        outcome: list[str] = []

        async def waiter() -> None:
            try:
                await a.broadcast("waits")
                outcome.append("sent")
            except trio_gm.MemberStopped:
                outcome.append("stopped")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert parked(a) == 1
            await a.leave()
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == ["stopped"]
        await events.expect("terminate", "a", "normal")
