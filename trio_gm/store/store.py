"""The group store: gm's membership table, read and changed from trio.

Why a transactional table at all: gm's ring protocol is only correct if
every membership change (a join, a death, the erasure of a dead member) is
applied in one total order (Lemma 1 in gm.erl). Otherwise, when B dies just
as B' joins, both B' and C may believe they inherited B's in-flight
messages, or neither. gm got that order from Mnesia transactions; here each
change is one read-modify-write of the group's row in a SERIALIZABLE
transaction, and the view version it writes is that order made visible.

Shape: :func:`open_store` owns one SQLAlchemy engine for the life of an
``async with`` block. Each operation runs its transaction in a worker thread
(``trio.to_thread.run_sync``) through the store's own
:class:`trio.CapacityLimiter`, sized to the connection pool (1 for SQLite,
whose writers are serialised anyway), so a burst of calls queues in trio
instead of piling up threads. What a change *is* lives in
:mod:`trio_gm.store.ops` as pure functions; :meth:`GroupStore.transact`
runs any such function against the current row.

Retries
    A transaction that fails because another committed first (PostgreSQL
    SQLSTATE 40001 serialization failure or 40P01 deadlock) or because the
    database was busy (SQLite "database is locked"/"busy", PostgreSQL
    ``lock_timeout``) is rolled back and re-run from its first read, so the
    function sees the row the winner wrote. Between attempts the caller
    sleeps *in trio* for a jittered exponential backoff (full jitter,
    :class:`RetryPolicy`). After ``max_attempts`` attempts the call raises
    :class:`~trio_gm.StoreConflict` naming the operation, the group and the
    number of attempts. Any other error is not retried.

What a cancelled caller can assume
    The worker thread is never abandoned (``abandon_on_cancel=False``): once
    an attempt has started, it runs to its commit or rollback, and only then
    does the caller see the cancellation. Precisely:

    - If a store method raises :class:`trio.Cancelled`, nothing it was asked
      to do was committed. The cancellation was delivered while waiting for
      a worker thread, before the transaction began (the worker checks for
      cancellation just before BEGIN), or during a backoff sleep, after a
      rolled-back attempt.
    - If a cancellation arrives while an attempt runs and that attempt
      commits, the method *returns its result normally* (it executes no
      further checkpoint), and the cancellation is raised at the caller's
      next checkpoint. So a caller that got a result knows the change is
      committed, and one that got ``Cancelled`` knows it is not.
    - A cancelled caller waits for at most one attempt: its statements, at
      most ``lock_timeout`` waiting for a lock and, if it must open a
      connection, at most ``connect_timeout``.
    - A transaction is never left open: the connection is rolled back and
      returned to the pool before the thread returns.

    A pooled connection found dropped (server restart, idle timeout) before
    COMMIT is retried like a conflict: nothing was committed. The exception
    is a connection lost *during COMMIT*, which no client can resolve:
    :class:`~trio_gm.StoreUnavailable` says the outcome is unknown.
    gm's operations are idempotent (a re-run finds the change done), so gm
    simply retries them.

Reads
    :meth:`GroupStore.read_group` is gm's ``dirty_read``: one SELECT outside
    any serializable transaction (READ COMMITTED on PostgreSQL, a deferred
    BEGIN in WAL mode on SQLite). It sees every change committed before it
    started, from any process, and never makes a writer fail or wait.

Errors (see :mod:`trio_gm._exceptions`): :class:`~trio_gm.StoreConfigError`
for a URL that cannot work; :class:`~trio_gm.StoreUnavailable` when the
database cannot be reached, refuses us, or does not exist (raised at
``open_store``, which connects once to find out); the original error stays
attached as ``__cause__`` and messages show the URL with the password masked.
"""

from __future__ import annotations

import enum
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Final, Literal, TypeVar

import attrs
import cattrs
import trio
from sqlalchemy import URL, Connection, Engine, Table, delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.schema import CreateSchema

from .._exceptions import StoreConfigError, StoreConflict, StoreError, StoreUnavailable
from .._ids import MemberId
from . import ops
from ._engine import BEGIN_OPTION, EngineSetup, create_store_engine, retry_kind
from .codec import members_from_json, members_to_json
from .model import Group, LostMembership
from .names import check_group_name
from .schema import gm_group, metadata, table_definitions

__all__ = [
    "DELETE",
    "GroupStore",
    "RetryPolicy",
    "StoreStatistics",
    "Write",
    "open_store",
]

R = TypeVar("R")


class _Delete(enum.Enum):
    DELETE = "DELETE"


#: Returned by a :meth:`GroupStore.transact` function to delete the row.
DELETE: Final = _Delete.DELETE

#: What a :meth:`GroupStore.transact` function returns as the row to write.
Write = Group | None | Literal[_Delete.DELETE]

# An arbitrary, fixed key: concurrent create_tables() calls on one PostgreSQL
# server take this advisory lock so that only one of them creates anything.
_CREATE_TABLES_LOCK_KEY: Final = 0x7472696F5F676D


@attrs.frozen
class RetryPolicy:
    """How often, and how patiently, a conflicting transaction is re-run.

    Before attempt ``n + 1`` the caller sleeps a random time between 0 and
    ``min(max_backoff, first_backoff * 2 ** (n - 1))`` seconds.
    """

    max_attempts: int = attrs.field(default=30, validator=attrs.validators.ge(1))
    first_backoff: float = attrs.field(default=0.002, validator=attrs.validators.ge(0))
    max_backoff: float = attrs.field(default=0.2, validator=attrs.validators.ge(0))

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Seconds to sleep after ``failures`` failed attempts in a row."""
        ceiling = min(self.max_backoff, self.first_backoff * 2 ** min(failures - 1, 60))
        return rng.uniform(0, ceiling)


@attrs.frozen
class StoreStatistics:
    """Counters of one store since it was opened (as trio's ``statistics()``)."""

    #: Read-modify-write transactions asked for (not counting retries).
    transactions: int
    #: Transactions that committed (whether or not they changed the row).
    commits: int
    #: Committed transactions that changed the row (insert, update, delete).
    writes: int
    #: Attempts re-run after a serialization failure or a busy database.
    retries: int
    #: PostgreSQL serialization failures and deadlocks (SQLSTATE 40001, 40P01).
    serialization_failures: int
    #: SQLite busy/locked errors and PostgreSQL lock timeouts.
    busy_errors: int
    #: Transactions given up after every attempt conflicted.
    conflicts: int
    #: Plain reads (:meth:`GroupStore.read_group`).
    reads: int
    #: Attempts that found their pooled connection dropped before COMMIT.
    disconnects: int


class _Retry(Exception):
    """Raised in the worker: the attempt was rolled back and may be re-run."""

    def __init__(
        self, kind: Literal["serialization", "busy", "disconnect"], error: BaseException
    ) -> None:
        super().__init__(kind, error)
        self.kind = kind
        self.error = error


@attrs.define(eq=False)
class _Counters:
    transactions: int = 0
    commits: int = 0
    writes: int = 0
    retries: int = 0
    serialization_failures: int = 0
    busy_errors: int = 0
    conflicts: int = 0
    reads: int = 0
    disconnects: int = 0


@attrs.define(eq=False)
class GroupStore:
    """The group table of one database; made by :func:`open_store`.

    Every method is safe to call from many trio tasks at once.
    """

    _setup: EngineSetup
    _schema: str | None
    _retry: RetryPolicy
    _limiter: trio.CapacityLimiter
    _rng: random.Random = attrs.field(factory=random.Random)
    _counters: _Counters = attrs.field(factory=_Counters)
    _closed: bool = False
    _engine: Engine = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        engine = self._setup.engine
        if self._schema is not None:
            # The module-level table has no schema; this maps it to ours.
            engine = engine.execution_options(schema_translate_map={None: self._schema})
        self._engine = engine

    @property
    def url(self) -> str:
        """The database URL, password masked."""
        return self._setup.display_url

    @property
    def backend(self) -> Literal["sqlite", "postgresql"]:
        """Which database this store runs on."""
        return self._setup.backend

    def statistics(self) -> StoreStatistics:
        """A snapshot of this store's counters."""
        return StoreStatistics(**attrs.asdict(self._counters))

    def table_definitions(self) -> tuple[Table, ...]:
        """The tables the store uses (module-level; ``schema=`` is applied at run time)."""
        return table_definitions()

    # ---------------------------------------------------------------- schema

    async def create_tables(self) -> None:
        """Create the group table (and the schema, if one was given) unless it exists.

        Idempotent, and safe to run from several processes at once.
        """

        def create(conn: Connection) -> None:
            if self._setup.backend == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATE_TABLES_LOCK_KEY}
                )
                if self._schema is not None:
                    conn.execute(CreateSchema(self._schema, if_not_exists=True))
            metadata.create_all(conn, checkfirst=True)

        # READ COMMITTED on PostgreSQL: after waiting for the lock, the
        # existence checks must see what the previous holder committed, which
        # a snapshot taken before the wait would not.
        await self._run("create_tables", None, create, counted=False, read_committed=True)

    # ----------------------------------------------------------------- reads

    async def read_group(self, name: str) -> Group | None:
        """The group as last committed, or None if there is no such group."""
        check_group_name(name)
        self._counters.reads += 1

        def read(conn: Connection) -> Group | None:
            return self._select(conn, name)

        return await self._run(
            "read_group", name, read, counted=False, read_committed=True, write=False
        )

    # ---------------------------------------------------------------- writes

    async def transact(
        self,
        name: str,
        fn: Callable[[Group | None], tuple[Write, R]],
        *,
        operation: str = "transact",
    ) -> R:
        """Run ``fn`` on group ``name``'s current row in one serializable transaction.

        ``fn(current)`` gets the stored group (None if there is none) and
        returns ``(write, result)``: ``write`` is the group to store (its
        name must be ``name``), None to leave the row as it is, or
        :data:`DELETE` to remove it; ``result`` is what ``transact``
        returns once the transaction has committed. ``fn`` runs in a worker
        thread and may run several times (once per attempt), so it must be
        a pure function of its argument. An exception it raises rolls the
        transaction back and propagates unchanged.

        A name no store can hold (see :mod:`trio_gm.store.names`) is a
        ``ValueError`` here, as in :meth:`read_group`, before any database
        work; every other method that takes a group name comes through here.
        """
        check_group_name(name)

        def attempt(conn: Connection) -> tuple[bool, R]:
            current = self._select(conn, name)
            write, result = fn(current)
            return self._write(conn, name, current, write), result

        wrote, result = await self._run(operation, name, attempt, counted=True)
        if wrote:
            self._counters.writes += 1
        return result

    async def forget_group(self, name: str) -> None:
        """Delete the group's row (gm's ``forget_group``); no error if it is missing."""

        def forget(current: Group | None) -> tuple[Write, None]:
            return (DELETE if current is not None else None), None

        await self.transact(name, forget, operation="forget_group")

    async def prune_or_create_group(
        self, name: str, self_id: MemberId, min_version: int = ops.VERSION_START
    ) -> Group:
        """The group a first member joins, created or reset to only ``self_id``.

        See :func:`trio_gm.store.ops.prune_or_create`.
        """

        def change(current: Group | None) -> tuple[Write, Group]:
            new = ops.prune_or_create(current, name, self_id, min_version)
            return (new if new is not current else None), new

        return await self.transact(name, change, operation="prune_or_create_group")

    async def record_new_member(
        self, name: str, left: MemberId, new: MemberId
    ) -> Group | LostMembership:
        """Insert ``new`` right of ``left`` (see :func:`trio_gm.store.ops.add_member_right_of`)."""
        return await self._change(
            name,
            "record_new_member",
            lambda current: ops.add_member_right_of(current, left, new, name=name),
        )

    async def record_dead_member(
        self, name: str, self_id: MemberId, member: MemberId, *, verify: bool = True
    ) -> Group | LostMembership:
        """Mark ``member`` dead (see :func:`trio_gm.store.ops.record_dead`)."""
        return await self._change(
            name,
            "record_dead_member",
            lambda current: ops.record_dead(current, self_id, member, verify, name=name),
        )

    async def erase_members(
        self, name: str, self_id: MemberId, members: Iterable[MemberId]
    ) -> Group | LostMembership:
        """Erase the dead ``members`` (see :func:`trio_gm.store.ops.erase_members`)."""
        erase = tuple(members)
        return await self._change(
            name,
            "erase_members",
            lambda current: ops.erase_members(current, self_id, erase, name=name),
        )

    async def _change(
        self,
        name: str,
        operation: str,
        op: Callable[[Group | None], Group | LostMembership],
    ) -> Group | LostMembership:
        def change(current: Group | None) -> tuple[Write, Group | LostMembership]:
            outcome = op(current)
            write: Write = None
            if isinstance(outcome, Group) and outcome is not current:
                write = outcome
            return write, outcome

        return await self.transact(name, change, operation=operation)

    # ------------------------------------------------------------- machinery

    async def _run(
        self,
        operation: str,
        name: str | None,
        body: Callable[[Connection], R],
        *,
        counted: bool,
        read_committed: bool = False,
        write: bool = True,
    ) -> R:
        """Run ``body`` in a transaction in a worker thread, retrying conflicts.

        No checkpoint follows a successful attempt: see the module docstring.
        """
        if self._closed:
            raise StoreError(f"{operation}: the store for {self.url} is closed")
        if counted:
            self._counters.transactions += 1
        what = operation if name is None else f"{operation} of group {name!r}"
        failures = 0
        while True:
            try:
                result = await trio.to_thread.run_sync(
                    self._attempt,
                    what,
                    body,
                    read_committed,
                    write,
                    limiter=self._limiter,
                    abandon_on_cancel=False,
                )
            except _Retry as retry:
                failures += 1
                if retry.kind == "serialization":
                    self._counters.serialization_failures += 1
                elif retry.kind == "busy":
                    self._counters.busy_errors += 1
                else:
                    self._counters.disconnects += 1
                if failures >= self._retry.max_attempts:
                    self._counters.conflicts += 1
                    raise StoreConflict(
                        f"{what} on {self.url} gave up after {failures} attempts, each "
                        f"failing with a conflict; the last: {retry.error}"
                    ) from retry.error
                self._counters.retries += 1
                await trio.sleep(self._retry.backoff(failures, self._rng))
                continue
            if counted:
                self._counters.commits += 1
            return result

    def _attempt(
        self, what: str, body: Callable[[Connection], R], read_committed: bool, write: bool
    ) -> R:
        """One attempt, in a worker thread: connect, BEGIN, body, COMMIT."""
        # The last point at which a cancellation can stop us with nothing done.
        trio.from_thread.check_cancelled()
        try:
            conn = self._connect()
        except DBAPIError as exc:
            kind = retry_kind(exc)
            if kind is not None:
                raise _Retry(kind, exc) from exc
            raise StoreUnavailable(f"{what}: cannot connect to {self.url}: {_reason(exc)}") from exc
        committing = False
        try:
            with conn:
                if not write and self._setup.backend == "sqlite":
                    conn.execution_options(**{BEGIN_OPTION: "BEGIN"})
                if read_committed and self._setup.backend == "postgresql":
                    conn.execution_options(isolation_level="READ COMMITTED")
                transaction = conn.begin()
                try:
                    result = body(conn)
                except BaseException:
                    transaction.rollback()
                    raise
                committing = True
                transaction.commit()
                return result
        except DBAPIError as exc:
            kind = retry_kind(exc)
            if kind is not None:
                raise _Retry(kind, exc) from exc
            if exc.connection_invalidated and not committing:
                # A pooled connection the server dropped (restart, idle
                # timeout): nothing was committed, and the pool has discarded
                # its stale connections, so one more attempt reconnects.
                raise _Retry("disconnect", exc) from exc
            if exc.connection_invalidated:
                raise StoreUnavailable(
                    f"{what}: lost the connection to {self.url} during COMMIT "
                    f"({_reason(exc)}); the change may or may not have been applied"
                ) from exc
            raise StoreError(f"{what} failed on {self.url}: {_reason(exc)}{_hint(exc)}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"{what} failed on {self.url}: {exc}") from exc

    def _connect(self) -> Connection:
        return self._engine.connect()

    def _select(self, conn: Connection, name: str) -> Group | None:
        row = conn.execute(
            select(gm_group.c.version, gm_group.c.members).where(gm_group.c.name == name)
        ).one_or_none()
        return None if row is None else _decode(name, row.version, row.members)

    def _write(self, conn: Connection, name: str, current: Group | None, write: Write) -> bool:
        if write is None:
            return False
        if write is DELETE:
            if current is None:
                return False
            conn.execute(delete(gm_group).where(gm_group.c.name == name))
            return True
        if not isinstance(write, Group):
            raise TypeError(
                f"a transact function must return a Group, None or DELETE, got {write!r}"
            )
        if write.name != name:
            raise ValueError(f"transaction on group {name!r} tried to write group {write.name!r}")
        values = {"version": write.version, "members": members_to_json(write.members)}
        if current is None:
            conn.execute(insert(gm_group).values(name=name, **values))
        else:
            conn.execute(update(gm_group).where(gm_group.c.name == name).values(**values))
        return True

    async def _ping(self) -> None:
        def ping(conn: Connection) -> None:
            conn.execute(text("SELECT 1"))

        await self._run("open_store", None, ping, counted=False, read_committed=True, write=False)

    async def _close(self) -> None:
        self._closed = True
        await trio.to_thread.run_sync(self._setup.engine.dispose, limiter=self._limiter)


def _decode(name: str, version: object, members: object) -> Group:
    try:
        if type(version) is not int:
            raise TypeError(f"version must be an integer, found {version!r}")
        return Group(name=name, version=version, members=members_from_json(members))
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        raise StoreError(f"the stored row of group {name!r} is malformed: {exc!r}") from exc


def _reason(exc: DBAPIError) -> str:
    return " ".join(str(exc.orig).split())


def _hint(exc: DBAPIError) -> str:
    reason = str(exc.orig)
    if "no such table" in reason or getattr(exc.orig, "sqlstate", None) == "42P01":
        return " (has create_tables() been run on this database and schema?)"
    return ""


@asynccontextmanager
async def open_store(
    url: str | URL,
    *,
    schema: str | None = None,
    pool_size: int = 4,
    connect_timeout: float = 5.0,
    lock_timeout: float = 1.0,
    durable: bool | None = None,
    retry: RetryPolicy = RetryPolicy(),
) -> AsyncIterator[GroupStore]:
    """Open the group store at ``url`` for the life of the ``async with`` block.

    ``url``: ``sqlite:///path/to/file.db``, ``sqlite://`` (in memory, private
    to this store) or ``postgresql+psycopg://user:password@host:port/db``.
    ``schema``: a PostgreSQL schema to keep the table in (default: the
    connection's search path). ``pool_size``: PostgreSQL connections, and so
    worker threads, used at once (SQLite always uses one). ``connect_timeout``:
    seconds before a connection attempt fails (PostgreSQL; at least 2).
    ``lock_timeout``: seconds one attempt waits for a lock before it is
    retried. ``durable``: see :mod:`trio_gm.store._engine` and docs/store.md.
    ``retry``: the :class:`RetryPolicy`.

    Connects once before yielding, so a bad or unreachable database fails
    here with :class:`~trio_gm.StoreConfigError` or
    :class:`~trio_gm.StoreUnavailable`.
    """
    setup = create_store_engine(
        url,
        pool_size=pool_size,
        connect_timeout=connect_timeout,
        lock_timeout=lock_timeout,
        durable=durable,
    )
    if schema is not None and setup.backend != "postgresql":
        setup.engine.dispose()
        raise StoreConfigError(
            f"schema={schema!r} needs PostgreSQL, "
            f"but store URL {setup.display_url!r} is {setup.backend}"
        )
    store = GroupStore(setup, schema, retry, trio.CapacityLimiter(setup.concurrency))
    try:
        await store._ping()
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store._close()
