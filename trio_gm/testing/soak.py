"""A soak test of a group, after RabbitMQ's gm_soak_test, with kills too.

Members broadcast increasing sequence numbers while a chaos task makes
members join, leave and get killed. Every callback checks gm's guarantees
as it happens:

* from each sender, numbers arrive in order, with no gap and no duplicate
  (the first one seen from a sender that was already running may be any);
* a member is announced (``joined`` or a birth) before its first message;
* no death is reported for a member never announced;
* nothing is delivered from a member after its death was reported.

At the end every survivor makes a final confirmed broadcast, and each
survivor must hold every survivor's messages up to that final one.

Run ``python -m trio_gm.testing.soak --seconds 60`` for a long run; the
test suite runs a short one.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .. import GroupStore, Member, MemberId, open_node, open_store
from .postgres import PostgresServer


@attrs.define
class SoakReport:
    """What a soak run saw."""

    violations: list[str] = attrs.Factory(list)
    joins: int = 0
    leaves: int = 0
    kills: int = 0
    delivered: int = 0
    survivors: int = 0
    #: The store outages made, as the outage function named them.
    outages: list[str] = attrs.Factory(list)

    def summary(self) -> str:
        outages = f"{len(self.outages)} store outages, " if self.outages else ""
        return (
            f"{self.joins} joins, {self.leaves} leaves, {self.kills} kills, {outages}"
            f"{self.delivered} deliveries, {self.survivors} survivors, "
            f"{len(self.violations)} violations"
        )


class SoakMember:
    """gm callbacks that check every guarantee on every call."""

    def __init__(self, report: SoakReport, name: str) -> None:
        self.report = report
        self.name = name
        self.me: MemberId | None = None
        self.known: set[MemberId] = set()
        self.dead: set[MemberId] = set()
        self.last: dict[MemberId, int] = {}

    def _violation(self, what: str) -> None:
        self.report.violations.append(f"{self.name} ({self.me}): {what}")

    def joined(self, args: Any, members: list[MemberId]) -> None:
        self.known = set(members)

    def members_changed(self, args: Any, births: list[MemberId], deaths: list[MemberId]) -> None:
        for member in deaths:
            if member not in self.known:
                self._violation(f"death of {member}, never announced")
            self.known.discard(member)
            self.dead.add(member)
        for member in births:
            self.known.add(member)

    def handle_msg(self, args: Any, sender: MemberId, msg: Any) -> None:
        self.report.delivered += 1
        if sender in self.dead:
            self._violation(f"message {msg} from {sender} after its death")
        elif sender not in self.known and sender != self.me:
            self._violation(f"message {msg} from {sender} before it was announced")
        last = self.last.get(sender)
        if last is not None and msg != last + 1:
            kind = "duplicate" if msg <= last else "gap"
            self._violation(f"{kind} from {sender}: {msg} after {last}")
        self.last[sender] = msg

    def handle_terminate(self, args: Any, reason: Any) -> None:
        if reason != "normal":
            self._violation(f"terminated with {reason!r}")


@attrs.define(eq=False)
class _Slot:
    callbacks: SoakMember
    node_index: int = 0
    member: Member | None = None
    sent: int = -1
    cancel: trio.CancelScope = attrs.Factory(trio.CancelScope)
    stop_broadcasting: trio.Event = attrs.Factory(trio.Event)
    confirmed: trio.Event = attrs.Factory(trio.Event)
    leave: trio.Event = attrs.Factory(trio.Event)
    done: trio.Event = attrs.Factory(trio.Event)


async def run_soak(
    store: GroupStore,
    *,
    seconds: float,
    members: int = 4,
    seed: int = 0,
    group: str = "soak",
    change_every: float = 0.2,
    min_changes: int = 0,
    batch: int = 20,
    nodes: int = 1,
    outage: Callable[[random.Random], Awaitable[str]] | None = None,
    outage_every: float = 2.0,
) -> SoakReport:
    """Run a soak test for ``seconds`` of chaos on ``store``; return the report.

    With ``nodes`` > 1 the members are spread over that many nodes talking
    over TCP on loopback. The chaos makes a change (join, leave or kill, drawn
    from ``seed``) every ``change_every`` seconds or so, at least
    ``min_changes`` of them however long that takes.

    ``outage``, if given, takes the store away and brings it back (it returns
    a word for the report): it is awaited every ``outage_every`` seconds or
    so while the chaos runs, beside it. Outages must be shorter than the
    store's ``outage_timeout``: a member stopped by one is a violation.
    """
    rng = random.Random(seed)
    report = SoakReport()
    slots: list[_Slot] = []
    counter = 0

    async with contextlib.AsyncExitStack() as stack:
        if nodes == 1:
            hosts = [await stack.enter_async_context(open_node(store))]
        else:
            cookie = secrets.token_hex(16)
            hosts = [
                await stack.enter_async_context(
                    open_node(store, listen="127.0.0.1:0", cookie=cookie)
                )
                for _ in range(nodes)
            ]
        nursery = await stack.enter_async_context(trio.open_nursery())

        async def run_member(slot: _Slot, task_status: trio.TaskStatus[None]) -> None:
            node = hosts[slot.node_index]
            with slot.cancel:
                async with node.open_member(group, slot.callbacks) as member:
                    slot.member = member
                    slot.callbacks.me = member.id
                    task_status.started()
                    while not slot.stop_broadcasting.is_set():
                        for _ in range(batch):
                            slot.sent += 1
                            await member.broadcast(slot.sent)
                        await trio.sleep(0.001)
                    slot.sent += 1
                    await member.confirmed_broadcast(slot.sent)
                    slot.confirmed.set()
                    await slot.leave.wait()
            slot.done.set()

        async def join() -> None:
            nonlocal counter
            counter += 1
            slot = _Slot(SoakMember(report, f"m{counter}"), node_index=counter % len(hosts))
            slots.append(slot)
            report.joins += 1
            await nursery.start(run_member, slot)

        async def remove(slot: _Slot, how: str) -> None:
            slots.remove(slot)
            assert slot.member is not None
            if how == "kill":
                report.kills += 1
                slot.member.kill()
            else:
                report.leaves += 1
            slot.cancel.cancel()
            await slot.done.wait()

        for _ in range(members):
            await join()
        deadline = trio.current_time() + seconds
        chaos_over = trio.Event()
        outage_done = trio.Event()

        async def outages(make_outage: Callable[[random.Random], Awaitable[str]]) -> None:
            # Each outage runs to its end (the store back) before the next
            # wait: once chaos_over is set, the store stays up.
            outage_rng = random.Random(rng.random())
            try:
                while True:
                    with trio.move_on_after(outage_every * outage_rng.uniform(0.5, 1.5)):
                        await chaos_over.wait()
                    if chaos_over.is_set():
                        return
                    report.outages.append(await make_outage(outage_rng))
            finally:
                outage_done.set()

        if outage is None:
            outage_done.set()
        else:
            nursery.start_soon(outages, outage)
        changes = 0
        while trio.current_time() < deadline or changes < min_changes:
            await trio.sleep(change_every * rng.uniform(0.5, 1.5))
            changes += 1
            roll = rng.random()
            if len(slots) > 2 and roll < 0.3:
                await remove(rng.choice(slots), "kill")
            elif len(slots) > 2 and roll < 0.6:
                await remove(rng.choice(slots), "leave")
            elif len(slots) < members + 2:
                await join()

        # The end: the store back for good, stop broadcasting, one final
        # confirmed broadcast each.
        chaos_over.set()
        await outage_done.wait()
        survivors = list(slots)
        report.survivors = len(survivors)
        for slot in survivors:
            slot.stop_broadcasting.set()
        for slot in survivors:
            await slot.confirmed.wait()
        _check_finals(report, survivors)
        for slot in survivors:
            slot.leave.set()
            await slot.done.wait()
    return report


def postgres_outages(
    server: PostgresServer, *, longest: float = 3.0
) -> Callable[[random.Random], Awaitable[str]]:
    """An ``outage`` for :func:`run_soak` that takes ``server`` away and back.

    Each call draws one of: SIGKILL of the postmaster then a start after up
    to ``longest`` seconds; ``pg_ctl restart -m immediate`` (crash recovery);
    ``pg_ctl stop -m fast`` for up to ``longest`` seconds. It returns once
    the server is back, naming what it did.
    """

    async def outage(rng: random.Random) -> str:
        kind = rng.choice(["kill", "restart", "stop"])
        down = rng.uniform(0.2, longest)
        if kind == "restart":
            await server.restart_async(mode="immediate")
            return "restart -m immediate"
        if kind == "kill":
            await server.kill_async()
        else:
            await server.stop_async(mode="fast")
        await trio.sleep(down)
        await server.start_async()
        return f"{kind} for {down:.1f} s"

    return outage


def _check_finals(report: SoakReport, survivors: list[_Slot]) -> None:
    check_finals(report, [(slot.callbacks, slot.sent) for slot in survivors])


def check_finals(report: SoakReport, survivors: list[tuple[SoakMember, int]]) -> None:
    """Each survivor holds every survivor's messages up to its final one.

    ``survivors`` pairs each survivor's checker with the number of the last
    message it sent (its final, confirmed, broadcast).
    """
    for holder, _ in survivors:
        for sender, final in survivors:
            assert sender.me is not None
            got = holder.last.get(sender.me)
            if got != final:
                report.violations.append(
                    f"{holder.name} holds {sender.name}'s messages up to {got}, "
                    f"not up to its final confirmed one, {final}"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trio_gm.testing.soak",
        description="Soak-test a gm group with joins, leaves and kills; exit 1 on any violation.",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--members", type=int, default=4, help="group size to aim for")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--store", default="sqlite://", help="store URL (default: in memory)")
    parser.add_argument(
        "--nodes", type=int, default=1, help="spread the members over this many TCP nodes"
    )
    args = parser.parse_args(argv)

    async def go() -> SoakReport:
        async with open_store(args.store) as store:
            await store.create_tables()
            return await run_soak(
                store,
                seconds=args.seconds,
                members=args.members,
                seed=args.seed,
                nodes=args.nodes,
            )

    return print_report(trio.run(go))


def print_report(report: SoakReport) -> int:
    """Print a run's violations and summary; return the exit status."""
    for violation in report.violations[:50]:
        print("VIOLATION", violation)
    print(report.summary())
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
