"""An actor for transport tests: it answers calls and records what it gets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from trio_gm.actor import Actor, ActorContext, From, Reply


class Echo(Actor):
    """Answers a call with ``("echo", request)``; records casts and infos.

    With ``sizes``, bytes (alone, or second in a pair) are recorded as their
    length, so that tests moving megabytes do not keep them.
    """

    def __init__(self, *, sizes: bool = False) -> None:
        self.seen: list[Any] = []
        self.changed = trio.Event()
        self.sizes = sizes

    def init(self, ctx: ActorContext) -> None:
        self.ctx = ctx

    def handle_call(self, request: Any, from_: From) -> Reply:
        return Reply(("echo", request))

    def _record(self, msg: Any) -> None:
        if self.sizes:
            if isinstance(msg, bytes):
                msg = ("bytes", len(msg))
            elif isinstance(msg, tuple) and len(msg) == 2 and isinstance(msg[1], bytes):
                msg = (msg[0], len(msg[1]))
        self.seen.append(msg)
        self.changed.set()

    handle_cast = handle_info = _record

    async def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 10) -> Any:
        """The first thing recorded that ``predicate`` accepts, waiting for it."""
        with trio.fail_after(timeout):
            while True:
                for item in self.seen:
                    if predicate(item):
                        return item
                self.changed = trio.Event()
                await self.changed.wait()
