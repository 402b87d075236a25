"""Speed measurements shared by ``trio-gm bench`` and ``benchmarks/``.

A flood (after RabbitMQ's gm_speed_test and the Erlang flood test in
``BASELINES.md``): N members, all or one broadcasting small integers, each
broadcast loop yielding every 100 messages, for a fixed time; then, once the
group is idle, confirmed broadcasts one at a time for latency.

"Delivered to all" is the rate at which broadcasts reached every member:
the smallest per-member delivery rate.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

import attrs
import trio

from . import GroupStore, Member, MemberId, open_node


@attrs.frozen
class BenchResult:
    members: int
    senders: int
    seconds: float
    processes: bool
    #: Broadcasts per second that reached every member.
    delivered_to_all_per_s: float
    #: Broadcasts per second, all senders together.
    sent_per_s: float
    #: Deliveries per second at each member.
    received_per_s: list[float]
    #: Idle confirmed_broadcast latency percentiles, microseconds.
    confirmed_us: dict[str, float]
    #: Peak resident memory growth per member, KiB (in-process runs only).
    memory_per_member_kib: float | None


class CountingMember:
    """Callbacks that count deliveries and do nothing else."""

    def __init__(self) -> None:
        self.delivered = 0

    def joined(self, args: Any, members: list[MemberId]) -> None:
        pass

    def members_changed(self, args: Any, births: list[MemberId], deaths: list[MemberId]) -> None:
        pass

    def handle_msg(self, args: Any, sender: MemberId, msg: Any) -> None:
        self.delivered += 1

    def handle_terminate(self, args: Any, reason: Any) -> None:
        pass


async def flood(member: Member, stop: trio.Event) -> int:
    """Broadcast 0, 1, 2, ... until ``stop``; return how many were sent."""
    sent = 0
    while not stop.is_set():
        for _ in range(100):
            await member.broadcast(sent)
            sent += 1
        await trio.lowlevel.checkpoint()
    return sent


async def confirmed_latencies(member: Member, count: int) -> dict[str, float]:
    """Percentiles (µs) of ``count`` idle confirmed broadcasts, one at a time."""
    for _ in range(min(50, count)):  # warm up, and drain what the flood left
        await member.confirmed_broadcast(-1)
    samples = []
    for i in range(count):
        start = time.perf_counter()
        await member.confirmed_broadcast(i)
        samples.append((time.perf_counter() - start) * 1e6)
    return percentiles(samples)


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "mean": round(statistics.fmean(ordered), 1),
    }


async def bench_in_process(
    store: GroupStore,
    *,
    members: int,
    seconds: float,
    one_sender: bool = False,
    confirms: int = 300,
    group: str = "bench",
) -> BenchResult:
    """Flood a group of ``members`` in this process for ``seconds``."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counters = [CountingMember() for _ in range(members)]
    joined: list[Member] = []
    all_joined, go, stop, done = trio.Event(), trio.Event(), trio.Event(), trio.Event()
    sent: list[int] = []

    async with open_node(store) as node, trio.open_nursery() as nursery:

        async def run(index: int) -> None:
            async with node.open_member(group, counters[index]) as member:
                joined.append(member)
                if len(joined) == members:
                    all_joined.set()
                await go.wait()
                if index == 0 or not one_sender:
                    sent.append(await flood(member, stop))
                await done.wait()

        for index in range(members):
            nursery.start_soon(run, index)
        await all_joined.wait()
        go.set()
        await trio.sleep(min(0.5, seconds / 4))  # ramp up
        base = [c.delivered for c in counters]
        start = time.perf_counter()
        await trio.sleep(seconds)
        elapsed = time.perf_counter() - start
        counts = [c.delivered - b for c, b in zip(counters, base, strict=True)]
        stop.set()
        latencies = await confirmed_latencies(joined[0], confirms)
        done.set()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    received = [count / elapsed for count in counts]
    return BenchResult(
        members=members,
        senders=1 if one_sender else members,
        seconds=round(elapsed, 3),
        processes=False,
        delivered_to_all_per_s=round(min(received)),
        sent_per_s=round(sum(sent) / (elapsed + min(0.5, seconds / 4))),
        received_per_s=[round(r) for r in received],
        confirmed_us=latencies,
        memory_per_member_kib=round(max(0, rss_after - rss_before) / members, 1),
    )
