"""Actor runtime speed beside bare trio memory channels, in the same run.

Run: ``pytest benchmarks/bench_actor.py --benchmark-enable``. Each pair
(same ``group``) does the same work; compare the means: the goal is the
actor cast path at no more than 2x the bare channel, and the actor ring at
least 0.5x the bare ring's throughput.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

from trio_gm.actor import Actor, ActorContext, ActorNode
from trio_gm.actor._mailbox import EMPTY, Mailbox

MESSAGES = 100_000
CHUNK = 1_000
RING = 5
BATCH = 100
BATCHES_IN_FLIGHT = 20
HOPS = 200


class Counter(Actor):
    def __init__(self, done: trio.Event, expected: int) -> None:
        self.count = 0
        self.done = done
        self.expected = expected

    def handle_cast(self, msg: Any) -> None:
        self.count += 1
        if self.count == self.expected:
            self.done.set()


async def _actor_one_to_one() -> None:
    node = ActorNode()
    done = trio.Event()
    async with node.open_actor(Counter(done, MESSAGES)) as handle:
        cast, to = node.cast, handle.id
        for start in range(0, MESSAGES, CHUNK):
            for i in range(start, start + CHUNK):
                cast(to, i)
            await trio.lowlevel.checkpoint()
        await done.wait()


async def _channel_one_to_one() -> None:
    send, receive = trio.open_memory_channel[int](math.inf)
    done = trio.Event()

    async def consumer() -> None:
        count = 0
        while True:
            try:
                receive.receive_nowait()
            except trio.WouldBlock:
                await receive.receive()
            count += 1
            if count == MESSAGES:
                done.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        for start in range(0, MESSAGES, CHUNK):
            for i in range(start, start + CHUNK):
                send.send_nowait(i)
            await trio.lowlevel.checkpoint()
        await done.wait()


class Hop(Actor):
    def __init__(self, done: trio.Event) -> None:
        self.next: Any = None
        self.done = done
        self.finished = 0

    def init(self, ctx: ActorContext) -> None:
        self.cast = ctx.cast

    def handle_cast(self, msg: tuple[int, list[int]]) -> None:
        hops, batch = msg
        if hops == 0:
            self.finished += 1
            if self.finished == BATCHES_IN_FLIGHT:
                self.done.set()
            return
        self.cast(self.next, (hops - 1, batch))


async def _actor_ring() -> None:
    node = ActorNode()
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        hops = [Hop(done) for _ in range(RING)]
        handles = [await node.start_actor(nursery, h) for h in hops]
        for i, hop in enumerate(hops):
            hop.next = handles[(i + 1) % RING].id
        # Every batch ends at the first actor after HOPS hops (HOPS % RING == 0).
        for _ in range(BATCHES_IN_FLIGHT):
            handles[0].cast((HOPS, list(range(BATCH))))
        await done.wait()
        nursery.cancel_scope.cancel()


async def _channel_ring() -> None:
    channels = [trio.open_memory_channel[tuple[int, list[int]]](math.inf) for _ in range(RING)]
    done = trio.Event()
    finished = [0]

    async def hop(i: int) -> None:
        receive = channels[i][1]
        send_next = channels[(i + 1) % RING][0]
        while True:
            try:
                hops, batch = receive.receive_nowait()
            except trio.WouldBlock:
                hops, batch = await receive.receive()
            if hops == 0:
                finished[0] += 1
                if finished[0] == BATCHES_IN_FLIGHT:
                    done.set()
                continue
            send_next.send_nowait((hops - 1, batch))

    async with trio.open_nursery() as nursery:
        for i in range(RING):
            nursery.start_soon(hop, i)
        for _ in range(BATCHES_IN_FLIGHT):
            channels[0][0].send_nowait((HOPS, list(range(BATCH))))
        await done.wait()
        nursery.cancel_scope.cancel()


@pytest.mark.benchmark(group="cast 1->1 (100k msgs)")
def test_bench_channel_one_to_one(benchmark: Any) -> None:
    benchmark.pedantic(trio.run, args=(_channel_one_to_one,), rounds=10)


@pytest.mark.benchmark(group="cast 1->1 (100k msgs)")
def test_bench_actor_one_to_one(benchmark: Any) -> None:
    benchmark.pedantic(trio.run, args=(_actor_one_to_one,), rounds=10)


@pytest.mark.benchmark(group="ring of 5, batches of 100 (400k items)")
def test_bench_channel_ring(benchmark: Any) -> None:
    benchmark.pedantic(trio.run, args=(_channel_ring,), rounds=10)


@pytest.mark.benchmark(group="ring of 5, batches of 100 (400k items)")
def test_bench_actor_ring(benchmark: Any) -> None:
    benchmark.pedantic(trio.run, args=(_actor_ring,), rounds=10)


#: One token round a ring of 3, one hop at a time: the trio floor of a hop.
TOKEN_RING = 3
TOKEN_HOPS = 30_000


async def _mailbox_token_ring() -> None:
    """A token passed round ``TOKEN_RING`` tasks through bare ``Mailbox``es
    (``pop``, ``wait_nonempty``, ``send_nowait``): what one idle hop costs
    in trio before any actor or gm work (divide the mean by TOKEN_HOPS)."""
    boxes = [Mailbox() for _ in range(TOKEN_RING)]
    done = trio.Event()

    async def task(i: int) -> None:
        box, right = boxes[i], boxes[(i + 1) % TOKEN_RING]
        while True:
            hops = box.pop()
            if hops is EMPTY:
                await box.wait_nonempty()
                continue
            if hops >= TOKEN_HOPS:
                done.set()
                return
            right.send_nowait(hops + 1)

    async with trio.open_nursery() as nursery:
        for i in range(TOKEN_RING):
            nursery.start_soon(task, i)
        boxes[0].send_nowait(0)
        await done.wait()
        nursery.cancel_scope.cancel()


@pytest.mark.benchmark(group="one token round a ring of 3 (30k hops)")
def test_bench_mailbox_token_ring(benchmark: Any) -> None:
    benchmark.extra_info["hops"] = TOKEN_HOPS
    benchmark.pedantic(trio.run, args=(_mailbox_token_ring,), rounds=5)
