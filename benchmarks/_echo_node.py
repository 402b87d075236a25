"""The far end of ``bench_net``'s round trips, in a process of its own.

``python -m benchmarks._echo_node COOKIE`` opens a node on loopback hosting
one actor that answers every call with its request, and a raw trio TCP echo
server (each 4-byte length-prefixed frame sent back as it came), prints
``{"actor": [node, serial], "raw_port": port}`` on a line, and serves until
standard input closes.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import sys
from typing import Any

import trio

import trio_gm
from trio_gm.actor import Actor, From, Reply

_LENGTH = struct.Struct(">I")


class Echo(Actor):
    def handle_call(self, request: Any, from_: From) -> Reply:
        return Reply(request)


async def _raw_echo(stream: trio.SocketStream) -> None:
    """Send back every length-prefixed frame: the floor for a round trip."""
    buffer = bytearray()
    async with stream:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            buffer += data
            while len(buffer) >= 4:
                end = 4 + _LENGTH.unpack_from(buffer)[0]
                if len(buffer) < end:
                    break
                await stream.send_all(bytes(buffer[:end]))
                del buffer[:end]


async def _stdin_closed() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some(4096):
            pass


async def main(cookie: str) -> None:
    async with trio_gm.open_store("sqlite://") as store:
        await store.create_tables()
        async with (
            trio_gm.open_node(store, listen="127.0.0.1:0", cookie=cookie) as node,
            node.actors.open_actor(Echo()) as echo,
            trio.open_nursery() as nursery,
        ):
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, _raw_echo, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            ready = {"actor": [echo.id.node, echo.id.serial], "raw_port": port}
            print(json.dumps(ready), flush=True)
            await _stdin_closed()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
