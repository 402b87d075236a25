"""A node always has a cookie: the per-user cookie file, as ``~/.erlang.cookie``."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trio

import trio_gm
from tests.gm_helpers import Events, Reporter
from trio_gm._cookie import COOKIE_FILE_ENV, default_cookie_path, load_cookie

from .procs import MemberProcess

HEX64 = re.compile(rb"[0-9a-f]{64}")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


async def _refused(node: trio_gm.Node, at_least: int = 1) -> None:
    """Wait until ``node`` has refused ``at_least`` incoming connections."""
    with trio.fail_after(10):
        while True:
            stats = node.statistics()
            assert stats is not None
            if stats.refused >= at_least:
                return
            await trio.sleep(0.01)


# -- no configuration for one user on one host --------------------------------------------


async def test_two_nodes_without_a_cookie_and_the_same_cookie_file_form_one_group(
    sqlite_store: trio_gm.GroupStore,
    events: Events,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "home" / "cookie"
    monkeypatch.setenv(COOKIE_FILE_ENV, str(path))
    async with (
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0") as n1,
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0") as n2,
        n1.open_member("g", Reporter(events), "a") as a,
        n2.open_member("g", Reporter(events), "b") as b,
    ):
        await a.confirmed_broadcast("from a")
        await events.expect("msg", "b", a.id, "from a")
        await b.confirmed_broadcast("from b")
        await events.expect("msg", "a", b.id, "from b")
        assert sorted(await a.group_members()) == sorted([a.id, b.id])
        assert n1.transport is not None
        assert n2.transport is not None
        assert n1.transport.cookie == n2.transport.cookie == path.read_bytes().strip()


async def test_the_cookie_file_is_made_with_mode_0600_in_a_0700_directory_with_64_hex_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(COOKIE_FILE_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = default_cookie_path()
    assert path == tmp_path / "config" / "trio-gm" / "cookie"
    cookie = await load_cookie()
    assert HEX64.fullmatch(cookie), cookie
    assert path.read_bytes() == cookie + b"\n"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert os.listdir(path.parent) == ["cookie"]  # the temporary file is gone
    # Read, not remade, from then on.
    assert await load_cookie() == cookie
    assert await load_cookie(path, create=False) == cookie


def test_the_cookie_file_location_honours_trio_gm_cookie_file_then_xdg_config_home_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(COOKIE_FILE_ENV, str(tmp_path / "explicit"))
    assert default_cookie_path() == tmp_path / "explicit"
    monkeypatch.setenv(COOKIE_FILE_ENV, "~/elsewhere/cookie")
    assert default_cookie_path() == tmp_path / "home" / "elsewhere" / "cookie"
    monkeypatch.delenv(COOKIE_FILE_ENV)
    assert default_cookie_path() == tmp_path / "xdg" / "trio-gm" / "cookie"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/is/ignored")
    assert default_cookie_path() == tmp_path / "home" / ".config" / "trio-gm" / "cookie"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert default_cookie_path() == tmp_path / "home" / ".config" / "trio-gm" / "cookie"


# -- creation races -----------------------------------------------------------------------

RACERS = 12
PROCESS_RACERS = 4  # each one imports trio_gm: slow on a small machine

_RACER = """
import sys, trio
from trio_gm._cookie import load_cookie
print("ready", flush=True)
assert sys.stdin.readline() == "go\\n"
print(trio.run(load_cookie, sys.argv[1]).decode(), flush=True)
"""


def _in_threads(path: Path) -> list[bytes]:
    barrier = threading.Barrier(RACERS)

    def race(_: int) -> bytes:
        barrier.wait()
        return trio.run(load_cookie, path)

    with ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(race, range(RACERS)))


async def _in_processes(path: Path) -> list[bytes]:
    procs: list[trio.Process] = []
    try:
        for _ in range(PROCESS_RACERS):
            procs.append(
                await trio.lowlevel.open_process(
                    [sys.executable, "-c", _RACER, str(path)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        for proc in procs:  # every one is ready before any starts
            assert await _line(proc) == b"ready"
        for proc in procs:
            assert proc.stdin is not None
            await proc.stdin.send_all(b"go\n")
        cookies = [await _line(proc) for proc in procs]
        for proc in procs:
            assert await proc.wait() == 0
        return cookies
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()


async def _line(proc: trio.Process) -> bytes:
    assert proc.stdout is not None
    line = b""
    with trio.fail_after(30):
        while not line.endswith(b"\n"):
            chunk = await proc.stdout.receive_some(1)
            assert chunk, "a racing process died"
            line += chunk
    return line.strip()


@pytest.mark.parametrize("racers", ["tasks", "threads", "processes"])
async def test_concurrent_creation_yields_one_cookie(tmp_path: Path, racers: str) -> None:
    path = tmp_path / "config" / "trio-gm" / "cookie"  # no directory yet either
    cookies: list[bytes] = []
    if racers == "tasks":

        async def race() -> None:
            cookies.append(await load_cookie(path))

        async with trio.open_nursery() as nursery:
            for _ in range(RACERS):
                nursery.start_soon(race)
    elif racers == "threads":
        cookies = await trio.to_thread.run_sync(_in_threads, path)
    else:
        cookies = await _in_processes(path)
    assert len(cookies) == (PROCESS_RACERS if racers == "processes" else RACERS)
    assert len(set(cookies)) == 1, cookies
    assert path.read_bytes() == cookies[0] + b"\n"
    assert os.listdir(path.parent) == ["cookie"]  # every temporary file is gone
    assert _mode(path) == 0o600


# -- unsafe cookie files are refused ------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o606, 0o604, 0o660, 0o620, 0o610])
async def test_a_cookie_file_group_or_others_can_access_is_refused_naming_the_path_mode_and_fix(
    sqlite_store: trio_gm.GroupStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: int,
) -> None:
    path = _write(tmp_path / "cookie", b"secret\n", mode)
    expected = (
        f"the cookie file {re.escape(repr(str(path)))} has mode {mode:04o}: "
        f".* chmod 600 {re.escape(str(path))}$"
    )
    with pytest.raises(trio_gm.CookieError, match=expected):
        await load_cookie(path)
    # A node refuses to start with it, and leaves it alone.
    monkeypatch.setenv(COOKIE_FILE_ENV, str(path))
    with pytest.raises(ValueError, match=expected):
        async with trio_gm.open_node(sqlite_store, listen="127.0.0.1:0"):
            pass  # pragma: no cover
    assert _mode(path) == mode
    path.chmod(0o600)
    assert await load_cookie(path) == b"secret"


async def test_an_empty_cookie_file_and_a_directory_are_refused(tmp_path: Path) -> None:
    for content in (b"", b"\n \t\n"):
        empty = _write(tmp_path / "empty", content, 0o600)
        with pytest.raises(trio_gm.CookieError, match=f"the cookie file '{empty}' is empty"):
            await load_cookie(empty)
        assert empty.read_bytes() == content  # not replaced behind the user's back
    directory = tmp_path / "directory"
    directory.mkdir(mode=0o700)
    with pytest.raises(trio_gm.CookieError, match=f"'{directory}' is a directory"):
        await load_cookie(directory)
    with pytest.raises(trio_gm.CookieError, match="is not a regular file"):
        await load_cookie(Path("/dev/null"))
    missing = tmp_path / "missing"
    with pytest.raises(
        trio_gm.CookieError, match=f"cannot read the cookie file '{missing}': No such file"
    ):
        await load_cookie(missing, create=False)
    assert not missing.exists()


async def test_a_cookie_file_another_user_owns_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    path = _write(tmp_path / "cookie", b"theirs\n", 0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(
        trio_gm.CookieError, match=f"'{path}' is owned by uid 65534, not by this user"
    ):
        await load_cookie(path)


async def test_an_explicit_empty_cookie_is_refused(sqlite_store: trio_gm.GroupStore) -> None:
    for empty in ("", b""):
        with pytest.raises(trio_gm.CookieError, match="cookie must not be empty"):
            async with trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=empty):
                pass  # pragma: no cover


# -- other users ----------------------------------------------------------------------------


async def test_a_node_with_another_cookie_file_is_refused_by_a_node_using_the_default_one(
    sqlite_store: trio_gm.GroupStore,
    events: Events,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with (
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0") as ours,
        ours.open_member("g", Reporter(events), "a") as a,
    ):
        await events.expect("joined", "a", [a.id])
        # Another "user": another cookie file, made afresh.
        monkeypatch.setenv(COOKIE_FILE_ENV, str(tmp_path / "other-user" / "cookie"))
        async with trio_gm.open_node(sqlite_store, listen="127.0.0.1:0") as theirs:
            assert ours.transport is not None
            assert theirs.transport is not None
            assert theirs.transport.cookie != ours.transport.cookie
            # Its member joins the group record, but its dial is refused: it
            # takes ours for dead, and ours never sees it.
            async with theirs.open_member("g", Reporter(events), "b") as b:
                joined = await events.receive(lambda e: e[:2] == ("joined", "b"))
                assert joined == ("joined", "b", [b.id])
                await b.confirmed_broadcast("from b")
                await events.expect("msg", "b", b.id, "from b")
            await _refused(ours)
            with pytest.raises(trio_gm.ActorStopped, match="noconnection"):
                await theirs.actors.call(a.id, "hello?", timeout=10)
        assert await a.group_members() == [a.id]
        stats = ours.statistics()
        assert stats is not None
        assert stats.peers == ()
        await events.expect("terminate", "b", "normal")
        events.assert_empty()  # a saw nothing of b: no birth, no message


_OTHER_USER = """
import json, os, stat, sys, trio, trio_gm
from trio_gm._cookie import default_cookie_path

async def main():
    async with trio_gm.open_store("sqlite://") as store:
        await store.create_tables()
        async with trio_gm.open_node(store, listen="127.0.0.1:0") as node:
            target = trio_gm.ActorId(sys.argv[1], int(sys.argv[2]))
            try:
                await node.actors.call(target, "hello?", timeout=20)
                outcome = "answered"
            except trio_gm.ActorStopped as exc:
                outcome = f"refused: {exc}"
            path = default_cookie_path()
            print(json.dumps({"uid": os.geteuid(), "cookie_file": str(path), "outcome": outcome}))

trio.run(main)
"""


@pytest.fixture
def nobody_home() -> Iterator[Path]:
    """A home directory owned by ``nobody``, outside pytest's root-only temp dirs."""
    if os.geteuid() != 0:
        pytest.skip("running a node as another user needs root (this test runs as a user)")
    if shutil.which("setpriv") is None:
        pytest.skip("running a node as another user needs setpriv (util-linux)")
    home = Path(tempfile.mkdtemp(prefix="trio-gm-nobody-"))
    try:
        os.chown(home, 65534, 65534)
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _as_nobody(home: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in (COOKIE_FILE_ENV, "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable]
    return [*cmd, *args], env


async def test_a_node_run_by_a_real_other_user_is_refused(
    sqlite_store: trio_gm.GroupStore, events: Events, nobody_home: Path
) -> None:
    probe, env = _as_nobody(nobody_home, "-c", "import trio_gm")
    checked = await trio.run_process(
        probe, env=env, cwd=nobody_home, capture_stdout=True, capture_stderr=True, check=False
    )
    if checked.returncode != 0:
        pytest.skip(
            f"user nobody cannot run {sys.executable} with trio_gm: "
            f"{checked.stderr.decode(errors='replace').strip()[-300:]}"
        )
    async with (
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0") as ours,
        ours.open_member("g", Reporter(events), "a") as a,
    ):
        await events.expect("joined", "a", [a.id])
        cmd, env = _as_nobody(nobody_home, "-c", _OTHER_USER, a.id.node, str(a.id.serial))
        result = await trio.run_process(
            cmd, env=env, cwd=nobody_home, capture_stdout=True, capture_stderr=True, check=False
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        report = json.loads(result.stdout)
        assert report["uid"] == 65534
        assert report["outcome"].startswith("refused:")
        assert "noconnection" in report["outcome"]
        # Nobody made a cookie of its own, in its home, which we cannot share.
        theirs = nobody_home / ".config" / "trio-gm" / "cookie"
        assert report["cookie_file"] == str(theirs)
        info = theirs.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (65534, 0o600)
        assert ours.transport is not None
        assert theirs.read_bytes().strip() != ours.transport.cookie
        await _refused(ours)
        stats = ours.statistics()
        assert stats is not None
        assert stats.peers == ()
        await a.confirmed_broadcast("still alone")
        await events.expect("msg", "a", a.id, "still alone")
        events.assert_empty()


# -- the command line -------------------------------------------------------------------------


def test_cli_member_with_a_0644_cookie_file_exits_2_with_one_line_naming_the_file_and_chmod(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "cookie", b"secret\n", 0o644)
    result = subprocess.run(
        [sys.executable, "-m", "trio_gm.cli", "member", "--store", "sqlite://", "--group", "g",
         "--listen", "127.0.0.1:0", "--cookie-file", str(path)],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert "0644" in lines[0]
    assert f"chmod 600 {path}" in lines[0]
    assert lines[0].startswith("trio-gm member: ")


async def test_cli_members_without_a_cookie_file_share_the_default_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "default" / "cookie"
    monkeypatch.setenv(COOKIE_FILE_ENV, str(path))  # the processes inherit it
    args = ["--store", f"sqlite:///{tmp_path}/g.db", "--group", "g", "--listen", "127.0.0.1:0"]
    async with trio.open_nursery() as nursery:
        p1, p2 = MemberProcess("p1"), MemberProcess("p2")
        try:
            await p1.start(nursery, args)
            await p2.start(nursery, args)
            await p1.expect(lambda e: e["event"] == "members_changed" and e["births"] == [p2.id])
            await p2.command("confirm hello")
            await p2.expect(lambda e: e["event"] == "confirmed")
            await p1.expect(lambda e: e["event"] == "msg" and e["msg"] == "hello")
        finally:
            with trio.CancelScope(shield=True):
                await p2.stop()
                await p1.stop()
        nursery.cancel_scope.cancel()
    assert HEX64.fullmatch(path.read_bytes().strip())
    assert _mode(path) == 0o600


async def test_a_cookie_of_another_type_is_refused(sqlite_store: trio_gm.GroupStore) -> None:
    with pytest.raises(TypeError, match=r"cookie must be a str or bytes, got int"):
        async with trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=123):  # type: ignore[arg-type]
            pass  # pragma: no cover
