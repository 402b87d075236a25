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
:mod:`trio_gm.store.ops`, one class per change whose ``apply`` is a pure
function of the current row; :meth:`GroupStore.transact` runs any of them
(or a function of the caller's) against that row.

Retries
    A transaction that fails because another committed first (PostgreSQL
    SQLSTATE 40001 serialization failure or 40P01 deadlock) is rolled back
    and re-run from its first read, so the function sees the row the winner
    wrote. Between attempts the caller sleeps *in trio* for a jittered
    exponential backoff (full jitter, :class:`RetryPolicy`). After
    ``max_attempts`` attempts the call raises :class:`~trio_gm.StoreConflict`
    naming the operation, the group and the number of attempts.

Outages
    An attempt that finds the store *away* is retried the same way, with
    its own backoff (at most 0.5 s apart by default), for as long as the
    store has been away less than ``outage_timeout`` (default 30 s): the
    server cannot be connected to (down, restarting, unreachable), it
    dropped the connection before COMMIT, or the database is locked by
    another connection (SQLite "database is locked"/"busy", PostgreSQL
    ``lock_timeout``). The outage is the store's, not the call's: it begins
    at the first such failure of any operation and ends at the next success
    of any; it is logged at WARNING when it begins and when it ends. Past
    the timeout every operation that meets the store away raises
    :class:`~trio_gm.StoreUnavailable`, saying how long it has been away and
    whether it was unreachable or locked. Any other error is not retried.
    ``open_store`` itself does not wait: a store away at start fails at once.

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
      most ``lock_timeout`` waiting for a lock, at most ``connect_timeout``
      on a PostgreSQL server that fell silent and, if it must open a
      connection, at most ``connect_timeout``.
    - A transaction is never left open: the connection is rolled back and
      returned to the pool before the thread returns.

    A pooled connection found dropped (server restart, idle timeout) before
    COMMIT is retried as an outage: nothing was committed. A connection lost
    *during COMMIT* leaves the outcome unknown, which no client can resolve:
    :meth:`GroupStore.transact` raises :class:`~trio_gm.StoreUnavailable`
    saying so, unless told the function is idempotent. gm's operations are
    (a re-run finds the change done), so the store retries those.

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
import logging
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Final, Literal, TypeVar, overload

import attrs
import cattrs
import trio
from sqlalchemy import URL, Connection, Engine, Table, delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.schema import CreateSchema

from .._exceptions import StoreConfigError, StoreConflict, StoreError, StoreUnavailable
from .._ids import MemberId
from . import ops
from ._engine import (
    BEGIN_OPTION,
    EngineSetup,
    create_store_engine,
    retry_kind,
    transient_connect_error,
)
from .codec import members_from_json, members_to_json
from .model import Group, LostMembership
from .names import check_group_name
from .schema import gm_group, metadata, table_definitions

__all__ = [
    "DEFAULT_OUTAGE_TIMEOUT",
    "DELETE",
    "GroupStore",
    "RetryPolicy",
    "StoreStatistics",
    "Write",
    "open_store",
]

R = TypeVar("R")

log = logging.getLogger("trio_gm.store")

#: Default seconds an operation waits for a store that is unreachable or
#: locked before it raises :class:`~trio_gm.StoreUnavailable`.
DEFAULT_OUTAGE_TIMEOUT: Final = 30.0


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
    #: The same two, for attempts that failed because the store was
    #: unreachable or locked (retried until the store's ``outage_timeout``).
    first_outage_backoff: float = attrs.field(default=0.01, validator=attrs.validators.ge(0))
    max_outage_backoff: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Seconds to sleep after ``failures`` conflicting attempts in a row."""
        ceiling = min(self.max_backoff, self.first_backoff * 2 ** min(failures - 1, 60))
        return rng.uniform(0, ceiling)

    def outage_backoff(self, failures: int, rng: random.Random) -> float:
        """Seconds to sleep after ``failures`` attempts in a row found the store away."""
        ceiling = min(
            self.max_outage_backoff, self.first_outage_backoff * 2 ** min(failures - 1, 60)
        )
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
    #: Attempts that could not connect (server down, restarting, unreachable).
    connect_failures: int = 0
    #: Times the store became unreachable (or stayed locked) and later
    #: answered again, or is still away: outages seen.
    outages: int = 0
    #: Seconds the store has been away, if it is now (else 0.0).
    unavailable_for: float = 0.0


_RetryKind = Literal["serialization", "busy", "disconnect", "connect", "commit"]


class _Retry(Exception):
    """Raised in the worker: the attempt was rolled back and may be re-run.

    ``serialization`` is a conflict with another transaction (retried up to
    ``max_attempts`` times); the others mean the store is away for now:
    ``busy`` (locked by another connection), ``disconnect`` (a pooled
    connection found dropped), ``connect`` (cannot connect), ``commit`` (the
    connection was lost during COMMIT of an idempotent operation, which is
    safe to run again). Those are retried until the outage timeout.
    """

    def __init__(self, kind: _RetryKind, error: BaseException, reason: str) -> None:
        super().__init__(kind, error)
        self.kind = kind
        self.error = error
        self.reason = reason


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
    connect_failures: int = 0
    outages: int = 0


@attrs.define(eq=False)
class _Life:
    """What every view of one store shares (:meth:`GroupStore.with_outage_timeout`)."""

    counters: _Counters = attrs.field(factory=_Counters)
    closed: bool = False
    #: trio time at which the current outage began (None: the store answers).
    unavailable_since: float | None = None
    #: Whether the outage is a lock held by another connection ("busy"),
    #: which only a write's success ends (reads still pass a lock).
    locked: bool = False


@attrs.define(eq=False)
class GroupStore:
    """The group table of one database; made by :func:`open_store`.

    Every method is safe to call from many trio tasks at once.
    """

    _setup: EngineSetup
    _schema: str | None
    _retry: RetryPolicy
    _limiter: trio.CapacityLimiter
    _outage_timeout: float = DEFAULT_OUTAGE_TIMEOUT
    _rng: random.Random = attrs.field(factory=random.Random)
    _life: _Life = attrs.field(factory=_Life)
    _engine: Engine = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        engine = self._setup.engine
        if self._schema is not None:
            # The module-level table has no schema; this maps it to ours.
            engine = engine.execution_options(schema_translate_map={None: self._schema})
        self._engine = engine

    @property
    def _counters(self) -> _Counters:
        return self._life.counters

    @property
    def outage_timeout(self) -> float:
        """Seconds an operation waits for a store that is away (see :func:`open_store`)."""
        return self._outage_timeout

    def with_outage_timeout(self, seconds: float, *, name: str = "seconds") -> GroupStore:
        """This store, with operations that wait up to ``seconds`` for it when it is away.

        The two share the engine, the connections, the counters and the
        knowledge of an outage in progress; only the patience differs.
        """
        return attrs.evolve(self, outage_timeout=_check_outage_timeout(seconds, name))

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
        since = self._life.unavailable_since
        return StoreStatistics(
            **attrs.asdict(self._counters),
            unavailable_for=0.0 if since is None else trio.current_time() - since,
        )

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

    async def list_groups(self) -> list[str]:
        """The names of every group in the table, sorted."""

        def names(conn: Connection) -> list[str]:
            rows = conn.execute(select(gm_group.c.name).order_by(gm_group.c.name))
            return [str(name) for (name,) in rows]

        return await self._run(
            "list_groups", None, names, counted=False, read_committed=True, write=False
        )

    # ---------------------------------------------------------------- writes

    @overload
    async def transact(self, name: str, op: ops.PruneOrCreate) -> Group: ...

    @overload
    async def transact(self, name: str, op: ops.StoreOp) -> Group | LostMembership: ...

    @overload
    async def transact(
        self,
        name: str,
        op: Callable[[Group | None], tuple[Write, R]],
        *,
        operation: str = "transact",
        idempotent: bool = False,
    ) -> R: ...

    async def transact(
        self,
        name: str,
        op: ops.StoreOp | Callable[[Group | None], tuple[Write, R]],
        *,
        operation: str = "transact",
        idempotent: bool = False,
    ) -> Group | LostMembership | R:
        """Change group ``name``'s current row in one serializable transaction.

        ``op`` is either one of gm's membership changes (a
        :data:`~trio_gm.store.ops.StoreOp` such as
        ``RecordDead(self_id, member)``) or a function of your own.

        A gm change: ``op.apply(current, name)`` gets the stored group (None
        if there is none); a new :class:`Group` it returns is written, the
        very group it was given is left unwritten, and either way that group
        is returned, as is a :class:`LostMembership`, which writes nothing.
        Every gm change is idempotent, so a COMMIT whose outcome is unknown
        is retried; its ``operation`` name (``record_dead_member``, ...)
        labels errors (``operation`` and ``idempotent`` are for functions only).

        A function: ``op(current)`` returns ``(write, result)``: ``write`` is
        the group to store (its name must be ``name``), None to leave the row
        as it is, or :data:`DELETE` to remove it; ``result`` is what
        ``transact`` returns once the transaction has committed.

        Either runs in a worker thread and may run several times (once per
        attempt), so it must be a pure function of its argument. An
        exception it raises rolls the transaction back and propagates
        unchanged.

        While the store is unreachable or locked, attempts are retried with
        backoff until it has been away for ``outage_timeout`` seconds, then
        :class:`~trio_gm.StoreUnavailable` is raised. A connection lost
        during COMMIT leaves the outcome unknown, which raises at once
        unless ``idempotent`` says that ``op`` run again on the row it wrote
        changes nothing more (as for every gm change): then it is retried.

        A name no store can hold (see :mod:`trio_gm.store.names`) is a
        ``ValueError`` here, as in :meth:`read_group`, before any database
        work; every other method that takes a group name comes through here.
        """
        if isinstance(op, ops.StoreOp):
            return await self._change(name, op)
        return await self._transact(name, op, operation=operation, idempotent=idempotent)

    async def forget_group(self, name: str) -> None:
        """Delete the group's row (gm's ``forget_group``); no error if it is missing."""

        def forget(current: Group | None) -> tuple[Write, None]:
            return (DELETE if current is not None else None), None

        await self.transact(name, forget, operation="forget_group", idempotent=True)

    # The four gm changes by name: each is ``transact(name, op)`` and no more,
    # kept for callers (the command line's tests, docs/store.md) that predate
    # the op classes.

    async def prune_or_create_group(
        self, name: str, self_id: MemberId, min_version: int = ops.VERSION_START
    ) -> Group:
        """A thin wrapper: ``transact(name, PruneOrCreate(self_id, min_version))``.

        See :class:`~trio_gm.store.ops.PruneOrCreate`.
        """
        return await self.transact(name, ops.PruneOrCreate(self_id, min_version))

    async def record_new_member(
        self, name: str, left: MemberId, new: MemberId
    ) -> Group | LostMembership:
        """A thin wrapper: ``transact(name, RecordNewMember(left, new))``.

        See :class:`~trio_gm.store.ops.RecordNewMember`.
        """
        return await self.transact(name, ops.RecordNewMember(left, new))

    async def record_dead_member(
        self, name: str, self_id: MemberId, member: MemberId, *, verify: bool = True
    ) -> Group | LostMembership:
        """A thin wrapper: ``transact(name, RecordDead(self_id, member, verify))``.

        See :class:`~trio_gm.store.ops.RecordDead`.
        """
        return await self.transact(name, ops.RecordDead(self_id, member, verify))

    async def erase_members(
        self, name: str, self_id: MemberId, members: Iterable[MemberId]
    ) -> Group | LostMembership:
        """A thin wrapper: ``transact(name, EraseMembers(self_id, tuple(members)))``.

        See :class:`~trio_gm.store.ops.EraseMembers`.
        """
        return await self.transact(name, ops.EraseMembers(self_id, tuple(members)))

    async def _change(self, name: str, op: ops.StoreOp) -> Group | LostMembership:
        def change(current: Group | None) -> tuple[Write, Group | LostMembership]:
            outcome = op.apply(current, name)
            write: Write = None
            if isinstance(outcome, Group) and outcome is not current:
                write = outcome
            return write, outcome

        # Every gm change, run again on the row it wrote, finds itself done.
        return await self._transact(name, change, operation=op.operation, idempotent=True)

    async def _transact(
        self,
        name: str,
        fn: Callable[[Group | None], tuple[Write, R]],
        *,
        operation: str,
        idempotent: bool,
    ) -> R:
        check_group_name(name)

        def attempt(conn: Connection) -> tuple[bool, R]:
            current = self._select(conn, name)
            write, result = fn(current)
            return self._write(conn, name, current, write), result

        wrote, result = await self._run(
            operation, name, attempt, counted=True, idempotent=idempotent
        )
        if wrote:
            self._counters.writes += 1
        return result

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
        idempotent: bool = False,
        patient: bool = True,
    ) -> R:
        """Run ``body`` in a transaction in a worker thread, retrying what may pass.

        Conflicts are retried up to the policy's ``max_attempts``; attempts
        that found the store away (see :class:`_Retry`) until it has been
        away ``outage_timeout`` seconds, or not at all unless ``patient``.
        No checkpoint follows a successful attempt: see the module docstring.
        """
        life = self._life
        if life.closed:
            raise StoreError(f"{operation}: the store for {self.url} is closed")
        if counted:
            self._counters.transactions += 1
        what = operation if name is None else f"{operation} of group {name!r}"
        conflicts = 0
        away = 0
        while True:
            try:
                result = await trio.to_thread.run_sync(
                    self._attempt,
                    what,
                    body,
                    read_committed,
                    write,
                    idempotent,
                    limiter=self._limiter,
                    abandon_on_cancel=False,
                )
            except _Retry as retry:
                if retry.kind == "serialization":
                    self._counters.serialization_failures += 1
                    conflicts += 1
                    if conflicts >= self._retry.max_attempts:
                        self._counters.conflicts += 1
                        raise StoreConflict(
                            f"{what} on {self.url} gave up after {conflicts} attempts, each "
                            f"failing with a serialization conflict; the last: {retry.reason}"
                        ) from retry.error
                    delay = self._retry.backoff(conflicts, self._rng)
                else:
                    self._count_away(retry.kind)
                    if not patient:
                        raise StoreUnavailable(
                            f"{what}: {_away_phrase(retry)} {self.url}: {retry.reason}"
                        ) from retry.error
                    away += 1
                    delay = self._retry.outage_backoff(away, self._rng)
                    now = trio.current_time()
                    since = self._store_away(now, retry)
                    left = since + self._outage_timeout - now
                    if left <= 0:
                        exc = StoreUnavailable(
                            f"{what}: the store {self.url} has been "
                            f"{'locked' if retry.kind == 'busy' else 'unreachable'} for "
                            f"{now - since:.1f} s, longer than its outage_timeout of "
                            f"{self._outage_timeout:g} s; the last error: "
                            f"{_away_phrase(retry)} it: {retry.reason}"
                        )
                        exc.url, exc.unavailable_for = self.url, now - since
                        raise exc from retry.error
                    delay = min(delay, left)
                self._counters.retries += 1
                await trio.sleep(delay)
                continue
            if life.unavailable_since is not None and (write or not life.locked):
                self._store_back()
            if counted:
                self._counters.commits += 1
            return result

    def _count_away(self, kind: _RetryKind) -> None:
        counters = self._counters
        if kind == "busy":
            counters.busy_errors += 1
        elif kind == "connect":
            counters.connect_failures += 1
        else:
            counters.disconnects += 1

    def _store_away(self, now: float, retry: _Retry) -> float:
        """Note that the store is away (logged once per outage); when the outage began."""
        life = self._life
        life.locked = retry.kind == "busy"
        if life.unavailable_since is None:
            life.unavailable_since = now
            self._counters.outages += 1
            state = "locked" if retry.kind == "busy" else "unreachable"
            log.warning(
                "store %s is %s (%s); operations wait up to %g s for it",
                self.url,
                state,
                retry.reason,
                self._outage_timeout,
                extra={
                    "store_outage": "began",
                    "store_state": state,
                    "store_reason": retry.reason,
                    "store_timeout": self._outage_timeout,
                },
            )
        return life.unavailable_since

    def _store_back(self) -> None:
        life = self._life
        assert life.unavailable_since is not None
        away = trio.current_time() - life.unavailable_since
        life.unavailable_since = None
        log.warning(
            "store %s answers again, after %.1f s",
            self.url,
            away,
            extra={"store_outage": "ended", "store_away_for": away},
        )

    def _attempt(
        self,
        what: str,
        body: Callable[[Connection], R],
        read_committed: bool,
        write: bool,
        idempotent: bool,
    ) -> R:
        """One attempt, in a worker thread: connect, BEGIN, body, COMMIT."""
        # The last point at which a cancellation can stop us with nothing done.
        trio.from_thread.check_cancelled()
        try:
            conn = self._connect()
        except DBAPIError as exc:
            kind = retry_kind(exc)
            if kind == "serialization":
                raise _Retry(kind, exc, _reason(exc)) from exc
            if kind is not None or transient_connect_error(exc):
                raise _Retry(kind or "connect", exc, _reason(exc)) from exc
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
                raise _Retry(kind, exc, _reason(exc)) from exc
            lost = exc.connection_invalidated or transient_connect_error(exc)
            if lost and not committing:
                # A pooled connection the server dropped (restart, idle
                # timeout): nothing was committed, and the pool has discarded
                # its stale connections, so one more attempt reconnects.
                raise _Retry("disconnect", exc, _reason(exc)) from exc
            if lost and (idempotent or not write):
                raise _Retry("commit", exc, _reason(exc)) from exc
            if lost:
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

        await self._run(
            "open_store",
            None,
            ping,
            counted=False,
            read_committed=True,
            write=False,
            patient=False,
        )

    async def _close(self) -> None:
        self._life.closed = True
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


def _away_phrase(retry: _Retry) -> str:
    return {
        "busy": "another connection holds a lock on (database locked/busy)",
        "connect": "cannot connect to",
        "disconnect": "lost the connection to",
        "commit": "lost the connection during COMMIT to",
    }.get(retry.kind, "cannot use")


def _check_outage_timeout(seconds: object, name: str = "outage_timeout") -> float:
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not (0 <= seconds < math.inf)
    ):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {seconds!r}")
    return float(seconds)


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
    outage_timeout: float = DEFAULT_OUTAGE_TIMEOUT,
) -> AsyncIterator[GroupStore]:
    """Open the group store at ``url`` for the life of the ``async with`` block.

    ``url``: ``sqlite:///path/to/file.db``, ``sqlite://`` (in memory, private
    to this store) or ``postgresql+psycopg://user:password@host:port/db``.
    ``schema``: a PostgreSQL schema to keep the table in (default: the
    connection's search path). ``pool_size``: PostgreSQL connections, and so
    worker threads, used at once (SQLite always uses one). ``connect_timeout``:
    seconds before a connection attempt fails (PostgreSQL; at least 2), and
    before a query on a server that fell silent (a partition) fails as a
    dropped connection.
    ``lock_timeout``: seconds one attempt waits for a lock before it is
    retried. ``durable``: see :mod:`trio_gm.store._engine` and docs/store.md.
    ``retry``: the :class:`RetryPolicy`. ``outage_timeout`` (default 30 s):
    how long an operation waits, retrying with backoff, while the database
    cannot be reached, drops its connections, or stays locked by another
    connection; then it raises :class:`~trio_gm.StoreUnavailable`, which
    says for how long the store was away. The time counts from the first
    failure of the outage, whichever operation met it, so every operation
    gives up once the store has been away that long. (Members of a group
    stop with that error as their reason; see docs/store.md.)

    Connects once before yielding, so a bad or unreachable database fails
    here with :class:`~trio_gm.StoreConfigError` or
    :class:`~trio_gm.StoreUnavailable`.
    """
    outage_timeout = _check_outage_timeout(outage_timeout)
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
    store = GroupStore(
        setup, schema, retry, trio.CapacityLimiter(setup.concurrency), outage_timeout
    )
    try:
        await store._ping()
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store._close()
