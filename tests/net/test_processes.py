"""Members in separate OS processes sharing a PostgreSQL store."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.conftest import postgres_schema

from .procs import MemberProcess

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg_group(postgres_url: str) -> AsyncIterator[tuple[str, str]]:
    with postgres_schema(postgres_url) as schema:
        yield postgres_url, schema


def _args(url: str, schema: str, cookie: Path, heartbeat: float = 5.0) -> list[str]:
    # The members print every delivery to a pipe this test reads; on a busy
    # machine a full pipe stalls a member's event loop, heartbeats included:
    # keep the interval well above such stalls except where it is the point.
    return [
        "--store", url, "--schema", schema, "--group", "procs", "--listen", "127.0.0.1:0",
        "--cookie-file", str(cookie), "--heartbeat", str(heartbeat),
    ]  # fmt: skip


class Launcher:
    """Starts ``trio-gm member`` processes of one group; stops them all at the end."""

    def __init__(self, args: list[str], nursery: trio.Nursery) -> None:
        self.args = args
        self.nursery = nursery
        self.procs: list[MemberProcess] = []

    async def start(self, name: str) -> MemberProcess:
        proc = MemberProcess(name)
        self.procs.append(proc)
        await proc.start(self.nursery, self.args)
        return proc


@asynccontextmanager
async def members(
    pg_group: tuple[str, str], tmp_path: Path, heartbeat: float = 5.0
) -> AsyncIterator[Launcher]:
    url, schema = pg_group
    cookie = tmp_path / "cookie"
    cookie.write_text("s3cret\n")
    cookie.chmod(0o600)  # a cookie file others can read is refused
    async with trio.open_nursery() as nursery:
        launcher = Launcher(_args(url, schema, cookie, heartbeat), nursery)
        try:
            yield launcher
        finally:
            with trio.CancelScope(shield=True):
                for proc in launcher.procs:
                    if proc.process is not None and proc.process.returncode is None:
                        proc.signal(signal.SIGCONT)  # in case a test stopped it
                    await proc.stop()
            nursery.cancel_scope.cancel()


async def test_three_processes_then_sigkill_mid_broadcast_then_a_new_joiner(
    pg_group: tuple[str, str], tmp_path: Path
) -> None:
    async with members(pg_group, tmp_path) as launcher:
        p1, p2, p3 = [await launcher.start(name) for name in ("p1", "p2", "p3")]
        await p1.expect(lambda e: e["event"] == "members_changed" and e["births"] == [p3.id])

        # Broadcast, confirmed broadcast, order.
        await p1.command("flood 200")
        await p2.command("flood 200")
        await p3.command("confirm done-3")
        await p3.expect(lambda e: e["event"] == "confirmed")
        for proc in (p1, p2, p3):
            for sender in (p1, p2):
                await proc.expect(
                    lambda e, s=sender: (
                        e["event"] == "msg" and e["sender"] == s.id and e["msg"] == 199
                    )
                )
                assert proc.messages_from(sender.id) == list(range(200))

        # SIGKILL p1 in the middle of a stream of broadcasts.
        await p1.command("flood-forever")
        await p2.expect(lambda e: e["event"] == "msg" and e["sender"] == p1.id and e["msg"] == 300)
        p1.signal(signal.SIGKILL)
        for survivor in (p2, p3):
            await survivor.command("confirm after-kill-1")
            await survivor.command("confirm after-kill-2")
        for survivor in (p2, p3):
            await survivor.expect(
                lambda e: e["event"] == "members_changed" and p1.id in e["deaths"]
            )
        # The first 200 came from "flood 200"; the stream restarts at 0.
        got2, got3 = p2.messages_from(p1.id)[200:], p3.messages_from(p1.id)[200:]
        assert len(got2) > 300
        assert got2 == list(range(len(got2))), "p2 has a gap in p1's messages"
        assert got3 == list(range(len(got3))), "p3 has a gap in p1's messages"
        assert got2 == got3, "a message of p1 reached one survivor only"

        # A new process joins and receives what is sent next.
        p4 = await launcher.start("p4")
        await p2.command("send hello-p4")
        await p4.expect(lambda e: e["event"] == "msg" and e["msg"] == "hello-p4")
        joined = await p4.expect(lambda e: e["event"] == "joined")
        assert sorted(joined["members"]) == sorted([p2.id, p3.id, p4.id])


async def test_a_stopped_peer_is_declared_down_within_the_heartbeat_interval(
    pg_group: tuple[str, str], tmp_path: Path
) -> None:
    async with members(pg_group, tmp_path, heartbeat=1.0) as launcher:
        a, b = await launcher.start("a"), await launcher.start("b")
        await a.expect(lambda e: e["event"] == "members_changed" and e["births"] == [b.id])
        b.signal(signal.SIGSTOP)
        start = trio.current_time()
        await a.command("confirm ping")  # cannot complete while b is stopped...
        # ...until b is declared down (no heartbeat for 1 s): a is then alone.
        await a.expect(lambda e: e["event"] == "confirmed")
        assert trio.current_time() - start < 1.0 + 2.0  # the interval, plus slack
        await a.command("confirm twice")
        await a.expect(lambda e: e["event"] == "members_changed" and b.id in e["deaths"])


async def test_ctrl_c_leaves_the_group_cleanly(pg_group: tuple[str, str], tmp_path: Path) -> None:
    async with members(pg_group, tmp_path) as launcher:
        a, b = await launcher.start("a"), await launcher.start("b")
        await a.expect(lambda e: e["event"] == "members_changed" and e["births"] == [b.id])
        b.signal(signal.SIGINT)
        await b.expect(lambda e: e["event"] == "terminate" and e["reason"] == "normal")
        assert b.process is not None
        with trio.fail_after(10):
            assert await b.process.wait() == 0
        await a.command("confirm one")
        await a.command("confirm two")
        await a.expect(lambda e: e["event"] == "members_changed" and b.id in e["deaths"])
