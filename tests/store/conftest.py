"""Fixtures for the store tests: one database per test, on every backend.

Each test that takes ``target`` runs twice: on a SQLite file in the test's
``tmp_path`` and on PostgreSQL in a schema of its own (named with a uuid,
dropped with CASCADE afterwards), so runs never see each other's rows and
the suite can run again on the same server.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Literal

import attrs
import pytest
import sqlalchemy

from tests.conftest import postgres_schema
from trio_gm.store import GroupStore, gm_group, open_store


@attrs.frozen
class Target:
    """Where one test keeps its group table."""

    backend: Literal["sqlite", "postgresql"]
    url: str
    schema: str | None


@contextlib.contextmanager
def _schema_target(url: str) -> Iterator[Target]:
    """A fresh PostgreSQL schema for one test, dropped with everything in it afterwards."""
    with postgres_schema(url) as schema:
        yield Target("postgresql", url, schema)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """Each test using it runs on a SQLite file and in a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield Target("sqlite", f"sqlite:///{tmp_path / 'gm.db'}", None)
        return
    with _schema_target(request.getfixturevalue("postgres_url")) as target:
        yield target


@pytest.fixture
def postgres_target(postgres_url: str) -> Iterator[Target]:
    """For the few tests of PostgreSQL-only behaviour."""
    with _schema_target(postgres_url) as target:
        yield target


@pytest.fixture
async def store(target: Target) -> AsyncIterator[GroupStore]:
    async with open_store(target.url, schema=target.schema) as store:
        await store.create_tables()
        yield store


class LockHolder:
    """Another client holding the write lock on a group's row (or the database).

    On SQLite it is a connection inside ``BEGIN IMMEDIATE``; on PostgreSQL a
    transaction that selected the row ``FOR UPDATE``. While it holds, every
    store write to that row waits ``lock_timeout`` and fails busy.
    """

    def __init__(self, target: Target, name: str) -> None:
        self._target = target
        self._name = name
        self._sqlite: sqlite3.Connection | None = None
        self._pg: sqlalchemy.Connection | None = None

    @property
    def holding(self) -> bool:
        return self._sqlite is not None or self._pg is not None

    def acquire(self) -> None:
        if self._target.backend == "sqlite":
            path = self._target.url.removeprefix("sqlite:///")
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("BEGIN IMMEDIATE")
            self._sqlite = conn
            return
        engine = sqlalchemy.create_engine(self._target.url, poolclass=sqlalchemy.pool.NullPool)
        pg = engine.execution_options(schema_translate_map={None: self._target.schema}).connect()
        pg.begin()
        pg.execute(
            sqlalchemy.select(gm_group.c.name)
            .where(gm_group.c.name == self._name)
            .with_for_update()
        ).one()
        self._pg = pg

    def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
            self._sqlite = None
        if self._pg is not None:
            self._pg.rollback()
            self._pg.close()
            self._pg.engine.dispose()
            self._pg = None


@pytest.fixture
def lock_holder(target: Target) -> Iterator[Callable[[str], LockHolder]]:
    holders: list[LockHolder] = []

    def make(name: str) -> LockHolder:
        holder = LockHolder(target, name)
        holders.append(holder)
        return holder

    yield make
    for holder in holders:
        holder.release()
