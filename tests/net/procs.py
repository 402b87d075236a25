"""Drive ``trio-gm member --json`` processes from a test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

WAIT = 20.0


#: The repository, so that ``python -m tests.net.…`` finds the test modules.
ROOT = Path(__file__).resolve().parents[2]


async def open_module_process(module: str, *args: str) -> trio.Process:
    """``python -m module args...`` from the repository, with pipes on all three."""
    return await trio.lowlevel.open_process(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


class MemberProcess:
    """One ``python -m trio_gm.cli member --json`` process and what it printed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []
        self._changed = trio.Event()
        self.process: trio.Process | None = None
        self.id = ""
        self.address = ""

    async def start(self, nursery: trio.Nursery, args: list[str], *, stderr: Any = None) -> None:
        """Start it and wait until it is ready; ``stderr``: where its standard error goes."""
        cmd = [sys.executable, "-m", "trio_gm.cli", "member", "--json", *args]
        self.process = await trio.lowlevel.open_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env={**os.environ}
        )
        nursery.start_soon(self._read)
        ready = await self.expect(lambda e: e["event"] == "ready")
        self.id, self.address = ready["id"], ready["address"]

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.events.append(json.loads(line))
                self._changed.set()
                self._changed = trio.Event()

    async def expect(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first event (in order) matching ``predicate``, waiting for it."""
        try:
            with trio.fail_after(WAIT):
                while True:
                    for event in self.events:
                        if predicate(event):
                            return event
                    await self._changed.wait()
        except trio.TooSlowError:
            others = [e for e in self.events if e["event"] != "msg"]
            raise AssertionError(
                f"{self.name} ({self.id}) did not see the expected event within {WAIT}s; "
                f"its last non-message events: {others[-8:]}"
            ) from None

    async def command(self, line: str) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    def messages_from(self, sender: str) -> list[Any]:
        return [e["msg"] for e in self.events if e["event"] == "msg" and e["sender"] == sender]

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        try:
            await self.command("quit")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        with trio.move_on_after(WAIT):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
