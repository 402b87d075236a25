"""A node under a low open-files limit, for ``test_limits``.

``python -m tests.net._fd_node LIMIT COOKIE HANDSHAKE_TIMEOUT`` lowers
RLIMIT_NOFILE to LIMIT, opens a node on loopback hosting one echoing actor,
prints ``{"address": ..., "actor": [node, serial]}`` on a line, logs the
transport's warnings to standard error, and serves until standard input
closes.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
from typing import Any

import trio

import trio_gm
from trio_gm.actor import Actor, From, Reply


class Echo(Actor):
    def handle_call(self, request: Any, from_: From) -> Reply:
        return Reply(("echo", request))


async def _stdin_closed() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some(4096):
            pass


async def main(limit: int, cookie: str, handshake_timeout: float) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    async with trio_gm.open_store("sqlite://") as store:
        await store.create_tables()
        async with trio_gm.open_node(store, listen="127.0.0.1:0", cookie=cookie) as node:
            assert node.transport is not None
            node.transport.handshake_timeout = handshake_timeout
            async with node.actors.open_actor(Echo()) as echo:
                ready = {"address": node.address, "actor": [echo.id.node, echo.id.serial]}
                print(json.dumps(ready), flush=True)
                await _stdin_closed()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), sys.argv[2], float(sys.argv[3]))
