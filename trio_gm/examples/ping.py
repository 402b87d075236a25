"""A small example of the actor runtime: a ring of actors passing a token.

Run it with ``python -m trio_gm.examples.ping``. Five actors form a ring;
a token goes round it 10,000 times; the program prints the hop rate and
exits 0 once every actor has stopped cleanly.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from trio_gm.actor import Actor, ActorContext, ActorId, ActorNode, From, Reply, StopActor

RING = 5
ROUNDS = 10_000


class Link(Actor):
    def __init__(self, done: trio.Event) -> None:
        self.next: ActorId | None = None
        self.done = done

    def init(self, ctx: ActorContext) -> None:
        self.ctx = ctx

    def handle_call(self, request: ActorId, from_: From) -> Reply:
        self.next = request
        return Reply(None)

    def handle_cast(self, hops_left: int) -> StopActor | None:
        if hops_left == 0:
            self.done.set()
            return None
        assert self.next is not None
        self.ctx.cast(self.next, hops_left - 1)
        return None

    def terminate(self, reason: Any) -> None:
        assert reason == "normal", reason


async def main() -> None:
    node = ActorNode()
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        links = [await node.start_actor(nursery, Link(done)) for _ in range(RING)]
        for here, there in zip(links, links[1:] + links[:1], strict=True):
            await here.call(there.id)
        started = time.perf_counter()
        links[0].cast(RING * ROUNDS)
        await done.wait()
        elapsed = time.perf_counter() - started
        for link in links:
            await link.stop()
    print(f"{RING * ROUNDS} hops round a ring of {RING} actors in {elapsed * 1000:.1f} ms")
    print(f"({RING * ROUNDS / elapsed:,.0f} hops/s, one message in flight at a time)")


if __name__ == "__main__":
    trio.run(main)
