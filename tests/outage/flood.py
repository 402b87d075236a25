"""A group that floods while the store goes away, and the check of what it delivered.

Each member broadcasts the numbers 0, 1, 2, ... in order, every
``CONFIRM_EVERY``-th of them with ``confirmed_broadcast``, so that what a
member received from a sender is checkable: gm's guarantee is that every
survivor holds every survivor's numbers, in order, with no gap.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import trio

import trio_gm
from trio_gm import MemberId

#: Every how many messages a flooder uses ``confirmed_broadcast``.
CONFIRM_EVERY = 50
#: How long a test waits for something that must happen.
WAIT = 60.0


@attrs.define(eq=False)
class Recorder:
    """The callbacks of one flooding member: everything it was told."""

    received: dict[MemberId, list[int]] = attrs.field(factory=dict)
    deaths: set[MemberId] = attrs.field(factory=set)
    reason: Any = None
    terminated: trio.Event = attrs.field(factory=trio.Event)
    members: list[MemberId] = attrs.field(factory=list)

    def joined(self, args: Any, members: list[MemberId]) -> None:
        self.members = list(members)

    def members_changed(self, args: Any, births: list[MemberId], deaths: list[MemberId]) -> None:
        self.deaths.update(deaths)

    def handle_msg(self, args: Any, sender: MemberId, msg: int) -> None:
        self.received.setdefault(sender, []).append(msg)

    def handle_terminate(self, args: Any, reason: Any) -> None:
        self.reason = reason
        self.terminated.set()


@attrs.define(eq=False)
class Flooder:
    """One member, its recorder, and what it has sent."""

    member: trio_gm.Member
    recorder: Recorder
    #: Numbers sent so far (the next one to send).
    sent: int = 0
    #: trio times at which a confirmed broadcast returned.
    confirmed_at: list[float] = attrs.field(factory=list)
    stopped: BaseException | None = None

    async def flood(self, stop: trio.Event) -> None:
        """Broadcast until ``stop`` is set or the member stops."""
        member = self.member
        try:
            while not stop.is_set():
                number = self.sent
                if number % CONFIRM_EVERY == CONFIRM_EVERY - 1:
                    await member.confirmed_broadcast(number)
                    self.confirmed_at.append(trio.current_time())
                else:
                    await member.broadcast(number)
                self.sent = number + 1
                if number % 20 == 0:
                    # A gentle flood: the test measures correctness, not speed.
                    await trio.sleep(0.001)
        except trio_gm.MemberStopped as exc:
            self.stopped = exc

    async def finish(self) -> None:
        """One last confirmed number: once it returns, all of ours are everywhere."""
        number = self.sent
        await self.member.confirmed_broadcast(number)
        self.sent = number + 1


async def until(predicate: Any, what: str, timeout: float = WAIT) -> None:
    """A fence on state other tasks and threads change: poll until ``predicate()`` holds.

    The conditions (counters of the store, confirmations returned) have no
    event to wait on; failing names ``what`` was awaited.
    """
    with trio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110 - see above
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def full_ring(flooders: Sequence[Flooder]) -> None:
    """Wait until every member's view holds all of them (joins go round the ring)."""
    ids = {f.member.id for f in flooders}

    async def view(flooder: Flooder) -> set[MemberId]:
        return set(await flooder.member.group_members())

    with trio.fail_after(WAIT):
        for flooder in flooders:
            while await view(flooder) != ids:  # noqa: ASYNC110 - a round trip, polled
                await trio.sleep(0.01)


async def confirms_after(flooders: Sequence[Flooder], moment: float, count: int = 1) -> None:
    """Wait until every flooder has had ``count`` confirmed broadcasts return after ``moment``."""
    await until(
        lambda: all(sum(t > moment for t in f.confirmed_at) >= count for f in flooders),
        f"{count} confirmed broadcasts from each member after t={moment:.2f}",
    )


def check_delivery(survivors: Sequence[Flooder], dead: Sequence[Flooder] = ()) -> dict[str, int]:
    """gm's guarantees over what every survivor received; returns totals for the report."""
    for receiver in survivors:
        got = receiver.recorder.received
        for sender in survivors:
            numbers = got.get(sender.member.id, [])
            assert numbers == list(range(sender.sent)), (
                f"{receiver.member.id} got {len(numbers)} of {sender.sent} numbers from "
                f"{sender.member.id}, first difference at "
                f"{next((i for i, n in enumerate(numbers) if n != i), len(numbers))}"
            )
        for sender in dead:
            numbers = got.get(sender.member.id, [])
            # A dead member's messages: a prefix, the same for every survivor.
            assert numbers == list(range(len(numbers))), f"gap from dead {sender.member.id}"
            first = survivors[0].recorder.received.get(sender.member.id, [])
            assert numbers == first, f"survivors disagree on dead {sender.member.id}'s messages"
            assert sender.member.id in receiver.recorder.deaths, (
                f"{receiver.member.id} was never told {sender.member.id} died"
            )
    return {
        "messages": sum(f.sent for f in survivors),
        "confirmed": sum(len(f.confirmed_at) for f in survivors),
    }


@contextlib.asynccontextmanager
async def flooding(flooders: Sequence[Flooder]) -> AsyncIterator[trio.Event]:
    """Flood for the block; on leaving, stop the flood and wait for it."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for flooder in flooders:
            nursery.start_soon(flooder.flood, stop)
        try:
            yield stop
        finally:
            stop.set()
