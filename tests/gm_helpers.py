"""Callbacks and an event log shared by the gm tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

import trio_gm

#: How long a test waits for an expected event before it fails.
WAIT = 10.0


class Events:
    """Every callback of every member, in order, for selective receive.

    ``receive`` takes the first event that matches (as an Erlang ``receive``
    does), waiting up to ``WAIT`` seconds; ``assert_empty`` at the end of a
    test proves no unexpected callback happened.
    """

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self._changed = trio.Event()

    def add(self, event: tuple[Any, ...]) -> None:
        self.log.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def receive(self, predicate: Callable[[tuple[Any, ...]], bool]) -> tuple[Any, ...]:
        with trio.fail_after(WAIT):
            while True:
                for i, event in enumerate(self.log):
                    if predicate(event):
                        return self.log.pop(i)
                await self._changed.wait()

    async def expect(self, *event: Any) -> tuple[Any, ...]:
        return await self.receive(lambda e: e == event)

    def assert_empty(self) -> None:
        assert self.log == [], f"unexpected callbacks: {self.log}"


class Reporter:
    """gm callbacks that report to ``Events``; ``args`` is the member's label."""

    def __init__(self, events: Events) -> None:
        self.events = events

    def joined(self, args: Any, members: list[trio_gm.MemberId]) -> None:
        self.events.add(("joined", args, sorted(members)))

    def members_changed(
        self, args: Any, births: list[trio_gm.MemberId], deaths: list[trio_gm.MemberId]
    ) -> None:
        self.events.add(("members_changed", args, sorted(births), sorted(deaths)))

    def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:
        self.events.add(("msg", args, sender, msg))

    def handle_terminate(self, args: Any, reason: Any) -> None:
        self.events.add(("terminate", args, reason))


class Blocker(Reporter):
    """A reporter whose member ``blocked`` stops in ``handle_msg`` on "block".

    It holds that member's whole mailbox while the test arranges what
    arrives next, then ``release`` lets it carry on.
    """

    def __init__(self, events: Events, blocked: Any) -> None:
        super().__init__(events)
        self.blocked = blocked
        self.gate = trio.Event()

    async def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:  # type: ignore[override]
        super().handle_msg(args, sender, msg)
        if msg == "block" and args == self.blocked:
            await self.gate.wait()

    def release(self) -> None:
        self.gate.set()
