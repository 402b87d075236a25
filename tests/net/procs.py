"""Drive ``trio-gm member --json`` processes (and test modules) from a test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from trio_gm.testing.member_process import DEFAULT_WAIT as WAIT
from trio_gm.testing.member_process import MemberProcess

__all__ = ["ROOT", "WAIT", "MemberProcess", "Stderr", "open_module_process"]


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


class Stderr:
    """All a process writes on standard error, once it has closed it."""

    def __init__(self) -> None:
        self.text = ""
        self.closed = trio.Event()

    async def collect(self, stream: trio.abc.ReceiveStream) -> None:
        data = b""
        try:
            async for chunk in stream:
                data += chunk
        finally:
            self.text = data.decode(errors="replace")
            self.closed.set()
