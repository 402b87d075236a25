"""The broadcast buffer is flushed within the flush interval under constant load.

A member buffers its broadcasts and sends them on when its mailbox goes idle
(gen_server2's timeout 0) or, at the latest, when its flush timer fires
(``BROADCAST_TIMER``, gm's 25 ms), a message that jumps the queue. Here the
mailbox never goes idle: only the timer can flush, and it must do so in time
even behind a backlog far longer than one interval's worth of work.

Time is a ``MockClock`` that never moves by itself: the flood loop advances
it by ``STEP`` per turn, so virtual time passes only while the flood runs,
and every assertion is on virtual time.
"""

from __future__ import annotations

from typing import Any, Final

import trio
import trio.testing

import trio_gm
from tests.gm_helpers import Events, Reporter
from trio_gm.actor import ActorHandle, ActorStatistics
from trio_gm.ring.member import BROADCAST_TIMER

# -- the only place this test reaches below the public API ---------------------
#
# Through the actor runtime (``node.actors``, a member id being its actor's
# id), never through MemberActor's attributes: what it relies on is that a
# member is an actor with a mailbox, and that it discards an info message it
# does not know (gen_server's rule; "a late reply ... never a crash", issue
# 922). A rewrite of the ring that keeps those keeps this test.

#: An info message no member knows: handled (discarded) at the cost of a lookup.
NOISE: Final = ("test_flush_under_load", "noise")


def send_noise(node: trio_gm.Node, member: trio_gm.Member) -> None:
    node.actors.send(member.id, NOISE)


def mailbox(node: trio_gm.Node, member: trio_gm.Member) -> ActorStatistics:
    """``mailbox_length`` (waiting) and ``messages_handled`` of the member's actor."""
    return ActorHandle(node.actors, member.id).statistics()


# -------------------------------------------------------------------------------

GROUP = "flush-under-load"
#: Virtual seconds the flood advances the clock per turn.
STEP: Final = 0.001
#: Messages the flood keeps waiting in the flooded member's mailbox: far more
#: than it handles in two flush intervals, so a flush that waited its turn
#: behind them (priority 0) would be late, not just one kept from the idle.
BACKLOG: Final = 10_000
#: The promise: delivered downstream within about two flush intervals of
#: being buffered (one interval plus the handling on either side).
BOUND: Final = 2 * BROADCAST_TIMER
#: Virtual seconds after which the flood gives up waiting for the delivery.
GIVE_UP: Final = 2.0


class Timed(Reporter):
    """A reporter that also notes, per (member, msg), the virtual time it was seen."""

    def __init__(self, events: Events) -> None:
        super().__init__(events)
        self.seen: dict[tuple[Any, Any], float] = {}

    def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:
        super().handle_msg(args, sender, msg)
        self.seen.setdefault((args, msg), trio.current_time())


async def test_flush_timer_fires_while_the_mailbox_never_goes_idle(
    sqlite_store: trio_gm.GroupStore, events: Events, mock_clock: trio.testing.MockClock
) -> None:
    timed = Timed(events)
    async with (
        trio_gm.open_node(sqlite_store) as node,
        node.open_member(GROUP, timed, "a") as a,
        node.open_member(GROUP, timed, "b") as b,
    ):
        # The ring is whole and quiet before the load starts.
        await a.confirmed_broadcast("warm-up")
        assert sorted(await a.group_members()) == sorted([a.id, b.id])
        await trio.testing.wait_all_tasks_blocked()
        assert mailbox(node, a).mailbox_length == 0

        for _ in range(BACKLOG):
            send_noise(node, a)
        start = trio.current_time()
        handled_at_start = mailbox(node, a).messages_handled
        # Accepted at once; ``a`` takes (and buffers) it when its wake-up,
        # queued behind the backlog, comes up: its own handle_msg says when.
        await a.broadcast("ping")

        # The flood: top the backlog up, advance the clock, let the rest run.
        # It never blocks, so nothing but the flush timer can flush ``a``.
        fewest_waiting = BACKLOG
        while ("b", "ping") not in timed.seen and trio.current_time() < start + GIVE_UP:
            waiting = mailbox(node, a).mailbox_length
            fewest_waiting = min(fewest_waiting, waiting)
            for _ in range(BACKLOG - waiting):
                send_noise(node, a)
            mock_clock.jump(STEP)
            await trio.lowlevel.checkpoint()
        end = trio.current_time()
        handled = mailbox(node, a).messages_handled - handled_at_start

        # Not vacuous: the mailbox was never near empty (it only shrinks
        # between two turns of the flood, which saw it before each top-up),
        # ``a`` was working through it all along, and the backlog was deeper
        # than what ``a`` handles in ``BOUND``: neither the idle flush nor a
        # flush queued behind the backlog could have made it in time.
        rate = handled / (end - start)
        assert fewest_waiting > rate * BOUND, (fewest_waiting, rate)
        assert handled > BACKLOG

        assert ("a", "ping") in timed.seen, "a never took the broadcast"
        buffered = timed.seen["a", "ping"]
        assert ("b", "ping") in timed.seen, (
            f"b never got the broadcast in {GIVE_UP} s of virtual time under load "
            f"(buffered by a at +{buffered - start:.3f} s)"
        )
        delay = timed.seen["b", "ping"] - buffered
        assert delay <= BOUND, f"b got it {delay:.3f} s after a buffered it (bound {BOUND} s)"
