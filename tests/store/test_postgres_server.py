"""The private PostgreSQL server store-outage tests break (trio_gm.testing.postgres).

Each test kills, stops, pauses or destroys a server of its own; the last
one checks that none of this reached the shared server on port 5432.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
import trio

from tests.conftest import MakePostgres
from trio_gm import MemberId, StoreUnavailable, open_store
from trio_gm.store import Group, GroupMember
from trio_gm.testing.postgres import (
    SHARED_PORT,
    PostgresServer,
    PostgresServerError,
    PostgresTemplate,
)

A = MemberId("n", 1)
GROUP = Group("g", 0, (GroupMember(A),))


async def write_group(url: str) -> None:
    async with open_store(url) as store:
        await store.create_tables()
        assert await store.prune_or_create_group("g", A) == GROUP


async def read_group(url: str) -> Group | None:
    async with open_store(url, connect_timeout=2) as store:
        return await store.read_group("g")


async def assert_unavailable(url: str) -> None:
    with pytest.raises(StoreUnavailable):
        async with open_store(url, connect_timeout=2):
            pass


async def pgrep(pattern: str) -> str:
    """The processes whose command line contains ``pattern``, as pgrep lists them."""
    result = await trio.run_process(
        ["pgrep", "-a", "-f", pattern], check=False, capture_stdout=True
    )
    assert result.returncode in (0, 1), result
    return result.stdout.decode()


def assert_dead(pids: list[int]) -> None:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as file:
                state = file.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        assert state in ("Z", "X"), f"process {pid} still runs ({state})"


# ----------------------------------------------------------------- lifecycle


async def test_a_store_works_on_a_private_server(private_postgres: PostgresServer) -> None:
    pg = private_postgres
    assert pg.port != SHARED_PORT
    assert pg.url == f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/test"
    await write_group(pg.url)
    assert await read_group(pg.url) == GROUP
    assert pg.pid is not None
    assert pg.pid in pg.processes()


async def test_a_killed_server_refuses_connections_and_starts_with_its_data(
    private_postgres: PostgresServer,
) -> None:
    pg = private_postgres
    await write_group(pg.url)
    port, pids = pg.port, pg.processes()
    await pg.kill_async()
    assert pg.pid is None
    assert pg.processes() == []
    assert_dead(pids)
    await assert_unavailable(pg.url)
    await pg.start_async()
    assert pg.port == port
    assert await read_group(pg.url) == GROUP


def test_kill_breaks_open_connections(private_postgres: PostgresServer) -> None:
    pg = private_postgres
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        pg.kill()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")


async def test_start_after_the_postmaster_alone_was_killed_clears_its_children(
    private_postgres: PostgresServer,
) -> None:
    """Killed alone, the postmaster leaves children; start() kills them and their locks."""
    pg = private_postgres
    await write_group(pg.url)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend: int = row[0]
        # Stopped, the backend cannot notice its postmaster is gone and exit.
        os.kill(backend, signal.SIGSTOP)
        pg.kill(backends=False)
        assert pg.pid is None
        assert backend in pg.processes()  # the others may not have exited yet
        await assert_unavailable(pg.url)
        await pg.start_async()
    assert backend not in pg.processes()
    assert_dead([backend])
    assert await read_group(pg.url) == GROUP


async def test_restart_immediate_keeps_committed_data(private_postgres: PostgresServer) -> None:
    pg = private_postgres
    await write_group(pg.url)
    before = pg.pid
    await pg.restart_async()
    assert pg.pid not in (None, before)
    assert await read_group(pg.url) == GROUP
    await pg.restart_async("fast")
    assert await read_group(pg.url) == GROUP


async def test_stop_then_start(private_postgres: PostgresServer) -> None:
    pg = private_postgres
    await write_group(pg.url)
    await pg.stop_async()
    assert pg.pid is None
    assert pg.processes() == []
    await assert_unavailable(pg.url)
    pg.stop()  # stopping a stopped server does nothing
    with pytest.raises(PostgresServerError, match="not running; start"):
        pg.restart()
    with pytest.raises(PostgresServerError, match="not running"):
        pg.kill()
    await pg.start_async()
    with pytest.raises(PostgresServerError, match="already running"):
        pg.start()
    assert await read_group(pg.url) == GROUP


async def test_a_paused_server_hangs_new_connections_until_resumed(
    private_postgres: PostgresServer,
) -> None:
    pg = private_postgres
    await write_group(pg.url)
    pg.pause()
    assert pg.paused
    assert pg.pid is not None
    # The kernel accepts the TCP connection; nobody answers it.
    with socket.create_connection((pg.host, pg.port), timeout=2):
        pass
    await assert_unavailable(pg.url)
    pg.resume()
    assert await read_group(pg.url) == GROUP


async def test_a_paused_server_can_be_killed_stopped_or_restarted(
    private_postgres: PostgresServer,
) -> None:
    pg = private_postgres
    await write_group(pg.url)
    pg.pause()
    await pg.restart_async()
    assert await read_group(pg.url) == GROUP
    pg.pause()
    await pg.stop_async()
    assert pg.processes() == []
    await pg.start_async()
    pg.pause()
    await pg.kill_async()
    assert pg.processes() == []
    await pg.start_async()
    assert await read_group(pg.url) == GROUP


# ------------------------------------------------------------------- cleanup


@pytest.mark.parametrize("state", ["running", "paused", "stopped", "killed", "orphaned"])
async def test_destroy_leaves_no_process_and_no_directory(
    make_private_postgres: MakePostgres, state: str
) -> None:
    pg = make_private_postgres()
    pids = pg.processes()
    assert pids
    if state == "paused":
        pg.pause()
    elif state == "stopped":
        pg.stop()
    elif state == "killed":
        pg.kill()
    elif state == "orphaned":
        child = next(pid for pid in pids if pid != pg.pid)
        os.kill(child, signal.SIGSTOP)
        pg.kill(backends=False)
        assert child in pg.processes()
    await pg.destroy_async()
    assert await pgrep(str(pg.data_dir)) == ""
    assert pg.processes() == []
    assert_dead(pids)
    assert not pg.directory.exists()
    pg.destroy()  # twice is fine
    with pytest.raises(PostgresServerError, match="cannot be used any more"):
        pg.start()


def test_running_destroys_the_server_when_the_block_fails(
    postgres_template: PostgresTemplate,
) -> None:
    seen: list[PostgresServer] = []

    def fail_inside() -> None:
        with PostgresServer.running(template=postgres_template) as pg:
            seen.append(pg)
            pids.extend(pg.processes())
            raise KeyError("boom")

    pids: list[int] = []
    with pytest.raises(KeyError, match="boom"):
        fail_inside()
    assert pids
    assert_dead(pids)
    assert not seen[0].directory.exists()


async def test_running_async_destroys_the_server_when_the_block_fails(
    postgres_template: PostgresTemplate,
) -> None:
    seen: list[PostgresServer] = []
    pids: list[int] = []

    async def fail_inside() -> None:
        async with PostgresServer.running_async(template=postgres_template) as pg:
            seen.append(pg)
            await write_group(pg.url)
            pids.extend(pg.processes())
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await fail_inside()
    assert pids
    assert_dead(pids)
    assert not seen[0].directory.exists()


# ------------------------------------------------------------- construction


async def test_a_server_without_a_template_runs_initdb_and_has_database_test(
    postgres_template: PostgresTemplate,  # for its skip (or failure) where no server can run
) -> None:
    async with PostgresServer.running_async() as pg:
        await write_group(pg.url)
        assert await read_group(pg.url) == GROUP
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("test",)
            row = conn.execute("SHOW fsync").fetchone()
            assert row == ("off",)


def test_a_port_taken_before_the_first_start_is_picked_again(
    make_private_postgres: MakePostgres,
) -> None:
    pg = make_private_postgres(start=False)
    taken = pg.port
    with socket.create_server((pg.host, taken)):
        pg.start()
        assert pg.port != taken
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_taken_port_that_was_asked_for_is_an_error(
    postgres_template: PostgresTemplate,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as blocker:
        taken = blocker.getsockname()[1]
        pg = PostgresServer.create(port=taken, template=postgres_template)
        try:
            with pytest.raises(PostgresServerError, match=f"port {taken}"):
                pg.start()
            assert pg.processes() == []
        finally:
            pg.destroy()


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="port=5432 is the shared server's port"):
        PostgresServer.create(port=SHARED_PORT)
    with pytest.raises(ValueError, match=r"1\.\.65535, got 0"):
        PostgresServer.create(port=0)
    with pytest.raises(TypeError, match="port must be an int or None, got True"):
        PostgresServer.create(port=True)
    with pytest.raises(ValueError, match="got ''"):
        PostgresServer.create(host="")
    with pytest.raises(ValueError, match=r"got '127\.0\.0\.1,10\.0\.0\.1'"):
        PostgresServer.create(host="127.0.0.1,10.0.0.1")


def test_a_bad_shutdown_mode_names_the_modes(private_postgres: PostgresServer) -> None:
    with pytest.raises(ValueError, match="smart, fast, immediate, got 'hard'"):
        private_postgres.stop("hard")  # type: ignore[arg-type]


def test_a_base_dir_the_server_user_cannot_enter_is_refused(
    postgres_template: PostgresTemplate, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the server runs as ourselves: every directory we can use, it can")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(PostgresServerError, match=f"cannot enter '{closed}"):
        PostgresServer.create(closed, template=postgres_template)
    assert list(closed.iterdir()) == []


def _ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_ipv6_server(make_private_postgres: MakePostgres) -> None:
    pg = make_private_postgres("::1")
    assert pg.url == f"postgresql+psycopg://postgres@[::1]:{pg.port}/test"
    await write_group(pg.url)
    await pg.kill_async()
    await assert_unavailable(pg.url)
    await pg.start_async()
    assert await read_group(pg.url) == GROUP


# ------------------------------------------------------------ shared server


@pytest.mark.postgres
def test_the_shared_server_outlives_everything_done_to_private_ones(
    postgres_url: str, make_private_postgres: MakePostgres
) -> None:
    def shared_server() -> tuple[object, ...]:
        engine = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                row = conn.exec_driver_sql(
                    "SELECT pg_postmaster_start_time(), inet_server_port()"
                ).one()
        finally:
            engine.dispose()
        return tuple(row)

    before = shared_server()
    pg = make_private_postgres()
    pg.kill()
    pg.start()
    pg.restart()
    pg.pause()
    pg.resume()
    pg.kill(backends=False)
    pg.start()
    pg.stop("immediate")
    pg.destroy()
    assert shared_server() == before
