"""The command line, run as a user runs it: as a subprocess."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.net.procs import WAIT, MemberProcess, Stderr
from trio_gm import MemberId
from trio_gm.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED_BY_GROUP,
    EXIT_STOPPED_BY_STORE,
    EXIT_USAGE,
)
from trio_gm.store import open_store
from trio_gm.testing.postgres import PostgresServer


def trio_gm(*args: str | bytes, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_gm.cli", *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )


def test_demo_runs_and_every_guarantee_holds() -> None:
    result = trio_gm("demo", "--seconds", "3", "--members", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every guarantee held" in result.stdout
    assert "killed" in result.stdout  # one member was killed part-way
    assert "m5" in result.stdout  # and one joined


def test_soak_for_a_few_seconds() -> None:
    result = trio_gm("soak", "--seconds", "3", "--seed", "7")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("0 violations")


@pytest.mark.postgres
def test_soak_across_nodes_with_store_outages() -> None:
    result = trio_gm("soak", "--nodes", "3", "--store-outages", "--seconds", "5", "--seed", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "store outage:" in result.stdout
    assert "store outages" in result.stdout
    assert result.stdout.strip().endswith("0 violations")


def test_soak_store_outages_bring_their_own_store() -> None:
    result = trio_gm("soak", "--store-outages", "--store", "sqlite://")
    assert_one_line_failure(result, 2, "leave out --store")


def test_bench_json() -> None:
    result = trio_gm("bench", "--members", "3", "--seconds", "1", "--confirms", "50", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["members"] == 3
    assert figures["delivered_to_all_per_s"] > 0
    assert len(figures["received_per_s"]) == 3
    assert set(figures["confirmed_us"]) >= {"p50", "p99"}


def test_bench_with_one_process_per_member() -> None:
    result = trio_gm("bench", "--members", "2", "--seconds", "1", "--processes", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["processes"] is True
    assert figures["delivered_to_all_per_s"] > 0
    # Memory per member process: present and plausible (no bound on its size:
    # a figure, not a timing or a limit).
    memory = figures["memory_per_member_kib"]
    assert isinstance(memory, float | int)
    assert 0 <= memory < 10 * 1024 * 1024
    assert len(figures["rss_per_process_kib"]) == 2
    assert len(figures["rss_growth_per_process_kib"]) == 2
    assert len(figures["delivered_per_process"]) == 2
    if sys.platform == "linux":
        assert all(0 < rss < 10 * 1024 * 1024 for rss in figures["rss_per_process_kib"])
        assert all(
            isinstance(growth, float | int) for growth in figures["rss_growth_per_process_kib"]
        )
    assert all(count > 0 for count in figures["delivered_per_process"])
    assert len(figures["frames_in_per_s"]) == 2
    assert all(rate >= 0 for rate in figures["frames_in_per_s"] + figures["bytes_in_per_s"])


def assert_one_line_failure(
    result: subprocess.CompletedProcess[str], status: int, message: str
) -> None:
    """Failed with ``status`` and said why on one line of standard error (after
    argparse's usage, for bad arguments), with no traceback."""
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    if lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if "error:" in line]
    assert len(lines) == 1, result.stderr
    assert message in lines[0], result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--members", "0"], "expected at least 1, got 0"),
        (["demo", "--seconds", "soon"], "expected a number of seconds, got 'soon'"),
        (["soak", "--seconds", "-1"], "expected a positive number of seconds"),
        (["frobnicate"], "invalid choice: 'frobnicate' (choose from 'demo', 'bench', 'soak', "),
        ([], "the following arguments are required: COMMAND"),
        (["--log-level", "LOUD", "demo"], "invalid choice: 'LOUD'"),
        (
            ["soak", "--seconds", "1", "--store", "postgresql+psycopg://postgres@127.0.0.1:1/x"],
            "cannot connect to postgresql+psycopg://postgres@127.0.0.1:1/x",
        ),
        (
            ["bench", "--processes", "--store", "postgresql+psycopg://postgres@127.0.0.1:1/x"],
            "cannot connect to postgresql+psycopg://postgres@127.0.0.1:1/x",
        ),
        (["soak", "--seconds", "1", "--store", "nosuchdb://x"], "nosuchdb"),
        (["demo", "--store", "not a url"], "malformed store URL 'not a url'"),
        (["bench", "--store", "sqlite:////nonexistent/dir/x.db"], "unable to open database file"),
        (
            ["member", "--store", "sqlite://", "--group", "g", "--cookie-file", "/nonexistent"],
            "cannot read the cookie file '/nonexistent'",
        ),
        (
            ["member", "--store", "sqlite://", "--group", "g", "--cookie-file", "/dev/null"],
            "the cookie file '/dev/null' is not a regular file",
        ),
        (
            [
                "bench-worker",
                "--store",
                "sqlite://",
                "--cookie-file",
                "/nonexistent",
                "--seconds",
                "1",
            ],
            "cannot read the cookie file '/nonexistent'",
        ),
        (
            ["member", "--store", "sqlite://", "--group", "g", "--schema", "s"],
            "schema='s' needs PostgreSQL",
        ),
        (
            ["member", "--store", "sqlite://", "--group", "g", "--listen", "nonsense"],
            "expected an address 'host:port' with a port 0-65535, got 'nonsense'",
        ),
        (
            ["member", "--store", "sqlite://", "--group", "g", "--listen", "127.0.0.1:70000"],
            "with a port 0-65535, got '127.0.0.1:70000'",
        ),
        (
            ["member", "--store", "sqlite://", "--group", "g", "--listen", "192.0.2.1:0"],
            "cannot listen on 192.0.2.1:0: [Errno 99]",
        ),
        (
            ["member", "--store", "sqlite://", "--group", "g", "--heartbeat", "0"],
            "argument --heartbeat: expected a positive number of seconds, got '0'",
        ),
        (
            ["member", "--store", "sqlite://", "--group", "x" * 256],
            "argument --group: group name 'xxxxxxxxxx",
        ),
        (["member", "--store", "sqlite://", "--group", ""], "group name must be a non-empty str"),
        # A byte that is not UTF-8 reaches Python as a lone surrogate.
        (["member", "--store", "sqlite://", "--group", b"room\xff"], "lone surrogate '\\udcff'"),
    ],
)
def test_bad_arguments_are_clear_errors_without_tracebacks(
    args: list[str | bytes], message: str
) -> None:
    assert_one_line_failure(trio_gm(*args), EXIT_USAGE, message)


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = trio_gm("member", "--store", "sqlite://", "--group", "g", "--listen",
                         f"127.0.0.1:{port}")  # fmt: skip
    assert_one_line_failure(
        result, EXIT_USAGE, f"cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use"
    )


def test_log_level_debug_shows_the_traceback_too() -> None:
    result = trio_gm(
        "--log-level", "DEBUG", "member", "--store", "sqlite://", "--group", "g",
        "--listen", "nonsense",
    )  # fmt: skip
    assert result.returncode == EXIT_USAGE
    assert "Traceback" in result.stderr
    assert "ValueError: expected an address 'host:port'" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "trio-gm member: expected an address 'host:port' with a port 0-65535, got 'nonsense'"
    )


def test_help_lists_the_commands_and_the_exit_statuses() -> None:
    result = trio_gm("--help")
    assert result.returncode == EXIT_OK
    assert "SUPPRESS" not in result.stdout
    assert "bench-worker" not in result.stdout
    for command in ("demo", "bench", "soak", "member"):
        assert f"    {command}  " in result.stdout
    member = trio_gm("member", "--help").stdout
    for help_text in (result.stdout, member):
        assert "exit status:" in help_text
        for status in ("0", "1", "2", "3", "4", "130"):
            assert f"\n  {status} " in help_text


def test_every_command_explains_itself() -> None:
    for command in ("demo", "bench", "soak", "member"):
        result = trio_gm(command, "--help")
        assert result.returncode == 0
        assert "usage: trio-gm" in result.stdout
        assert "exit status" in result.stdout


# -- trio-gm member, run as a user runs it ---------------------------------------

GROUP = "cli"


class Members:
    """``trio-gm member --json`` processes of one group on one SQLite file."""

    def __init__(self, url: str, nursery: trio.Nursery) -> None:
        self.url = url
        self.nursery = nursery
        self.procs: list[MemberProcess] = []
        self.stderr: dict[str, Stderr] = {}

    async def start(self, name: str, *extra: str) -> MemberProcess:
        proc = MemberProcess(name)
        self.procs.append(proc)
        await proc.start(
            self.nursery,
            ["--store", self.url, "--group", GROUP, "--listen", "127.0.0.1:0", *extra],
            stderr=subprocess.PIPE,
        )
        assert proc.process is not None
        assert proc.process.stderr is not None
        self.stderr[name] = Stderr()
        self.nursery.start_soon(self.stderr[name].collect, proc.process.stderr)
        return proc

    async def exit_status(self, proc: MemberProcess) -> tuple[int, str]:
        """Wait until ``proc`` exits, with nothing written to its input meanwhile."""
        assert proc.process is not None
        with trio.fail_after(WAIT):
            status = await proc.process.wait()
            await self.stderr[proc.name].closed.wait()
        return status, self.stderr[proc.name].text

    async def ids(self) -> dict[str, MemberId]:
        """The stored ring's member ids, by the name each process printed."""
        async with open_store(self.url) as store:
            group = await store.read_group(GROUP)
        assert group is not None
        return {str(m.id): m.id for m in group.members}


@asynccontextmanager
async def members(tmp_path: Path, url: str | None = None) -> AsyncIterator[Members]:
    async with trio.open_nursery() as nursery:
        launcher = Members(url or f"sqlite:///{tmp_path / 'gm.db'}", nursery)
        try:
            yield launcher
        finally:
            with trio.CancelScope(shield=True):
                for proc in launcher.procs:
                    await proc.stop()
            nursery.cancel_scope.cancel()


def assert_said_once(stderr: str, *parts: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for part in parts:
        assert part in lines[0], stderr


async def test_a_member_that_loses_its_membership_says_so_and_exits_3(tmp_path: Path) -> None:
    async with members(tmp_path) as group:
        a = await group.start("a")
        b = await group.start("b")
        await a.expect(lambda e: e["event"] == "members_changed" and e["births"] == [b.id])
        ids = await group.ids()
        # What the others do to a member they find unresponsive: record it dead.
        async with open_store(group.url) as store:
            await store.record_dead_member(GROUP, ids[b.id], ids[a.id])
        await b.command("flood-forever")  # a's next membership check finds it dead
        status, stderr = await group.exit_status(a)
        assert status == EXIT_STOPPED_BY_GROUP
        assert_said_once(
            stderr,
            f"trio-gm member: member {a.id} of group 'cli' lost its membership",
            "the other members recorded it dead",
        )
        assert a.events[-1] == {"event": "terminate", "reason": "shutdown"}
        # The rest of the group carries on: b sees a's death, confirms, and
        # `quit` with a flood still running is a clean exit.
        await b.expect(lambda e: e["event"] == "members_changed" and e["deaths"] == [a.id])
        await b.command("confirm after")
        await b.expect(lambda e: e["event"] == "confirmed")
        await b.command("quit")
        status, stderr = await group.exit_status(b)
        assert (status, stderr) == (EXIT_OK, "")
        assert b.events[-1] == {"event": "terminate", "reason": "normal"}


async def test_a_deleted_group_stops_every_member_with_exit_3(tmp_path: Path) -> None:
    async with members(tmp_path) as group:
        a = await group.start("a")
        b = await group.start("b")
        await a.expect(lambda e: e["event"] == "members_changed" and e["births"] == [b.id])
        async with open_store(group.url) as store:
            await store.forget_group(GROUP)
        await b.command("flood-forever")
        for proc in (a, b):
            status, stderr = await group.exit_status(proc)
            assert status == EXIT_STOPPED_BY_GROUP
            assert_said_once(stderr, f"member {proc.id} of group 'cli' lost its membership")
            assert proc.events[-1] == {"event": "terminate", "reason": "shutdown"}


def _corrupt_the_row(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE gm_group SET members = '\"not a ring\"'")
    conn.close()


async def test_a_store_that_fails_mid_run_is_one_line_and_exit_4(tmp_path: Path) -> None:
    async with members(tmp_path) as group:
        a = await group.start("a")
        b = await group.start("b")
        await a.expect(lambda e: e["event"] == "members_changed" and e["births"] == [b.id])
        await trio.to_thread.run_sync(_corrupt_the_row, tmp_path / "gm.db")
        await b.command("flood-forever")  # a's next membership check reads the row
        for proc in (a, b):  # and b's, once a's end breaks the ring
            status, stderr = await group.exit_status(proc)
            assert status == EXIT_STOPPED_BY_STORE, stderr
            assert_said_once(
                stderr,
                f"trio-gm member: member {proc.id} of group 'cli' stopped: the store failed: ",
                "the stored row of group 'cli' is malformed",
            )


async def test_quit_after_flood_forever_leaves_cleanly(tmp_path: Path) -> None:
    async with members(tmp_path) as group:
        a = await group.start("a")
        await a.command("flood-forever")
        await a.expect(lambda e: e["event"] == "msg" and e["msg"] == 10)  # it is flooding
        await a.command("flood twelve")
        await a.expect(lambda e: e["event"] == "error")  # a typo is not the end
        await a.command("quit")
        status, stderr = await group.exit_status(a)
        assert (status, stderr) == (EXIT_OK, "")
        assert a.events[-1] == {"event": "terminate", "reason": "normal"}
        errors = [e for e in a.events if e["event"] == "error"]
        assert errors == [
            {"event": "error", "message": "flood takes a count (a whole number >= 0), got 'twelve'"}
        ]


async def test_end_of_input_after_flood_forever_leaves_cleanly(tmp_path: Path) -> None:
    async with members(tmp_path) as group:
        a = await group.start("a")
        await a.command("flood-forever")
        await a.expect(lambda e: e["event"] == "msg" and e["msg"] == 10)
        assert a.process is not None
        assert a.process.stdin is not None
        await a.process.stdin.aclose()
        status, stderr = await group.exit_status(a)
        assert (status, stderr) == (EXIT_OK, "")


async def test_numbered_confirms_every_eth_and_ends_with_a_final_confirmed_one(
    tmp_path: Path,
) -> None:
    async with members(tmp_path) as group:
        a = await group.start("a")
        b = await group.start("b")
        await a.expect(lambda e: e["event"] == "members_changed" and e["births"] == [b.id])
        before = time.monotonic()
        await a.command("numbered 1000 3")
        await a.command("numbered 5 1")
        await a.expect(lambda e: e["event"] == "confirmed" and e["msg"] == 8)
        await a.command("numbered-end")
        last = (await a.expect(lambda e: e["event"] == "numbered_end"))["last"]
        after = time.monotonic()
        confirmed = [e for e in a.events if e["event"] == "confirmed"]
        # Every third, then the final one, each with the time its call began.
        assert [e["msg"] for e in confirmed] == [*range(2, last, 3), last]
        sent = [e["sent"] for e in confirmed]
        assert sent == sorted(sent)
        assert before < sent[0] <= sent[-1] < after
        # b had every number before a's final confirmed broadcast returned.
        await b.expect(lambda e: e["event"] == "msg" and e["sender"] == a.id and e["msg"] == last)
        assert b.messages_from(a.id) == list(range(last + 1))
        for bad in (
            "numbered",
            "numbered 0 1",
            "numbered 5 0",
            "numbered five 1",
            "numbered 1 2 3",
        ):
            await b.command(bad)
        await b.command("numbered-end")
        await b.command("members")
        await b.expect(lambda e: e["event"] == "members")
        usage = (
            "numbered takes a rate (messages a second, > 0) and how often to confirm "
            "(every E-th message, E >= 1), got "
        )
        assert [e["message"] for e in b.events if e["event"] == "error"] == [
            usage + "''",
            usage + "'0 1'",
            usage + "'5 0'",
            usage + "'five 1'",
            usage + "'1 2 3'",
            "numbered-end without numbered",
        ]
        assert [e["message"] for e in a.events if e["event"] == "error"] == [
            "numbered is already running"
        ]


def test_a_closed_standard_output_is_one_line_and_exit_1() -> None:
    # Like `trio-gm soak | head -1`, with the reader gone before the first line.
    reader, writer = socket.socketpair()
    reader.close()
    with writer:
        result = subprocess.run(
            [sys.executable, "-m", "trio_gm.cli", "soak", "--seconds", "0.5"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    assert_one_line_failure(result, EXIT_FAILED, "standard output was closed")


@pytest.mark.postgres
async def test_member_says_when_the_store_goes_away_and_comes_back(
    tmp_path: Path, private_postgres: PostgresServer
) -> None:
    async with members(tmp_path, private_postgres.url) as group:
        a = await group.start("a")
        b = await group.start("b")
        await a.expect(lambda e: e["event"] == "members_changed" and e["births"] == [b.id])
        await b.command("flood-forever")  # activity: a checks its membership
        await private_postgres.kill_async()
        away = await a.expect(lambda e: e["event"] == "store_away")
        assert away["state"] == "unreachable"
        assert away["timeout"] == 30
        await private_postgres.start_async()
        back = await a.expect(lambda e: e["event"] == "store_back")
        # Seconds away, rounded to 0.1 s: from the first failed attempt, which
        # can come just before the restart (so 0.0 is a possible value).
        assert isinstance(back["after"], float)
        assert back["after"] >= 0
        await b.command("quit")
        await a.command("quit")
        for proc in (a, b):
            status, stderr = await group.exit_status(proc)
            assert status == 0, stderr
            assert "Traceback" not in stderr
            # Said once, on standard output, not again as a log line.
            assert "unreachable" not in stderr


@pytest.mark.postgres
async def test_member_whose_store_stays_away_past_its_timeout_says_so_and_exits_4(
    tmp_path: Path, private_postgres: PostgresServer
) -> None:
    async with members(tmp_path, private_postgres.url) as group:
        a = await group.start("a", "--store-outage-timeout", "1")
        b = await group.start("b", "--store-outage-timeout", "60")
        await a.expect(lambda e: e["event"] == "members_changed" and e["births"] == [b.id])
        await b.command("flood-forever")
        await private_postgres.kill_async()
        status, stderr = await group.exit_status(a)
        assert status == EXIT_STOPPED_BY_STORE, stderr
        assert_said_once(stderr, "unreachable for", "outage_timeout of 1 s")
        await private_postgres.start_async()
        await b.command("quit")


async def _two_groups(url: str) -> tuple[MemberId, MemberId]:
    first, second = MemberId("10.0.0.5:7000#ab", 1), MemberId("[fd00::2]:7000#cd", 3)
    async with open_store(url) as store:
        await store.create_tables()
        await store.prune_or_create_group("room", first)
        await store.record_new_member("room", first, second)
        await store.record_dead_member("room", first, second)
        await store.prune_or_create_group("lobby", MemberId("n", 1))
    return first, second


async def test_group_list_show_and_forget_tell_what_the_store_holds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gm.db'}"
    first, second = await _two_groups(url)
    listed = trio_gm("group", "list", "--store", url)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["lobby", "room"]
    assert json.loads(trio_gm("group", "list", "--store", url, "--json").stdout) == {
        "groups": ["lobby", "room"]
    }
    shown = trio_gm("group", "show", "room", "--store", url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "view version 2" in lines[0]
    assert "2 in the ring, 1 alive" in lines[0]
    assert lines[1].split() == ["1.", str(first), "on", "10.0.0.5", "alive"]
    assert lines[2].split() == ["2.", str(second), "on", "fd00::2", "dead"]
    as_json = json.loads(trio_gm("group", "show", "room", "--store", url, "--json").stdout)
    assert as_json == {
        "group": "room",
        "version": 2,
        "members": [
            {"id": str(first), "node": first.node, "host": "10.0.0.5", "dead": False},
            {"id": str(second), "node": second.node, "host": "fd00::2", "dead": True},
        ],
    }
    forgot = trio_gm("group", "forget", "lobby", "--store", url, "--json")
    assert json.loads(forgot.stdout) == {"event": "forgot", "group": "lobby", "existed": True}
    again = trio_gm("group", "forget", "lobby", "--store", url, "--json")
    assert json.loads(again.stdout)["existed"] is False
    assert trio_gm("group", "list", "--store", url).stdout.split() == ["room"]


def test_group_commands_fail_on_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert_one_line_failure(trio_gm("group", "list", "--store", url), 2, "create_tables")
    assert_one_line_failure(
        trio_gm("group", "show", "ghost", "--store", f"sqlite:///{tmp_path / 'none.db'}"),
        2,
        "create_tables",
    )
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/test"
    assert_one_line_failure(trio_gm("group", "list", "--store", unreachable), 2, "cannot connect")
    assert_one_line_failure(trio_gm("group", "show", "x" * 300, "--store", url), 2, "255")
