"""``trio-gm member --json`` processes, driven from trio: on this host or a simulated one.

A :class:`MemberProcess` starts one member in a process of its own (inside a
:class:`~trio_gm.testing.netns.Host`'s network namespace if given one),
collects the JSON events it prints (``ready``, ``msg``, ``members_changed``,
``store_away``, ``terminate``...), waits for the ones a test or a soak needs,
and writes its commands (``send``, ``confirm``, ``flood N``, ``members``,
``quit``). What it printed stays in :attr:`MemberProcess.events`, in order:
the log a checker reads.

A long run that checks as it goes (the nemesis soak) passes ``on_event``,
called with every event as it is read, and ``keep_messages=False``, so that
the ``msg`` events are not kept as well; ``log`` is a file that gets every
line, after the time it was read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from .netns import Host

__all__ = ["DEFAULT_WAIT", "MemberProcess"]

#: Seconds :meth:`MemberProcess.expect` waits for an event by default.
DEFAULT_WAIT = 20.0


class MemberProcess:
    """One ``python -m trio_gm.cli member --json`` process and what it printed."""

    def __init__(
        self,
        name: str,
        *,
        host: Host | None = None,
        wait: float = DEFAULT_WAIT,
        on_event: Callable[[MemberProcess, dict[str, Any]], None] | None = None,
        keep_messages: bool = True,
        log: IO[bytes] | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.wait = wait
        self.on_event = on_event
        self.keep_messages = keep_messages
        #: Where every line read goes too, after its :func:`time.monotonic` read time.
        self.log = log
        #: Every event it printed, in order (without the ``msg`` ones if not ``keep_messages``).
        self.events: list[dict[str, Any]] = []
        self._changed = trio.Event()
        self.process: trio.Process | None = None
        #: The member id and node address it printed when ready ("" before).
        self.id = ""
        self.address = ""
        #: Set once its standard output closed (it exited, or is about to).
        self.closed = trio.Event()

    def __repr__(self) -> str:
        where = f" on {self.host.name}" if self.host is not None else ""
        return f"<MemberProcess {self.name}{where} {self.id or '(not ready)'}>"

    async def start(
        self, nursery: trio.Nursery, args: Sequence[str], *, stderr: Any = None
    ) -> None:
        """Start it with ``trio-gm member`` arguments ``args``; return once it is ready.

        ``stderr``: where its standard error goes (default: inherited).
        """
        cmd: list[str] = [sys.executable, "-m", "trio_gm.cli", "member", "--json", *args]
        if self.host is not None:
            cmd = self.host.command(cmd)
        self.process = await trio.lowlevel.open_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env={**os.environ}
        )
        nursery.start_soon(self._read)
        ready = await self.expect(lambda e: e["event"] in ("ready", "terminate"))
        if ready["event"] != "ready":
            raise RuntimeError(f"{self!r} stopped before it was ready: {ready}")
        self.id, self.address = ready["id"], ready["address"]

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        buffer = b""
        try:
            async for chunk in self.process.stdout:
                *lines, buffer = (buffer + chunk).split(b"\n")
                if not lines:
                    continue
                if self.log is not None:
                    stamp = b"%.3f " % time.monotonic()
                    self.log.writelines(stamp + line + b"\n" for line in lines)
                for line in lines:
                    event = json.loads(line)
                    if self.on_event is not None:
                        self.on_event(self, event)
                    if self.keep_messages or event["event"] != "msg":
                        self.events.append(event)
                self._wake()
        finally:
            self.closed.set()
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def expect(
        self, predicate: Callable[[dict[str, Any]], bool], *, after: int = 0
    ) -> dict[str, Any]:
        """The first event (in order) matching ``predicate``, waiting up to ``wait`` seconds.

        ``after``: look only at ``events[after:]`` (``len(events)`` before a
        command: what it printed, not what an earlier one did). (For another
        bound, wrap the call in ``trio.fail_after`` or set ``wait``.)
        """
        wait = self.wait
        try:
            with trio.fail_after(wait):
                while True:
                    for index in range(after, len(self.events)):
                        event = self.events[index]
                        if predicate(event):
                            return event
                    after = max(after, len(self.events))
                    if self.closed.is_set():
                        raise AssertionError(f"{self!r} exited without the expected event")
                    await self._changed.wait()
        except trio.TooSlowError:
            others = [e for e in self.events if e["event"] != "msg"]
            raise AssertionError(
                f"{self.name} ({self.id}) did not see the expected event within {wait}s; "
                f"its last non-message events: {others[-8:]}"
            ) from None

    async def command(self, line: str) -> None:
        """Write one command line to its input."""
        assert self.process is not None
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    def messages_from(self, sender: str) -> list[Any]:
        """What it delivered from member ``sender`` (an id as printed), in order."""
        return [e["msg"] for e in self.events if e["event"] == "msg" and e["sender"] == sender]

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self) -> None:
        """``quit``, and wait for the exit (killing it if it does not go in time)."""
        if self.process is None or self.process.returncode is not None:
            return
        try:
            await self.command("quit")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        with trio.move_on_after(self.wait):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
