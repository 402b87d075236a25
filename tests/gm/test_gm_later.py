"""Every scenario RabbitMQ fixed in gm after the reference copy (GM_LATER.md).

Each test is named after the scenario it reproduces.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_gm
from tests.gm_helpers import Blocker, Events, Reporter
from trio_gm.ring.member import MemberActor
from trio_gm.ring.messages import Activity, ActivityEntry, AddOnRight, Catchup, CheckNeighbours
from trio_gm.store import Group, GroupMember

GROUP = "later"


def _msgs(events: Events, member: Any) -> list[Any]:
    return [e[3] for e in events.log if e[0] == "msg" and e[1] == member]


async def test_all_recorded_members_dead_at_join_prunes_and_recreates(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """Reference line ~1072 crashed here (RabbitMQ bug 26173)."""
    ghosts = (trio_gm.MemberId("gone", 1), trio_gm.MemberId("gone", 2))
    await sqlite_store.transact(
        GROUP,
        lambda _g: (Group(GROUP, 7, tuple(GroupMember(g, dead=True) for g in ghosts)), None),
    )
    async with (
        trio_gm.open_node(sqlite_store) as node,
        node.open_member(GROUP, Reporter(events), "a") as a,
    ):
        await events.expect("joined", "a", [a.id])
        group = await sqlite_store.read_group(GROUP)
        assert group is not None
        assert group.ids == (a.id,)
        assert group.version > 7  # never below what was stored (bug 25670)


async def test_check_neighbours_before_catchup_is_ignored(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """RabbitMQ bug 26171: the catch-up is on its way; no crash, no loss."""
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            actor = MemberActor(GROUP, Reporter(events), "x", sqlite_store, max_in_flight=10)
            async with trio.open_nursery() as nursery:
                handle = await node.actors.start_actor(nursery, actor)
                actor.core.members_state = None  # as before a catch-up arrives
                node.actors.cast(handle.id, CheckNeighbours(actor.core.view.version + 5))
                await trio.testing.wait_all_tasks_blocked()
                assert handle.alive
                assert actor.core.members_state is None
                nursery.cancel_scope.cancel()
            await a.confirmed_broadcast("still fine")


async def test_ring_messages_before_first_catchup_are_held_until_it(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """RabbitMQ PR 10356 (never merged): ring messages reaching a member
    before its first catch-up crashed it. Decided: they are held, then
    handled in order once the catch-up of the member that recorded the join
    has arrived. (Dropping them loses a later left's catch-up; acting on them
    first makes the first catch-up look like a stray: the explorer's
    regression tests show both.) Here a CheckNeighbours with a newer view and
    a stray activity wait for the catch-up; nothing crashes, the stray is
    discarded, and real messages arrive exactly once."""
    blocker = Blocker(events, "a")
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, blocker, "a") as a:
            await a.broadcast("block")  # a stops handling its mailbox
            await events.expect("msg", "a", a.id, "block")
            joined: list[trio_gm.Member] = []
            b_joined = trio.Event()

            async def join_b() -> None:
                async with node.open_member(GROUP, Reporter(events), "b") as b:
                    joined.append(b)
                    b_joined.set()
                    await trio.sleep_forever()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(join_b)
                # b waits for a's answer to its add_on_right.
                await trio.testing.wait_all_tasks_blocked()
                b_id = next(i for i in node.actors._cells if i != a.id)
                b_cell = node.actors.cell(b_id)
                assert b_cell is not None
                b_actor = b_cell.behaviour
                stranger = trio_gm.MemberId("elsewhere", 1)
                node.actors.cast(b_id, CheckNeighbours(10**6))
                node.actors.cast(
                    b_id,
                    Activity(10**6, stranger, (ActivityEntry(stranger, first=0, pubs=("stray",)),)),
                )
                blocker.release()  # a records b, sends its catch-up, replies
                with trio.fail_after(10):
                    await b_joined.wait()
                b = joined[0]
                await a.confirmed_broadcast("real")
                await events.expect("msg", "b", a.id, "real")
                assert b_actor.core.held == []
                assert _msgs(events, "b") == []  # no stray, no second "real"
                assert b.alive
                nursery.cancel_scope.cancel()


async def test_down_of_the_left_does_not_overtake_its_last_activity(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """The RabbitMQ 3.3.2 bug: with the left's DOWN first, its last activity
    came from a member no longer the left, and was lost."""
    blocker = Blocker(events, "b")
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, blocker, "a") as a:
            async with node.open_member(GROUP, blocker, "b") as b:
                await a.confirmed_broadcast("warm-up")
                await a.broadcast("block")
                await events.expect("msg", "b", a.id, "block")  # b is now stuck
                await a.broadcast("last words")
                await trio.testing.wait_all_tasks_blocked()  # a flushed to b
                a.kill()
                await trio.testing.wait_all_tasks_blocked()
                blocker.release()
                await events.expect("msg", "b", a.id, "last words")
                await b.confirmed_broadcast("after")
                await events.expect("members_changed", "b", [], [a.id])


def test_down_priorities() -> None:
    """flush timer 1; DOWN before the state 0; DOWN of the left 0; other DOWNs 1."""
    from trio_gm.actor import Down, MonitorRef
    from trio_gm.ring.core import MembershipChecked, NeighbourDown, RingCore, Tick, priority

    me, left, right = (trio_gm.MemberId("n", i) for i in (1, 2, 3))
    actor = MemberActor(GROUP, None, None, None, max_in_flight=1)  # type: ignore[arg-type]
    core = actor.core = RingCore(me, GROUP)
    core.left, core.right = (left, 10), (right, 11)
    left_ref, right_ref = MonitorRef("n", 10), MonitorRef("n", 11)
    assert actor.prioritise_info(Tick()) == priority(core, Tick()) == 1
    assert actor.prioritise_info(MembershipChecked(None)) == 2
    assert actor.prioritise_info(Down(right_ref, right, "killed")) == 0  # no state yet
    assert priority(core, NeighbourDown(11, right)) == 0
    core.members_state = {}
    assert actor.prioritise_info(Down(left_ref, left, "killed")) == 0
    assert actor.prioritise_info(Down(right_ref, right, "killed")) == 1
    assert priority(core, NeighbourDown(11, right)) == 1
    # A ring of two: the left is the right too; both its DOWNs wait.
    core.right = (left, 11)
    assert actor.prioritise_info(Down(right_ref, left, "killed")) == 0
    assert actor.prioritise_info("anything else") == 0


async def test_alone_after_down_answers_confirms_then_erases(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """RabbitMQ bug 26119: blank state and answer confirms before erasing."""
    blocker = Blocker(events, "b")
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, blocker, "a") as a:
            async with node.open_member(GROUP, blocker, "b") as b:
                await a.broadcast("block")
                await events.expect("msg", "b", a.id, "block")
                confirmed = trio.Event()

                async def confirm() -> None:
                    await a.confirmed_broadcast("pending")
                    confirmed.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(confirm)
                    await trio.testing.wait_all_tasks_blocked()
                    assert not confirmed.is_set()  # b holds it up
                    b.kill()
                    with trio.fail_after(10):
                        await confirmed.wait()
                await events.expect("members_changed", "a", [], [b.id])
                group = await sqlite_store.read_group(GROUP)
                assert group is not None
                assert group.ids == (a.id,)  # the dead alias was erased
                await a.confirmed_broadcast("alone now")
                await events.expect("msg", "a", a.id, "alone now")


class StopOn(Reporter):
    def __init__(self, events: Events, trigger: Any) -> None:
        super().__init__(events)
        self.trigger = trigger

    def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> Any:
        super().handle_msg(args, sender, msg)
        if msg == self.trigger and args == "a":
            return trio_gm.Stop("enough")
        return None


async def test_deferred_stop_while_messages_in_flight(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """RabbitMQ issue 224: a Stop waits until this member's messages have
    gone round; meanwhile confirmed_broadcast says it is shutting down."""
    blocker = Blocker(events, "b")
    stopper = StopOn(events, "stop")
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, stopper, "a") as a:
            async with node.open_member(GROUP, blocker, "b"):
                await a.broadcast("block")
                await events.expect("msg", "b", a.id, "block")
                await a.broadcast("one")
                await a.broadcast("stop")  # a's own delivery returns Stop
                await a.broadcast("dropped: handed over before the stop was handled")
                await events.expect("msg", "a", a.id, "stop")  # a is shutting down now
                with pytest.raises(trio_gm.MemberStopped, match="shutting down"):
                    await a.broadcast("refused: after the stop")
                with pytest.raises(trio_gm.MemberStopped, match="shutting down"):
                    await a.confirmed_broadcast("refused")
                assert a.alive  # its messages are still in flight
                blocker.release()
                await events.expect("terminate", "a", "enough")
                assert _msgs(events, "b")[-2:] == ["one", "stop"]
                assert "dropped: handed over before the stop was handled" not in _msgs(events, "b")


async def test_lost_membership_stops_with_shutdown(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """RabbitMQ issues 714, 950: others recorded us dead (a partition)."""
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            async with node.open_member(GROUP, Reporter(events), "b"):
                async with node.open_member(GROUP, Reporter(events), "c") as c:
                    await sqlite_store.record_dead_member(GROUP, c.id, a.id, verify=False)
                    c.kill()  # a sees a DOWN and checks the store
                    await events.expect("terminate", "a", "shutdown")
    assert not a.alive


async def test_duplicate_member_guard(sqlite_store: trio_gm.GroupStore, events: Events) -> None:
    """RabbitMQ issue 972: add_on_right for a member already in the ring."""
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                before = await sqlite_store.read_group(GROUP)
                reply = await node.actors.call(a.id, AddOnRight(b.id))
                assert isinstance(reply, Group)
                assert reply.ids.count(b.id) == 1
                assert await sqlite_store.read_group(GROUP) == before
                await a.confirmed_broadcast("still a ring of two")
                await events.expect("msg", "b", a.id, "still a ring of two")


async def test_unmatched_acks_are_dropped_without_looping(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """RabbitMQ issue 749 and PR 1431's loop: acks for nothing pending."""
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                await a.confirmed_broadcast("x")
                bogus = Activity(
                    0,
                    b.id,
                    (
                        ActivityEntry(a.id, acks=5, ack_last=999),
                        ActivityEntry(a.id, first=500, pubs=("never sent",)),
                    ),
                )
                node.actors.cast(a.id, bogus)
                await trio.testing.wait_all_tasks_blocked()
                assert a.alive
                await a.confirmed_broadcast("y")
                await events.expect("msg", "b", a.id, "y")


async def test_stray_messages_are_discarded(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """Activity and catch-up from a member that is not our left."""
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                stranger = trio_gm.MemberId("elsewhere", 1)
                node.actors.cast(
                    b.id,
                    Activity(0, stranger, (ActivityEntry(stranger, first=0, pubs=("stray",)),)),
                )
                node.actors.cast(b.id, Catchup(0, stranger, ()))
                await a.confirmed_broadcast("real")
                await events.expect("msg", "b", a.id, "real")
                assert "stray" not in _msgs(events, "b")


async def test_lost_membership_found_by_an_activity(
    sqlite_store: trio_gm.GroupStore, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ issue 714: the group was deleted under a running ring; the
    next activity finds out and the member stops with ``shutdown``."""
    from trio_gm.ring import core

    monkeypatch.setattr(core, "MEMBERSHIP_CHECK_INTERVAL", 0.0)
    async with trio_gm.open_node(sqlite_store) as node:
        async with node.open_member(GROUP, Reporter(events), "a") as a:
            async with node.open_member(GROUP, Reporter(events), "b") as b:
                await a.confirmed_broadcast("before")
                await sqlite_store.forget_group(GROUP)
                await b.broadcast("after the group was deleted")
                await events.expect("terminate", "a", "shutdown")
                await events.expect("terminate", "b", "shutdown")
