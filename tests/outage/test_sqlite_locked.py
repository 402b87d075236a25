"""SQLite held locked by another process: the group waits, then goes on or stops.

Another process holds ``BEGIN EXCLUSIVE`` on the store's file while three
members flood and one of them is killed. Recording that death needs the
write lock: shorter than ``outage_timeout`` and the death goes through once
the lock is released, with nothing lost; longer and the survivors stop with
a ``StoreUnavailable`` that says "locked", not "conflict".
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import trio_gm
from tests.outage.flood import (
    Flooder,
    Recorder,
    check_delivery,
    confirms_after,
    flooding,
    full_ring,
    until,
)

_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@contextlib.asynccontextmanager
async def locked(path: Path) -> AsyncIterator[trio.Event]:
    """Another process holds the database's write lock until the yielded event is set."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _LOCKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    release = trio.Event()
    try:
        with trio.fail_after(30):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(64)
                assert chunk, "the lock holder exited before locking"
                line += chunk
        assert line == b"locked\n"
        yield release
    finally:
        with trio.CancelScope(shield=True):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await proc.stdin.send_all(b"release\n")
            with trio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def sqlite_group(
    path: Path, *, outage_timeout: float, members: int = 3
) -> AsyncIterator[tuple[trio_gm.GroupStore, list[Flooder]]]:
    url = f"sqlite:///{path}"
    async with trio_gm.open_store(url, lock_timeout=0.2, outage_timeout=outage_timeout) as store:
        await store.create_tables()
        async with trio_gm.open_node(store) as node, contextlib.AsyncExitStack() as stack:
            flooders = []
            for _ in range(members):
                recorder = Recorder()
                member = await stack.enter_async_context(node.open_member("g", recorder))
                flooders.append(Flooder(member, recorder))
            await full_ring(flooders)
            yield store, flooders


async def test_sqlite_locked_for_less_than_the_timeout_delays_a_death_and_loses_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gm.db"
    async with sqlite_group(path, outage_timeout=30) as (store, flooders):
        victim, survivors = flooders[2], flooders[:2]
        async with flooding(flooders):
            await confirms_after(flooders, 0.0)
            async with locked(path):
                victim.member.kill()
                # The survivors' neighbour must record the death: it waits for the lock.
                await until(lambda: store.statistics().unavailable_for > 0, "the store locked")
                await trio.sleep(3)  # the lock is held 3 s
                assert all(f.member.alive for f in survivors)
                assert all(victim.member.id not in f.recorder.deaths for f in survivors)
            released = trio.current_time()
            await confirms_after(survivors, released, count=2)
        for flooder in survivors:
            await flooder.finish()
        totals = check_delivery(survivors, dead=[victim])
        stats = store.statistics()
        assert stats.busy_errors > 0
        assert stats.outages >= 1
        assert stats.unavailable_for == 0.0
        assert totals["messages"] > 0


async def test_sqlite_locked_past_the_timeout_stops_the_members_that_need_it_saying_locked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gm.db"
    async with sqlite_group(path, outage_timeout=2) as (store, flooders):
        victim, survivors = flooders[2], flooders[:2]
        async with flooding(flooders), locked(path):
            await confirms_after(flooders, 0.0)
            victim.member.kill()
            with trio.fail_after(30):
                for flooder in survivors:
                    await flooder.recorder.terminated.wait()
        for flooder in survivors:
            reason = flooder.recorder.reason
            assert isinstance(reason, trio_gm.StoreUnavailable), reason
            message = str(reason)
            assert "locked" in message
            assert "conflict" not in message
            assert store.url in message
            assert reason.unavailable_for is not None
            assert reason.unavailable_for >= 2
            with pytest.raises(trio_gm.MemberStopped) as info:
                await flooder.member.group_members()
            assert info.value.__cause__ is reason
