"""The engine factory: one SQLAlchemy engine per store, set up per backend.

What each backend needs for gm's read-modify-writes to be serializable:

PostgreSQL
    ``isolation_level="SERIALIZABLE"`` on every connection. Two transactions
    that read the same row and both write it cannot both commit: one gets
    SQLSTATE 40001 and the store re-runs it on the fresh row. Connections
    carry ``connect_timeout`` (libpq counts whole seconds, at least 2) so an
    unreachable server is an error, not a hang, and ``lock_timeout`` so a
    worker thread never waits on a row lock without bound. The same
    ``connect_timeout`` is their TCP user timeout, with keepalives every
    second, so a server that falls silent mid-query (a partition drops
    packets) fails the query, as a dropped connection, rather than hanging
    it for TCP's retransmissions (about 15 minutes).

SQLite (the ``sqlite3`` driver)
    SQLite is serializable by construction (one writer at a time), but the
    driver in its legacy mode does not emit BEGIN before a SELECT, so the
    read of a read-modify-write happens outside the transaction and
    concurrent updates are silently lost. We use SQLAlchemy's documented
    recipe: a ``connect`` listener turns the driver's own transaction
    handling off and a ``begin`` listener emits our BEGIN, which is
    ``BEGIN IMMEDIATE`` (the write lock is taken before the read) unless the
    connection asks for a plain deferred ``BEGIN`` (reads). The database is
    put in WAL mode, so readers never wait for the writer, and the driver's
    busy timeout bounds how long a writer waits for the lock before SQLite
    reports "database is locked", which the store retries.

Durability (the ``durable`` keyword of :func:`trio_gm.store.open_store`)
    ``None`` (default): SQLite ``synchronous=NORMAL`` in WAL mode, a commit
    survives a crash of the process but the last commits may roll back on a
    power loss or OS crash (which also kills every member on that host, so
    no member can have acted on them); PostgreSQL keeps the server's own
    ``synchronous_commit`` (``on`` unless configured otherwise).
    ``True``: every commit is flushed to disk before it returns (SQLite
    ``synchronous=FULL``, PostgreSQL ``synchronous_commit=on``).
    ``False``: PostgreSQL ``synchronous_commit=off`` (a server crash may lose
    the last few hundred milliseconds of commits, never corrupts); SQLite
    stays at ``NORMAL``, since ``OFF`` can corrupt the file on power loss.
"""

from __future__ import annotations

import math
import re
import sqlite3
from typing import Any, Literal

import attrs
from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool, StaticPool

from .._exceptions import StoreConfigError

__all__ = [
    "BEGIN_OPTION",
    "EngineSetup",
    "create_store_engine",
    "mask_url",
    "retry_kind",
    "transient_connect_error",
]

#: Connection execution option naming the statement the SQLite ``begin``
#: listener emits; read-modify-writes use the default, ``BEGIN IMMEDIATE``.
BEGIN_OPTION = "trio_gm_sqlite_begin"

_SUPPORTED_DRIVERS = {"sqlite": {"pysqlite"}, "postgresql": {"psycopg", "psycopg2"}}

#: SQLSTATEs that mean "run the whole transaction again": serialization
#: failure and deadlock. 55P03 is our own ``lock_timeout`` expiring.
_SERIALIZATION_SQLSTATES = frozenset({"40001", "40P01"})
_BUSY_SQLSTATES = frozenset({"55P03"})
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
#: SQLSTATEs of a server going away or not yet back: connection exceptions
#: (class 08), shutdown in progress (57P01 admin, 57P02 crash), starting up
#: (57P03). Wrong passwords (class 28) and missing databases (3D000) are not
#: among them: retrying those cannot help.
_AWAY_SQLSTATE_CLASSES = frozenset({"08"})
_AWAY_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
#: What libpq says when a server answered but will never let us in.
_PERMANENT_CONNECT_MARKERS = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "password",
    "SSL",
)


@attrs.frozen
class EngineSetup:
    """An engine and what the store needs to know about it."""

    engine: Engine
    backend: Literal["sqlite", "postgresql"]
    #: How many worker threads may use the engine at once (its pool size).
    concurrency: int
    #: The URL with its password masked, for messages.
    display_url: str


def mask_url(url: str | URL) -> str:
    """The URL as it may appear in a message: any password replaced by ``***``."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Unparseable: mask anything between "user:" and "@" by hand.
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def create_store_engine(
    url: str | URL,
    *,
    pool_size: int,
    connect_timeout: float,
    lock_timeout: float,
    durable: bool | None,
) -> EngineSetup:
    """Build the engine for ``url``; raises :class:`StoreConfigError` for a bad URL.

    No connection is opened here.
    """
    if pool_size < 1:
        raise ValueError(f"pool_size must be at least 1, got {pool_size}")
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreConfigError(
            f"malformed store URL {mask_url(url)!r}: expected "
            "'sqlite:///path', 'sqlite://' or 'postgresql+psycopg://user@host:port/db'"
        ) from exc
    shown = mask_url(parsed)
    backend = parsed.get_backend_name()
    if backend not in _SUPPORTED_DRIVERS:
        raise StoreConfigError(
            f"unsupported database {backend!r} in store URL {shown!r}: "
            "trio_gm's store runs on 'sqlite' and 'postgresql'"
        )
    try:
        if backend == "sqlite":
            engine = _sqlite_engine(parsed, lock_timeout=lock_timeout, durable=durable)
            concurrency = 1
        else:
            engine = _postgresql_engine(
                parsed,
                pool_size=pool_size,
                connect_timeout=connect_timeout,
                lock_timeout=lock_timeout,
                durable=durable,
            )
            concurrency = pool_size
    except NoSuchModuleError as exc:
        raise StoreConfigError(
            f"unknown driver {parsed.get_driver_name()!r} in store URL {shown!r}: {exc}"
        ) from exc
    except ImportError as exc:
        raise StoreConfigError(
            f"the driver {parsed.get_driver_name()!r} named by store URL {shown!r} is not "
            f"installed ({exc}); for PostgreSQL use 'postgresql+psycopg://'"
        ) from exc
    driver = engine.dialect.driver
    if driver not in _SUPPORTED_DRIVERS[backend]:
        engine.dispose()
        raise StoreConfigError(
            f"unsupported driver {driver!r} in store URL {shown!r}: use one of "
            f"{', '.join(sorted(_SUPPORTED_DRIVERS[backend]))}"
        )
    return EngineSetup(engine, backend, concurrency, shown)  # type: ignore[arg-type]


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def _sqlite_engine(url: URL, *, lock_timeout: float, durable: bool | None) -> Engine:
    in_memory = _is_memory(url)
    # The store's worker threads come from trio's thread cache, so the one
    # connection is used from several threads, one at a time (the store's
    # CapacityLimiter of 1 ensures that): hence check_same_thread=False.
    connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": lock_timeout}
    engine: Engine
    if in_memory:
        # An in-memory database lives as long as its one connection.
        engine = create_engine(url, poolclass=StaticPool, connect_args=connect_args)
    else:
        engine = create_engine(
            url, poolclass=QueuePool, pool_size=1, max_overflow=0, connect_args=connect_args
        )
    synchronous = "FULL" if durable else "NORMAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        # Stop the driver from issuing (or skipping) BEGIN on its own.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get(BEGIN_OPTION, "BEGIN IMMEDIATE"))

    return engine


def _postgresql_engine(
    url: URL,
    *,
    pool_size: int,
    connect_timeout: float,
    lock_timeout: float,
    durable: bool | None,
) -> Engine:
    options = [f"-c lock_timeout={max(1, round(lock_timeout * 1000))}"]
    if durable is not None:
        options.append(f"-c synchronous_commit={'on' if durable else 'off'}")
    user_options = url.query.get("options")
    if isinstance(user_options, str):
        options.insert(0, user_options)
    seconds = max(2, math.ceil(connect_timeout))
    connect_args: dict[str, Any] = {
        # libpq takes whole seconds and treats anything below 2 as 2.
        "connect_timeout": seconds,
        # An open connection to a server that falls silent (a partition, a
        # host gone) fails within the same bound instead of waiting out
        # TCP's retransmissions (15 minutes): what it sent must be
        # acknowledged by then, and while it waits for an answer, probes
        # every second must be.
        "tcp_user_timeout": seconds * 1000,
        "keepalives": 1,
        "keepalives_idle": 1,
        "keepalives_interval": 1,
        "keepalives_count": seconds,
        "options": " ".join(options),
    }
    if "application_name" not in url.query:
        connect_args["application_name"] = "trio_gm"
    return create_engine(
        url,
        isolation_level="SERIALIZABLE",
        poolclass=QueuePool,
        pool_size=pool_size,
        max_overflow=0,
        # No pool_pre_ping: it costs a round trip per transaction. A pooled
        # connection the server dropped fails its attempt before COMMIT, and
        # the store retries that attempt on a fresh connection.
        connect_args=connect_args,
    )


def retry_kind(exc: BaseException) -> Literal["serialization", "busy"] | None:
    """Whether re-running the whole transaction may succeed, and why."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate in _SERIALIZATION_SQLSTATES:
        return "serialization"
    if sqlstate in _BUSY_SQLSTATES:
        return "busy"
    if isinstance(orig, sqlite3.OperationalError):
        code = getattr(orig, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return "busy"
    return None


def transient_connect_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the server is away for now (down, restarting, unreachable).

    psycopg reports a refused or timed-out connection as an
    ``OperationalError`` without a SQLSTATE; a server shutting down or
    starting up sends one (57P01..57P03). An error with any other SQLSTATE
    (a wrong password, a missing database) is not transient.
    """
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(orig, sqlite3.Error):
        return False
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None:
        # libpq's connection failures carry no SQLSTATE, only a message.
        name = type(orig).__name__
        if not (name == "OperationalError" or name.endswith("ConnectionTimeout")):
            return False
        return not any(marker in str(orig) for marker in _PERMANENT_CONNECT_MARKERS)
    return sqlstate[:2] in _AWAY_SQLSTATE_CLASSES or sqlstate in _AWAY_SQLSTATES
