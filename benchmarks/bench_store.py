"""The group store's cost: one read-modify-write of a group row, from trio.

Run::

    pytest benchmarks/bench_store.py --benchmark-enable -p no:randomly -o testpaths=benchmarks

Each store lives in a trio loop on a background thread; the benchmark calls
into it with ``trio.from_thread.run``, so every figure includes that hop as
well as the store's own hop to its worker thread. ``test_hop_only`` measures
both hops around no database work, to subtract. PostgreSQL comes from
``TRIO_GM_POSTGRES_URL`` (default: the server on 127.0.0.1:5432) and is
skipped when unreachable; it runs in a schema of its own, dropped after.

Reference points measured on these machines (BASELINES.md): PostgreSQL
SERIALIZABLE 4.0 ms per durable commit, 0.8 ms with synchronous_commit=off;
SQLite WAL 6.4 ms with synchronous=FULL, 0.48 ms with NORMAL.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
import sqlalchemy
import trio

from trio_gm import MemberId
from trio_gm.store import Group, GroupMember, GroupStore, open_store

R = TypeVar("R")

POSTGRES_URL = os.environ.get(
    "TRIO_GM_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
WRITERS = 4
WRITES_PER_WRITER = 25


class TrioHost:
    """A trio loop on a thread, holding one open store until closed."""

    def __init__(self, url: str, **options: Any) -> None:
        self._ready = threading.Event()
        self._store: GroupStore | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(url, options), daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def _main(self, url: str, options: dict[str, Any]) -> None:
        async def host() -> None:
            async with open_store(url, **options) as store:
                await store.create_tables()
                self._store = store
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                self._ready.set()
                await self._stop.wait()

        try:
            trio.run(host)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    @property
    def store(self) -> GroupStore:
        assert self._store is not None
        return self._store

    def run(self, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def close(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)


def bump(current: Group | None) -> tuple[Group, None]:
    """One read-modify-write: bump the version of a one-member ring."""
    version = 0 if current is None else current.version + 1
    return Group("bench", version, (GroupMember(MemberId("bench", 1)),)), None


def postgres_or_skip() -> str:
    parts = urlsplit(POSTGRES_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2):
            return POSTGRES_URL
    except OSError as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable ({exc})")


# (backend, durable): durable=None is what a user gets by default.
CASES = [
    pytest.param(("sqlite", None), id="sqlite-default"),
    pytest.param(("sqlite", True), id="sqlite-durable"),
    pytest.param(("postgresql", None), marks=pytest.mark.postgres, id="postgresql-default"),
    pytest.param(("postgresql", False), marks=pytest.mark.postgres, id="postgresql-relaxed"),
]


@pytest.fixture(params=CASES)
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TrioHost]:
    backend, durable = request.param
    if backend == "sqlite":
        started = TrioHost(f"sqlite:///{tmp_path / 'bench.db'}", durable=durable)
        yield started
        started.close()
        return
    url = postgres_or_skip()
    schema = f"trio_gm_bench_{uuid.uuid4().hex}"
    started = TrioHost(url, schema=schema, durable=durable, pool_size=WRITERS)
    try:
        yield started
    finally:
        started.close()
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        engine.dispose()


def test_read_modify_write_latency(benchmark: Any, host: TrioHost) -> None:
    """One transaction (read the row, write it back one version up), awaited from trio."""
    store = host.store
    host.run(store.transact, "bench", bump)
    benchmark(host.run, store.transact, "bench", bump)
    assert host.run(store.read_group, "bench") is not None


def test_dirty_read_latency(benchmark: Any, host: TrioHost) -> None:
    """``read_group``: gm's dirty_read of the current view."""
    store = host.store
    host.run(store.transact, "bench", bump)
    benchmark(host.run, store.read_group, "bench")


def test_throughput_of_4_concurrent_writers(benchmark: Any, host: TrioHost) -> None:
    """Four trio tasks each applying 25 read-modify-writes to the same row."""
    store = host.store

    async def round_of_writes() -> None:
        async def writer() -> None:
            for _ in range(WRITES_PER_WRITER):
                await store.transact("bench", bump)

        async with trio.open_nursery() as nursery:
            for _ in range(WRITERS):
                nursery.start_soon(writer)

    before = store.statistics()
    benchmark.pedantic(host.run, args=(round_of_writes,), rounds=5, iterations=1)
    after = store.statistics()
    writes = after.commits - before.commits
    benchmark.extra_info["writes_per_round"] = WRITERS * WRITES_PER_WRITER
    benchmark.extra_info["retries_per_write"] = (after.retries - before.retries) / max(writes, 1)
    group = host.run(store.read_group, "bench")
    assert group is not None
    assert group.version == writes - 1  # not one update lost


def test_hop_only(benchmark: Any) -> None:
    """The two thread hops every figure above includes, around no database work."""
    token: list[trio.lowlevel.TrioToken] = []
    ready = threading.Event()
    stop = threading.Event()

    async def host() -> None:
        token.append(trio.lowlevel.current_trio_token())
        ready.set()
        await trio.to_thread.run_sync(stop.wait)

    thread = threading.Thread(target=trio.run, args=(host,), daemon=True)
    thread.start()
    ready.wait(10)

    async def hop() -> None:
        await trio.to_thread.run_sync(int)

    try:
        benchmark(trio.from_thread.run, hop, trio_token=token[0])
    finally:
        stop.set()
        thread.join(10)
