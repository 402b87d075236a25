"""Shared fixtures: the PostgreSQL server the tests may use.

PostgreSQL is read from ``TRIO_GM_POSTGRES_URL`` (default: the server these
machines run on 127.0.0.1:5432). When it cannot be reached the tests that need
it skip with a message saying so, unless ``TRIO_GM_REQUIRE_POSTGRES=1`` (CI
sets it), which turns that skip into a failure.

Tests that must stop, kill or hang PostgreSQL take ``private_postgres`` (a
server of their own, started, destroyed afterwards) or
``make_private_postgres`` (a factory, for several servers or other hosts);
see :mod:`trio_gm.testing.postgres`. They skip when no private server can
run here, and ``TRIO_GM_REQUIRE_POSTGRES=1`` turns that skip into a failure
too. They never touch the shared server.

Tests that run processes on simulated hosts and cut the links between them
take ``simulated_network``, a factory of
:class:`~trio_gm.testing.netns.SimulatedNetwork` objects closed after the test.
They skip where network namespaces are unavailable (not root, no ``ip``),
unless ``TRIO_GM_REQUIRE_NETNS=1`` (CI sets it), which makes that a failure.

Every test runs with ``TRIO_GM_COOKIE_FILE`` naming a cookie file in a
temporary directory (inherited by the processes tests start), so nothing
reads or makes the user's real cookie file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy

import trio_gm
from tests.gm_helpers import Events
from trio_gm.testing.netns import SimulatedNetwork, remove_leftovers
from trio_gm.testing.postgres import PostgresServer, PostgresTemplate

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_reachable(url: str) -> str | None:
    """Return None when a TCP connection to the server opens, else why not."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"PostgreSQL at {host}:{port} is unreachable ({exc})"


@pytest.fixture(scope="session", autouse=True)
def _private_cookie_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the tests (and the processes they start) off the user's real cookie file."""
    path = tmp_path_factory.mktemp("cookie") / "cookie"
    saved = os.environ.get("TRIO_GM_COOKIE_FILE")
    os.environ["TRIO_GM_COOKIE_FILE"] = str(path)
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop("TRIO_GM_COOKIE_FILE", None)
        else:
            os.environ["TRIO_GM_COOKIE_FILE"] = saved


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("TRIO_GM_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    why_not = _postgres_reachable(url)
    if why_not is not None:
        if os.environ.get("TRIO_GM_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{why_not}, and TRIO_GM_REQUIRE_POSTGRES=1 forbids skipping")
        pytest.skip(f"{why_not}; set TRIO_GM_POSTGRES_URL to run these tests")
    return url


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[PostgresTemplate]:
    """One initdb per session, which every private server copies."""
    why_not = PostgresServer.unavailable_reason()
    if why_not is not None:
        if os.environ.get("TRIO_GM_REQUIRE_POSTGRES") == "1":
            pytest.fail(
                f"cannot run a private PostgreSQL server: {why_not}, "
                "and TRIO_GM_REQUIRE_POSTGRES=1 forbids skipping"
            )
        pytest.skip(f"cannot run a private PostgreSQL server: {why_not}")
    with PostgresTemplate.temporary() as template:
        yield template


#: make_private_postgres(host="127.0.0.1", *, start=True, netns=None) -> PostgresServer
MakePostgres = Callable[..., PostgresServer]


@pytest.fixture
def make_private_postgres(postgres_template: PostgresTemplate) -> Iterator[MakePostgres]:
    """A factory of private servers (started unless ``start=False``), all destroyed afterwards.

    ``netns``: run it on a simulated host, ``make(db.address, netns=db.netns)``.
    """
    with contextlib.ExitStack() as servers:

        def make(
            host: str = "127.0.0.1", *, start: bool = True, netns: str | None = None
        ) -> PostgresServer:
            server = PostgresServer.create(host=host, template=postgres_template, netns=netns)
            servers.callback(server.destroy)
            if start:
                server.start()
            return server

        yield make


@pytest.fixture
def private_postgres(make_private_postgres: MakePostgres) -> PostgresServer:
    """A started PostgreSQL server of this test's own, to kill at will; never the shared one."""
    return make_private_postgres()


@pytest.fixture(scope="session")
def netns_available() -> None:
    """Skip (or, with ``TRIO_GM_REQUIRE_NETNS=1``, fail) where no simulated network can run.

    Where one can, first removes what crashed earlier runs left behind.
    """
    why_not = SimulatedNetwork.unavailable_reason()
    if why_not is not None:
        if os.environ.get("TRIO_GM_REQUIRE_NETNS") == "1":
            pytest.fail(
                f"cannot make simulated hosts: {why_not}, "
                "and TRIO_GM_REQUIRE_NETNS=1 forbids skipping"
            )
        pytest.skip(f"cannot make simulated hosts: {why_not}")
    remove_leftovers()


#: simulated_network(hosts=3, *, ipv6=True) -> SimulatedNetwork
MakeNetwork = Callable[..., SimulatedNetwork]


@pytest.fixture
def simulated_network(netns_available: None) -> Iterator[MakeNetwork]:
    """A factory of simulated networks, each closed (its processes killed) after the test."""
    with contextlib.ExitStack() as networks:

        def make(hosts: int | Iterable[str] = 3, *, ipv6: bool = True) -> SimulatedNetwork:
            return networks.enter_context(SimulatedNetwork.create(hosts, ipv6=ipv6))

        yield make


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema name for one test; dropped with CASCADE afterwards."""
    schema = f"trio_gm_test_{uuid.uuid4().hex}"
    try:
        yield schema
    finally:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def gm_store(request: pytest.FixtureRequest) -> AsyncIterator[trio_gm.GroupStore]:
    """A fresh store: SQLite in memory, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        async with trio_gm.open_store("sqlite://") as store:
            await store.create_tables()
            yield store
        return
    url = request.getfixturevalue("postgres_url")
    with postgres_schema(url) as schema:
        async with trio_gm.open_store(url, schema=schema) as store:
            await store.create_tables()
            yield store


@pytest.fixture
async def sqlite_store() -> AsyncIterator[trio_gm.GroupStore]:
    async with trio_gm.open_store("sqlite://") as store:
        await store.create_tables()
        yield store


@pytest.fixture
def events() -> Events:
    return Events()
