"""The node under attack in ``test_hostile_peer``, in a process of its own.

``python -m tests.net._hostile_node STORE_URL GROUP COOKIE HEARTBEAT`` opens
a node on loopback (``heartbeat_interval=HEARTBEAT``) with one member ``a``
of ``GROUP``, logs the transport's warnings to standard error, prints JSON
lines on standard output and takes commands on standard input, one a line:

* at start: ``{"event": "ready", "address", "name", "member", "limits"}``;
* ``members_changed`` and ``joined`` events as the member sees them;
* ``flood``: broadcast 0, 1, 2, ... until ``stop`` (a pause of 1 ms every
  100 messages); prints ``{"event": "flooding"}``;
* ``stats``: ``{"event": "stats", "stats": node.statistics(), "received":
  {sender: how many of its numbers so far}}``;
* ``stop``: end the flood, ``confirmed_broadcast("end")``, then print
  ``{"event": "stopped", "sent": N}`` (N numbers were broadcast, 0..N-1);
* ``report``: ``{"event": "report", "tally": Tally.report(), "members":
  [...], "stats": ...}``;
* ``quit`` (or the end of input): leave the group and exit 0.

:class:`Tally` (the member's callbacks, used by the test's member too)
checks each sender's numbers as they arrive instead of keeping them, so
the node's memory stays what its network side makes it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

import trio_gm


class Tally:
    """gm callbacks checking that each sender's numbers arrive as 0, 1, 2, ...

    ``count[sender]`` is how many numbers arrived from it; ``faults`` the
    first few that were not the next one (a gap, a duplicate, a reordering);
    ``others[sender]`` every other message, each with the count of numbers
    that arrived from that sender before it.
    """

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.faults: list[str] = []
        self.others: dict[str, list[tuple[int, Any]]] = {}
        #: The members ``joined`` reported.
        self.members: list[str] = []
        self.births: list[str] = []
        self.deaths: list[str] = []
        self.terminated: Any = None
        self.changed = trio.Event()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def joined(self, args: Any, members: list[trio_gm.MemberId]) -> None:
        self.members = sorted(str(m) for m in members)
        self._changed()

    def members_changed(
        self, args: Any, births: list[trio_gm.MemberId], deaths: list[trio_gm.MemberId]
    ) -> None:
        self.births += [str(m) for m in births]
        self.deaths += [str(m) for m in deaths]
        self._changed()

    def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:
        key = str(sender)
        got = self.count.get(key, 0)
        if type(msg) is int:
            if msg != got and len(self.faults) < 20:
                self.faults.append(f"from {key}: {msg} where {got} was next")
            self.count[key] = got + 1
        else:
            self.others.setdefault(key, []).append((got, msg))
            self._changed()

    def handle_terminate(self, args: Any, reason: Any) -> None:
        self.terminated = str(reason)
        self._changed()

    def report(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "faults": self.faults,
            "others": self.others,
            "joined": self.members,
            "births": self.births,
            "deaths": self.deaths,
        }


async def flood(member: trio_gm.Member, sent: list[int]) -> None:
    """Broadcast 0, 1, 2, ... until cancelled; ``sent[0]`` counts those accepted."""
    while True:
        await member.broadcast(sent[0])
        sent[0] += 1
        if sent[0] % 100 == 0:
            await trio.sleep(0.001)


def _print(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class _Printing(Tally):
    def joined(self, args: Any, members: list[trio_gm.MemberId]) -> None:
        super().joined(args, members)
        _print("joined", members=self.members)

    def members_changed(
        self, args: Any, births: list[trio_gm.MemberId], deaths: list[trio_gm.MemberId]
    ) -> None:
        super().members_changed(args, births, deaths)
        _print("members_changed", births=[str(m) for m in births], deaths=[str(m) for m in deaths])


def _stats(node: trio_gm.Node) -> dict[str, Any]:
    stats = node.statistics()
    assert stats is not None
    return attrs.asdict(stats)


async def _lines() -> AsyncIterator[str]:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        buffer = b""
        while data := await stdin.receive_some(4096):
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                yield line.decode().strip()


async def main(url: str, group: str, cookie: str, heartbeat: float) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    logging.getLogger("trio_gm.transport").setLevel(logging.INFO)  # lost connections too
    tally = _Printing()
    async with (
        trio_gm.open_store(url) as store,
        trio_gm.open_node(
            store, listen="127.0.0.1:0", cookie=cookie, heartbeat_interval=heartbeat
        ) as node,
        node.open_member(group, tally, "a") as member,
        trio.open_nursery() as nursery,
    ):
        transport = node.transport
        assert transport is not None
        limits = {
            "max_handshakes": transport.max_handshakes,
            "handshake_timeout": transport.handshake_timeout,
            "max_frame_size": transport.max_frame_size,
            "max_send_queue": transport.max_send_queue,
            "heartbeat_interval": transport.heartbeat_interval,
        }
        _print("ready", address=node.address, name=node.name, member=str(member.id), limits=limits)
        sent = [0]
        flooding = trio.CancelScope()
        async for line in _lines():
            if line == "flood":
                nursery.start_soon(_run_in, flooding, flood, member, sent)
                _print("flooding")
            elif line == "stats":
                _print("stats", stats=_stats(node), received=tally.count)
            elif line == "stop":
                flooding.cancel()
                await member.confirmed_broadcast("end")
                _print("stopped", sent=sent[0])
            elif line == "report":
                members = sorted(str(m) for m in await member.group_members())
                _print("report", tally=tally.report(), members=members, stats=_stats(node))
            elif line == "quit":
                break
        flooding.cancel()


async def _run_in(scope: trio.CancelScope, fn: Any, *args: Any) -> None:
    with scope:
        await fn(*args)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
