"""Ring throughput and confirmed latency, beside a hand-written fan-out.

Run: ``pytest benchmarks/bench_ring.py --benchmark-enable``.

* ``flood``: N members in one process all broadcast small integers (their
  own broadcast loop yields every 100 messages, as the Erlang flood test
  broadcasts in batches of 100) until together they have sent ``TOTAL``; the
  time is until every member has delivered everything. The figure to
  compare is messages delivered to all members per second
  (``extra_info["delivered_to_all_per_s"]``).
* ``fanout``: the same traffic sent by a direct fan-out over trio memory
  channels (every broadcast awaits a send to every member's channel), the
  pattern a user would write by hand in one process.
* ``confirmed``: idle ``confirmed_broadcast`` round trips, one at a time.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import trio

import trio_gm

TOTAL = 150_000
CONFIRMS = 2_000


class Counter:
    def __init__(self, expected: int, done: trio.Event) -> None:
        self.count = 0
        self.expected = expected
        self.done = done

    def joined(self, args: Any, members: Any) -> None:
        pass

    def members_changed(self, args: Any, births: Any, deaths: Any) -> None:
        pass

    def handle_msg(self, args: Any, sender: Any, msg: Any) -> None:
        self.count += 1
        if self.count == self.expected:
            self.done.set()

    def handle_terminate(self, args: Any, reason: Any) -> None:
        pass


async def _flood(n: int, per_member: int) -> float:
    """Seconds for n members each broadcasting per_member messages to all."""
    async with trio_gm.open_store("sqlite://") as store:
        await store.create_tables()
        async with trio_gm.open_node(store) as node, trio.open_nursery() as nursery:
            dones = [trio.Event() for _ in range(n)]
            counters = [Counter(n * per_member, done) for done in dones]
            members: list[trio_gm.Member] = []
            go, joined = trio.Event(), trio.Event()

            async def run(counter: Counter) -> None:
                async with node.open_member("bench", counter) as member:
                    members.append(member)
                    if len(members) == n:
                        joined.set()
                    await go.wait()
                    for i in range(per_member):
                        await member.broadcast(i)
                        if i % 100 == 99:
                            await trio.lowlevel.checkpoint()
                    await counter.done.wait()
                    await finished.wait()

            finished = trio.Event()
            for counter in counters:
                nursery.start_soon(run, counter)
            await joined.wait()
            start = time.perf_counter()
            go.set()
            for done in dones:
                await done.wait()
            elapsed = time.perf_counter() - start
            finished.set()
    return elapsed


async def _fanout(n: int, per_member: int) -> float:
    channels = [trio.open_memory_channel[int](math.inf) for _ in range(n)]
    dones = [trio.Event() for _ in range(n)]

    async def receiver(i: int) -> None:
        count = 0
        async for _msg in channels[i][1]:
            count += 1
            if count == n * per_member:
                dones[i].set()
                return

    async def sender() -> None:
        for i in range(per_member):
            for send, _ in channels:
                await send.send(i)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(receiver, i)
        start = time.perf_counter()
        for _ in range(n):
            nursery.start_soon(sender)
        for done in dones:
            await done.wait()
        return time.perf_counter() - start


async def _confirmed(n: int, rounds: int) -> float:
    """Mean seconds per idle confirmed_broadcast in a group of n."""
    async with trio_gm.open_store("sqlite://") as store:
        await store.create_tables()
        async with trio_gm.open_node(store) as node, trio.open_nursery() as nursery:
            members: list[trio_gm.Member] = []
            joined, finished = trio.Event(), trio.Event()

            async def run() -> None:
                async with node.open_member("bench", Counter(-1, trio.Event())) as member:
                    members.append(member)
                    if len(members) == n:
                        joined.set()
                    await finished.wait()

            for _ in range(n):
                nursery.start_soon(run)
            await joined.wait()
            first = members[0]
            for _ in range(100):  # warm up
                await first.confirmed_broadcast(0)
            start = time.perf_counter()
            for i in range(rounds):
                await first.confirmed_broadcast(i)
            elapsed = time.perf_counter() - start
            finished.set()
    return elapsed / rounds


def _rate(benchmark: Any, fn: Any, n: int, per_member: int) -> None:
    """Run ``fn`` a few times; record the best delivered-to-all rate.

    The benchmark's own time includes opening the store and joining; the
    rate is computed from the time ``fn`` measured around the traffic only.
    """
    inner: list[float] = []

    def once() -> None:
        inner.append(trio.run(fn, n, per_member))

    benchmark.pedantic(once, rounds=3)
    benchmark.extra_info["delivered_to_all_per_s"] = round(n * per_member / min(inner))


@pytest.mark.parametrize("n", [1, 3, 5, 10])
def test_bench_flood(benchmark: Any, n: int) -> None:
    benchmark.group = f"flood N={n}"
    _rate(benchmark, _flood, n, TOTAL // n)


@pytest.mark.parametrize("n", [3, 5])
def test_bench_fanout_baseline(benchmark: Any, n: int) -> None:
    benchmark.group = f"flood N={n}"
    _rate(benchmark, _fanout, n, TOTAL // n // 20)  # the fan-out is ~20x slower


@pytest.mark.parametrize("n", [3, 5])
def test_bench_confirmed_latency(benchmark: Any, n: int) -> None:
    benchmark.group = "idle confirmed_broadcast"
    inner: list[float] = []

    def once() -> None:
        inner.append(trio.run(_confirmed, n, CONFIRMS))

    benchmark.pedantic(once, rounds=3)
    benchmark.extra_info["mean_latency_us"] = round(min(inner) * 1e6, 1)
