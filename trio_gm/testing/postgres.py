"""A private PostgreSQL server that a test may stop, kill, restart or hang.

Store-outage tests need a database they are allowed to break, and the
shared server on 127.0.0.1:5432 is not one: this module never connects to
it and never uses port 5432. A :class:`PostgresServer` is a data directory
of its own (``initdb``, or a copy of a :class:`PostgresTemplate`), a free
port, its Unix socket in its own directory, and ``pg_ctl`` to run it::

    with PostgresServer.running() as pg:
        async with trio_gm.open_store(pg.url) as store: ...
        pg.kill()       # SIGKILL: the port refuses connections on return
        pg.start()      # same port, same data: committed rows survive
        pg.restart()    # pg_ctl restart -m immediate (crash recovery)
        pg.pause()      # SIGSTOP: connections hang rather than fail
        pg.resume()

How it runs
    The server runs as the ``postgres`` OS user when we are root (initdb
    refuses root; commands go through ``runuser -u postgres --``, else
    ``su``), and as ourselves otherwise. Its directory must therefore be
    reachable by that user: the default is a fresh directory in ``/dev/shm``
    (tmpfs, when it has room; see :func:`default_base_dir`) or the system
    temporary directory; pytest's ``tmp_path`` is not (``/tmp/pytest-of-root``
    is mode 0700), and :meth:`PostgresServer.create` says so rather than
    loosening its permissions. Binaries come from ``$TRIO_GM_PG_BINDIR``,
    else ``pg_config --bindir``, else the newest ``/usr/lib/postgresql/*/bin``,
    else ``pg_ctl`` on ``PATH``.

    Settings are for tests: trust authentication from anywhere (the server
    listens only on ``host``, 127.0.0.1 by default), ``fsync=off`` (a commit
    survives a kill of the server, not a crash of the OS) and small buffers.
    Every server has a database ``test``, which :attr:`PostgresServer.url`
    names.

Templates
    ``initdb`` plus creating ``test`` and the first start take 0.7 s on
    tmpfs (1.5 to 3.5 s on a busy disk); copying a stopped data directory
    and starting it takes 0.2 s. Create one :class:`PostgresTemplate` per
    test session and pass it to every :meth:`PostgresServer.create`.

Killed servers
    A postmaster killed with SIGKILL leaves behind its PID file and socket
    lock (and here, a zombie: nothing reaps daemons in these containers, so
    its PID still answers ``kill -0``), and by default its children keep
    running until they notice. :meth:`~PostgresServer.kill` kills the
    children too unless told not to; :meth:`~PostgresServer.start` kills any
    process still in the data directory and removes the stale files, so a
    start after a kill always works.

On a simulated host
    ``netns=`` runs the server inside a network namespace, such as a host
    of :class:`trio_gm.testing.netns.SimulatedNetwork`
    (``PostgresServer.create(host=db.address, netns=db.netns)``), so that
    cutting that host off cuts the store off. ``pg_ctl`` then runs through
    ``ip netns exec``, and the port checks happen inside the namespace.
    The Unix socket in :attr:`PostgresServer.socket_dir` still reaches the
    server from any namespace, this one's included.

Sync and async
    The methods block (each for well under a second, except where a timeout
    says otherwise). From trio, call the ``*_async`` variants, which run the
    same method in a worker thread, or :meth:`PostgresServer.running_async`.
    A server is not safe to use from two threads at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import random
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import quote

import attrs
import trio

from trio_gm.testing.netns import in_namespace

__all__ = [
    "DATABASE",
    "SHARED_PORT",
    "PostgresServer",
    "PostgresServerError",
    "PostgresTemplate",
    "ShutdownMode",
    "default_base_dir",
]

#: The database every private server has, and :attr:`PostgresServer.url` names.
DATABASE = "test"
#: The shared server's port: a private server never uses it.
SHARED_PORT = 5432
#: The superuser ``initdb`` creates (whatever OS user runs the server).
SUPERUSER = "postgres"

ShutdownMode = Literal["smart", "fast", "immediate"]
_MODES: tuple[ShutdownMode, ...] = ("smart", "fast", "immediate")

#: Attempts at a free port when one we picked is taken before the first start.
_PORT_ATTEMPTS = 8
#: Where ``ip netns`` keeps the namespaces it names.
_NETNS_DIR = Path("/run/netns")
#: sun_path holds 108 bytes with its NUL; the socket is DIR/.s.PGSQL.PORT.
_MAX_SOCKET_PATH = 107
_POLL = 0.01
_T = TypeVar("_T")
#: Free space /dev/shm needs to be the default base directory (a server takes ~35 MB).
_SHM_ROOM = 1 << 30

#: Appended to postgresql.conf once, by initdb's caller; copies inherit it.
_SETTINGS = """
# trio_gm.testing.postgres: a throwaway server for tests.
fsync = off
full_page_writes = off
synchronous_commit = on
shared_buffers = 16MB
max_connections = 100
wal_level = minimal
max_wal_senders = 0
huge_pages = off
jit = off
logging_collector = off
log_line_prefix = '%m [%p] '
include 'trio_gm_server.conf'
"""

#: Trust from anywhere: the server only listens on the one address it is given.
_HBA = """\
local all all trust
host all all 0.0.0.0/0 trust
host all all ::/0 trust
local replication all trust
host replication all 0.0.0.0/0 trust
host replication all ::/0 trust
"""


class PostgresServerError(RuntimeError):
    """A private server could not be made, started, stopped or killed.

    The message names the data directory and includes the tail of the
    server's log when there is one.
    """


# ------------------------------------------------------------------ toolchain


@attrs.frozen
class _Toolchain:
    """The PostgreSQL binaries and the OS user that runs them."""

    bindir: Path
    #: The OS user to run as (we are root), or None to run as ourselves.
    run_as: str | None
    uid: int
    gid: int
    groups: frozenset[int]

    def command(self, args: Sequence[str]) -> list[str]:
        if self.run_as is None:
            return list(args)
        if shutil.which("runuser") is not None:
            return ["runuser", "-u", self.run_as, "--", *args]
        return ["su", self.run_as, "-s", "/bin/sh", "-c", shlex.join(args)]

    def binary(self, name: str) -> str:
        return str(self.bindir / name)

    def own(self, path: Path) -> None:
        """Give ``path`` to the server's user (a no-op when that is us)."""
        if self.run_as is not None:
            os.chown(path, self.uid, self.gid)


def _server_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _find_bindir() -> Path | None:
    configured = os.environ.get("TRIO_GM_PG_BINDIR")
    if configured:
        return Path(configured) if _server_binaries(Path(configured)) else None
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))

    def version(path: Path) -> tuple[int, ...]:
        digits = path.parent.name.split(".")
        return tuple(int(d) for d in digits if d.isdigit())

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None:
        candidates.append(Path(os.path.realpath(pg_ctl)).parent)
    return next((path for path in candidates if _server_binaries(path)), None)


@functools.cache
def _discover() -> _Toolchain | str:
    """The toolchain, or why a private server is impossible here."""
    bindir = _find_bindir()
    if bindir is None:
        where = (
            f"TRIO_GM_PG_BINDIR={os.environ['TRIO_GM_PG_BINDIR']!r}"
            if os.environ.get("TRIO_GM_PG_BINDIR")
            else "pg_config --bindir, /usr/lib/postgresql/*/bin and PATH"
        )
        return f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) in {where}"
    if os.geteuid() != 0:
        return _Toolchain(
            bindir, None, os.getuid(), os.getgid(), frozenset([os.getgid(), *os.getgroups()])
        )
    try:
        user = pwd.getpwnam(SUPERUSER)
    except KeyError:
        return f"running as root and there is no {SUPERUSER!r} OS user to run the server as"
    if shutil.which("runuser") is None and shutil.which("su") is None:
        return f"running as root and neither runuser nor su is there to become {SUPERUSER!r}"
    groups = frozenset(os.getgrouplist(SUPERUSER, user.pw_gid))
    return _Toolchain(bindir, SUPERUSER, user.pw_uid, user.pw_gid, groups)


def _toolchain() -> _Toolchain:
    found = _discover()
    if isinstance(found, str):
        raise PostgresServerError(f"cannot run a private PostgreSQL server: {found}")
    return found


def _environment() -> dict[str, str]:
    """Our environment without PG* variables (they would redirect the tools)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _run(
    tool: _Toolchain,
    args: Sequence[str],
    *,
    cwd: Path,
    timeout: float,
    netns: str | None = None,
) -> subprocess.CompletedProcess[str]:
    command = tool.command(args)
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PostgresServerError(
            f"{shlex.join(command)} did not finish within {timeout:g} s"
        ) from exc


# ---------------------------------------------------------------- filesystem


def _unreachable_ancestor(path: Path, tool: _Toolchain) -> Path | None:
    """The first directory on the way to ``path`` the server's user cannot enter."""
    if tool.run_as is None:
        return None
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_uid == tool.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in tool.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def default_base_dir() -> Path:
    """Where servers go by default: ``/dev/shm`` if it has room, else the temporary directory.

    On tmpfs a data directory is copied and started in a fraction of the
    time it takes on a disk shared with other work (and a commit still
    survives any kill of the server; only the OS going down loses it).
    """
    shm = Path("/dev/shm")
    with contextlib.suppress(OSError):
        fs = os.statvfs(shm)
        if (
            shm.is_dir()
            and os.access(shm, os.W_OK | os.X_OK)
            and fs.f_bavail * fs.f_frsize >= _SHM_ROOM
        ):
            return shm
    return Path(tempfile.gettempdir())


def _make_directory(tool: _Toolchain, base_dir: str | os.PathLike[str] | None) -> Path:
    base = (default_base_dir() if base_dir is None else Path(base_dir)).resolve()
    if not base.is_dir():
        raise PostgresServerError(f"base_dir {str(base)!r} is not a directory")
    blocked = _unreachable_ancestor(base, tool)
    if blocked is not None:
        mode = stat.filemode(blocked.stat().st_mode)
        raise PostgresServerError(
            f"the server runs as OS user {tool.run_as!r}, which cannot enter {str(blocked)!r} "
            f"({mode}) on the way to base_dir {str(base)!r}; pass a base_dir it can reach, "
            f"or none for {str(default_base_dir())!r}"
        )
    if len(str(base)) + len("/trio_gm_pg_XXXXXXXX/.s.PGSQL.65535") > _MAX_SOCKET_PATH:
        raise PostgresServerError(
            f"base_dir {str(base)!r} is too long: the server's Unix socket, "
            f"BASE_DIR/trio_gm_pg_XXXXXXXX/.s.PGSQL.PORT, must fit in {_MAX_SOCKET_PATH} bytes"
        )
    directory = Path(tempfile.mkdtemp(prefix="trio_gm_pg_", dir=base))
    tool.own(directory)
    return directory


def _write(tool: _Toolchain, path: Path, text: str, *, append: bool = False) -> None:
    with path.open("a" if append else "w", encoding="utf-8") as file:
        file.write(text)
    path.chmod(0o600)
    tool.own(path)


def _conf_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# ----------------------------------------------------------------- processes


def _proc_state(pid: int) -> str | None:
    """The process's state letter, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            text = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2]


def _alive(pid: int) -> bool:
    """True if ``pid`` runs; a zombie (killed, never reaped) is dead."""
    return _proc_state(pid) not in (None, "Z", "X")


def _signal(pids: Sequence[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel picks clients' local ports from."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as file:
            low, high = (int(part) for part in file.read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def _inside(netns: str | None, fn: Callable[[], _T]) -> _T:
    """``fn()``, in network namespace ``netns`` if there is one (ours otherwise)."""
    return fn() if netns is None else in_namespace(netns, fn)


def _free_port(host: str, netns: str | None = None) -> int:
    """A port nothing uses at ``host`` just now, below the ephemeral range, never 5432.

    Below the range, no client's outgoing connection can take the port
    while the server is down between a kill and a start.
    """
    low, _ = _ephemeral_ports()
    first = max(1024, low - 16384)
    if low - first >= 1024:
        for _ in range(100):
            port = random.randrange(first, low)
            if port != SHARED_PORT and _port_free(host, port, netns):
                return port
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    while True:
        with _inside(netns, functools.partial(socket.socket, family, kind, proto)) as sock:
            sock.bind(address)
            port = int(sock.getsockname()[1])
        if port != SHARED_PORT:
            return port


def _port_free(host: str, port: int, netns: str | None = None) -> bool:
    """Whether the server could bind ``host:port`` now (it sets SO_REUSEADDR too)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with _inside(netns, functools.partial(socket.socket, family, kind, proto)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def _refuses(host: str, port: int, netns: str | None = None) -> bool:
    try:
        with _inside(netns, functools.partial(socket.create_connection, (host, port), 0.5)):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


# -------------------------------------------------------------------- server


class PostgresServer:
    """A PostgreSQL server of our own, in a temporary directory, on a free port.

    Make one with :meth:`create` (or :meth:`running`); it is stopped until
    :meth:`start`. :meth:`destroy` stops it, kills anything left and removes
    its directory.
    """

    def __init__(
        self,
        *,
        tool: _Toolchain,
        directory: Path,
        host: str,
        port: int,
        port_chosen: bool,
        needs_database: bool,
        netns: str | None,
    ) -> None:
        """Private: use :meth:`create`."""
        self._netns = netns
        self._tool = tool
        self._directory = directory
        self._host = host
        self._port = port
        self._port_chosen = port_chosen
        self._needs_database = needs_database
        self._started_once = False
        self._paused = False
        self._destroyed = False

    # ------------------------------------------------------------ creating

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why no private server can run here (no binaries, no user to run as), or None."""
        found = _discover()
        return found if isinstance(found, str) else None

    @classmethod
    def create(
        cls,
        base_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        template: PostgresTemplate | None = None,
        timeout: float = 60.0,
        netns: str | None = None,
    ) -> PostgresServer:
        """A new stopped server in a fresh directory under ``base_dir``.

        ``base_dir``: where to make the server's directory (default:
        :func:`default_base_dir`); the server's OS user must be able to
        enter it. ``host``: the one address the server listens on and
        :attr:`url` names (an IPv4 or IPv6 address, or a name; it must exist
        on this host). ``port``: default a free one below the ephemeral port
        range (so no outgoing connection takes it while the server is down),
        picked again at the first :meth:`start` if something took it
        meanwhile; never 5432. ``template``: copy its data directory instead
        of running ``initdb`` (much faster). ``timeout``: seconds ``initdb``
        or the copy may take. ``netns``: the network namespace to run the
        server in (a name ``ip netns list`` shows, such as a simulated
        host's :attr:`~trio_gm.testing.netns.Host.netns`; needs root);
        ``host`` is then an address in that namespace.

        Raises :class:`PostgresServerError` when no server can be made here
        (see :meth:`unavailable_reason`) or ``initdb`` fails, and
        ``ValueError``/``TypeError`` for a bad ``host``, ``port`` or ``netns``.
        """
        _check_host(host)
        _check_port(port)
        _check_netns(netns)
        tool = _toolchain()
        directory = _make_directory(tool, base_dir)
        try:
            data = directory / "data"
            if template is not None:
                template._copy_to(data, timeout=timeout)
            else:
                _initdb(tool, data, timeout=timeout)
            server = cls(
                tool=tool,
                directory=directory,
                host=host,
                port=_free_port(host, netns) if port is None else port,
                port_chosen=port is None,
                needs_database=template is None,
                netns=netns,
            )
            server._write_server_conf()
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return server

    @classmethod
    @contextlib.contextmanager
    def running(
        cls,
        base_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        template: PostgresTemplate | None = None,
        timeout: float = 60.0,
        netns: str | None = None,
    ) -> Iterator[PostgresServer]:
        """A started server for the ``with`` block, destroyed afterwards whatever happens.

        Takes :meth:`create`'s arguments; ``timeout`` also bounds the start.
        """
        server = cls.create(base_dir, host, port, template=template, timeout=timeout, netns=netns)
        try:
            server.start(timeout=timeout)
            yield server
        finally:
            server.destroy()

    @classmethod
    @contextlib.asynccontextmanager
    async def running_async(
        cls,
        base_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        template: PostgresTemplate | None = None,
        timeout: float = 60.0,
        netns: str | None = None,
    ) -> AsyncIterator[PostgresServer]:
        """:meth:`running` for trio: the blocking work runs in worker threads."""
        create = functools.partial(
            cls.create, base_dir, host, port, template=template, timeout=timeout, netns=netns
        )
        server = await trio.to_thread.run_sync(create)
        try:
            await server.start_async(timeout=timeout)
            yield server
        finally:
            with trio.CancelScope(shield=True):
                await server.destroy_async()

    # ---------------------------------------------------------- properties

    @property
    def directory(self) -> Path:
        """The server's own directory: ``data/``, ``postgres.log`` and the Unix socket."""
        return self._directory

    @property
    def data_dir(self) -> Path:
        return self._directory / "data"

    @property
    def log_file(self) -> Path:
        return self._directory / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        """Where the server's Unix socket is (``unix_socket_directories``)."""
        return self._directory

    @property
    def host(self) -> str:
        return self._host

    @property
    def netns(self) -> str | None:
        """The network namespace the server runs in, or None for ours."""
        return self._netns

    @property
    def port(self) -> int:
        """The TCP port; fixed from the first successful :meth:`start` on."""
        return self._port

    @property
    def database(self) -> str:
        return DATABASE

    @property
    def url(self) -> str:
        """``postgresql+psycopg://postgres@HOST:PORT/test``, for :func:`trio_gm.open_store`."""
        netloc = f"[{self._host}]" if ":" in self._host else self._host
        return f"postgresql+psycopg://{SUPERUSER}@{netloc}:{self._port}/{DATABASE}"

    @property
    def socket_url(self) -> str:
        """:attr:`url` through the Unix socket: it reaches the server from any network namespace.

        From the test process, for instance, while the simulated host the
        server runs on is cut off from the others.
        """
        return (
            f"postgresql+psycopg://{SUPERUSER}@/{DATABASE}"
            f"?host={quote(str(self.socket_dir), safe='/')}&port={self._port}"
        )

    @property
    def dsn(self) -> str:
        """The libpq connection string for database ``test`` over TCP (for psycopg)."""
        return f"host={self._host} port={self._port} user={SUPERUSER} dbname={DATABASE}"

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs (or is paused), else None."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    @property
    def is_running(self) -> bool:
        """Whether the postmaster is alive (paused counts as running)."""
        return self.pid is not None

    @property
    def paused(self) -> bool:
        return self._paused

    def processes(self) -> list[int]:
        """PIDs of every live process of this server: the postmaster and its children.

        They are found by their working directory, the data directory, so
        children of a killed postmaster count too; zombies do not.
        """
        return sorted(self._live_processes())

    def __repr__(self) -> str:
        state = (
            "destroyed"
            if self._destroyed
            else "paused"
            if self._paused
            else "running"
            if self.is_running
            else "stopped"
        )
        return f"<PostgresServer {self._host}:{self._port} {state} in {str(self._directory)!r}>"

    # -------------------------------------------------------------- control

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (``pg_ctl start -w``) and wait until it accepts connections.

        After a :meth:`kill`, first kills whatever is left of the old
        server (children of a postmaster killed alone) and removes its stale
        PID file and socket lock. Raises :class:`PostgresServerError`, with the
        log's tail, if the server is already running or does not start
        within ``timeout`` seconds; then nothing of it is left running.
        """
        self._check_usable()
        if self.pid is not None:
            raise PostgresServerError(f"{self!r} is already running")
        self._clear_leftovers()
        for _ in range(_PORT_ATTEMPTS):
            may_move = self._port_chosen and not self._started_once
            if may_move and not _port_free(self._host, self._port, self._netns):
                self._move_port()
                continue
            offset = self._log_size()
            result = self._pg_ctl("start", "-l", str(self.log_file), timeout=timeout)
            if result.returncode == 0:
                break
            log = self._log_since(offset)
            self._kill_everything()
            self._remove_stale_locks()
            if may_move and ("could not bind" in log or "already in use" in log):
                self._move_port()
                continue
            raise self._failure("start", result, log)
        else:
            raise PostgresServerError(f"no free port for {self!r} after {_PORT_ATTEMPTS} attempts")
        self._started_once = True
        if self._needs_database:
            self._create_database(timeout)
            self._needs_database = False

    def stop(self, mode: ShutdownMode = "fast", timeout: float = 30.0) -> None:
        """Stop the server (``pg_ctl stop -m MODE -w``); nothing happens if it is not running.

        On return none of its processes is left.

        ``fast`` disconnects clients and shuts down cleanly, ``smart`` waits
        for them to disconnect, ``immediate`` quits without a checkpoint
        (crash recovery at the next start). A paused server is resumed first.
        """
        _check_mode(mode)
        self._check_usable()
        if self.pid is None:
            return
        self.resume()
        offset = self._log_size()
        result = self._pg_ctl("stop", "-m", mode, timeout=timeout)
        if result.returncode != 0:
            raise self._failure(f"stop -m {mode}", result, self._log_since(offset))
        # pg_ctl returns once the PID file is gone, a moment before the
        # postmaster itself.
        self._wait(
            lambda: not self._live_processes(),
            time.monotonic() + timeout,
            f"the processes of {self!r} to exit",
        )

    def restart(self, mode: ShutdownMode = "immediate", timeout: float = 30.0) -> None:
        """``pg_ctl restart -m MODE -w``: stop, then start again on the same port.

        With the default ``immediate`` the server quits without a
        checkpoint and recovers from its WAL when it starts, as after a
        crash; clients see their connections fail for a moment. The server
        must be running (use :meth:`start` after :meth:`kill` or :meth:`stop`).
        """
        _check_mode(mode)
        self._check_usable()
        if self.pid is None:
            raise PostgresServerError(f"{self!r} is not running; start() it instead")
        self.resume()
        offset = self._log_size()
        result = self._pg_ctl("restart", "-m", mode, "-l", str(self.log_file), timeout=timeout)
        if result.returncode != 0:
            raise self._failure(f"restart -m {mode}", result, self._log_since(offset))

    def kill(self, *, backends: bool = True, timeout: float = 10.0) -> None:
        """SIGKILL the postmaster, and return once its port refuses connections.

        ``backends=True`` (default) SIGKILLs every child too (backends,
        checkpointer, ...), so clients' open connections break at once.
        With ``backends=False`` only the postmaster dies, as if it alone
        crashed: its children see it gone and exit on their own, and a
        connection mid-query may finish first. Either way :meth:`start`
        brings the server back with its committed data. Raises
        :class:`PostgresServerError` if it is not running, or if it has not
        died within ``timeout`` seconds.
        """
        self._check_usable()
        pid = self.pid
        if pid is None:
            raise PostgresServerError(f"{self!r} is not running")
        deadline = time.monotonic() + timeout
        _signal([pid], signal.SIGKILL)
        if backends:
            self._kill_everything(deadline)
        else:
            if self._paused:
                _signal(self.processes(), signal.SIGCONT)
            self._wait(lambda: not _alive(pid), deadline, f"postmaster {pid} to die")
        self._paused = False
        self._wait(
            lambda: _refuses(self._host, self._port, self._netns),
            deadline,
            f"port {self._port} to refuse connections",
        )

    def pause(self) -> None:
        """SIGSTOP the postmaster and all its children: a hung server.

        New TCP connections are accepted by the kernel but never answered
        (a client fails only by its own ``connect_timeout``), and queries on
        open connections hang. :meth:`resume` undoes it; :meth:`stop`,
        :meth:`restart` and :meth:`destroy` resume first, :meth:`kill` needs
        not.
        """
        self._check_usable()
        pid = self.pid
        if pid is None:
            raise PostgresServerError(f"{self!r} is not running")
        # The postmaster first, and only then its children: once it is
        # stopped it forks no new backend we could miss.
        _signal([pid], signal.SIGSTOP)
        self._paused = True
        self._wait(
            lambda: _proc_state(pid) in ("T", None, "Z"),
            time.monotonic() + 10.0,
            f"postmaster {pid} to stop",
        )
        _signal([p for p in self.processes() if p != pid], signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT every process of a :meth:`pause`\\ d server; a no-op otherwise."""
        if self._paused:
            _signal(self.processes(), signal.SIGCONT)
            self._paused = False

    def destroy(self, timeout: float = 30.0) -> None:
        """Stop the server, kill whatever of it is left and delete its directory.

        Idempotent; the server is unusable afterwards.
        """
        if self._destroyed:
            return
        try:
            if self.pid is not None:
                self.resume()
                with contextlib.suppress(PostgresServerError):
                    self._pg_ctl("stop", "-m", "immediate", timeout=timeout)
            self._kill_everything(time.monotonic() + timeout)
        finally:
            self._destroyed = True
            shutil.rmtree(self._directory)

    # ----------------------------------------------------------- async API

    async def start_async(self, timeout: float = 30.0) -> None:
        """:meth:`start` in a worker thread."""
        await trio.to_thread.run_sync(functools.partial(self.start, timeout))

    async def stop_async(self, mode: ShutdownMode = "fast", timeout: float = 30.0) -> None:
        """:meth:`stop` in a worker thread."""
        await trio.to_thread.run_sync(functools.partial(self.stop, mode, timeout))

    async def restart_async(self, mode: ShutdownMode = "immediate", timeout: float = 30.0) -> None:
        """:meth:`restart` in a worker thread."""
        await trio.to_thread.run_sync(functools.partial(self.restart, mode, timeout))

    async def kill_async(self, *, backends: bool = True, timeout: float = 10.0) -> None:
        """:meth:`kill` in a worker thread."""
        await trio.to_thread.run_sync(
            functools.partial(self.kill, backends=backends, timeout=timeout)
        )

    async def destroy_async(self, timeout: float = 30.0) -> None:
        """:meth:`destroy` in a worker thread."""
        await trio.to_thread.run_sync(functools.partial(self.destroy, timeout))

    # ------------------------------------------------------------ internals

    def _check_usable(self) -> None:
        if self._destroyed:
            raise PostgresServerError(f"{self!r} cannot be used any more")

    def _pg_ctl(self, action: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        command = [
            self._tool.binary("pg_ctl"),
            action,
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            str(max(1, round(timeout))),
            *args,
        ]
        return _run(
            self._tool, command, cwd=self._directory, timeout=timeout + 10, netns=self._netns
        )

    def _write_server_conf(self) -> None:
        settings = (
            f"port = {self._port}\n"
            f"listen_addresses = {_conf_string(self._host)}\n"
            f"unix_socket_directories = {_conf_string(str(self._directory))}\n"
        )
        _write(self._tool, self.data_dir / "trio_gm_server.conf", settings)

    def _move_port(self) -> None:
        self._port = _free_port(self._host, self._netns)
        self._write_server_conf()

    def _is_ours(self, pid: int) -> bool:
        """Whether ``pid`` is a live process working in our data directory."""
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:  # gone, a zombie, or not ours to look at
            return False
        return cwd == str(self.data_dir) and _alive(pid)

    def _live_processes(self) -> set[int]:
        return {
            int(entry.name)
            for entry in os.scandir("/proc")
            if entry.name.isdigit() and self._is_ours(int(entry.name))
        }

    def _kill_everything(self, deadline: float | None = None) -> None:
        """SIGKILL every process in the data directory until there is none."""
        deadline = time.monotonic() + 10.0 if deadline is None else deadline
        while processes := self.processes():
            _signal(processes, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise PostgresServerError(f"processes {processes} of {self!r} survive SIGKILL")
            time.sleep(_POLL)
        self._paused = False

    def _clear_leftovers(self) -> None:
        """Kill what is left of a killed server, then drop its stale locks.

        Its postmaster is gone, so its children serve nothing: killing them
        loses no commit (the WAL was written before each commit returned).
        """
        self._kill_everything()
        self._remove_stale_locks()

    def _remove_stale_locks(self) -> None:
        # A killed postmaster's PID may still answer kill -0 as an unreaped
        # zombie, which would make the new postmaster refuse to start.
        stale = [self.data_dir / "postmaster.pid", *self._directory.glob(".s.PGSQL.*")]
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _create_database(self, timeout: float) -> None:
        import psycopg

        try:
            with psycopg.connect(
                host=str(self.socket_dir),
                port=self._port,
                user=SUPERUSER,
                dbname="postgres",
                autocommit=True,
                connect_timeout=max(2, round(timeout)),
            ) as conn:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
        except psycopg.Error as exc:
            raise PostgresServerError(
                f"could not create database {DATABASE!r} in {self!r}: {exc}"
            ) from exc

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as file:
                file.seek(offset)
                return file.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _failure(
        self, what: str, result: subprocess.CompletedProcess[str], log: str
    ) -> PostgresServerError:
        output = (result.stdout + result.stderr).strip()
        tail = "\n".join(log.strip().splitlines()[-15:])
        return PostgresServerError(
            f"pg_ctl {what} of {str(self.data_dir)!r} (port {self._port}) failed with status "
            f"{result.returncode}: {output or 'no output'}"
            + (f"\n--- {self.log_file}:\n{tail}" if tail else "")
        )

    @staticmethod
    def _wait(done: Callable[[], bool], deadline: float, what: str) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise PostgresServerError(f"gave up waiting for {what}")
            time.sleep(_POLL)


# ------------------------------------------------------------------ template


class PostgresTemplate:
    """A stopped data directory with database ``test``, for servers to copy.

    Making a server from one costs a copy (about 0.2 s) instead of
    ``initdb`` and a ``CREATE DATABASE`` (over a second). It is read-only
    to the servers made from it; :meth:`destroy` removes it.
    """

    def __init__(self, server: PostgresServer) -> None:
        """Private: use :meth:`create` or :meth:`temporary`."""
        self._server = server

    @classmethod
    def create(
        cls, base_dir: str | os.PathLike[str] | None = None, *, timeout: float = 60.0
    ) -> PostgresTemplate:
        """Run ``initdb`` in a fresh directory under ``base_dir``, make database ``test``, stop.

        It starts once, briefly, on a free loopback port.
        """
        server = PostgresServer.create(base_dir, timeout=timeout)
        try:
            server.start(timeout=timeout)
            server.stop("fast", timeout=timeout)
        except BaseException:
            server.destroy()
            raise
        return cls(server)

    @classmethod
    @contextlib.contextmanager
    def temporary(
        cls, base_dir: str | os.PathLike[str] | None = None, *, timeout: float = 60.0
    ) -> Iterator[PostgresTemplate]:
        """A template for the ``with`` block, destroyed afterwards."""
        template = cls.create(base_dir, timeout=timeout)
        try:
            yield template
        finally:
            template.destroy()

    @property
    def data_dir(self) -> Path:
        return self._server.data_dir

    def destroy(self) -> None:
        """Delete the template's directory (servers made from it are unaffected)."""
        self._server.destroy()

    def __repr__(self) -> str:
        return f"<PostgresTemplate {str(self.data_dir)!r}>"

    def _copy_to(self, data: Path, *, timeout: float) -> None:
        tool = self._server._tool
        result = _run(
            tool, ["cp", "-a", str(self.data_dir), str(data)], cwd=data.parent, timeout=timeout
        )
        if result.returncode != 0:
            raise PostgresServerError(
                f"could not copy template {str(self.data_dir)!r} to {str(data)!r}: "
                f"{(result.stdout + result.stderr).strip()}"
            )
        # pg_ctl restart rereads the command line from postmaster.opts, which
        # here still names the template's data directory.
        with contextlib.suppress(FileNotFoundError):
            (data / "postmaster.opts").unlink()


# ------------------------------------------------------------------- helpers


def _initdb(tool: _Toolchain, data: Path, *, timeout: float) -> None:
    command = [
        tool.binary("initdb"),
        "-D",
        str(data),
        "-U",
        SUPERUSER,
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--no-locale",
        "--no-sync",
        # 1 MB WAL segments instead of 16: a data directory a third the size to copy.
        "--wal-segsize=1",
    ]
    result = _run(tool, command, cwd=data.parent, timeout=timeout)
    if result.returncode != 0:
        raise PostgresServerError(
            f"initdb of {str(data)!r} failed with status {result.returncode}: "
            f"{(result.stdout + result.stderr).strip()}"
        )
    _write(tool, data / "postgresql.conf", _SETTINGS, append=True)
    _write(tool, data / "pg_hba.conf", _HBA)


def _check_host(host: object) -> None:
    if not isinstance(host, str):
        raise TypeError(f"host must be a str (an address or a name), got {host!r}")
    if not host or host == "*" or any(c in host for c in ",' \t\n"):
        raise ValueError(
            f"host must be one address or name for the server to listen on, got {host!r}"
        )


def _check_port(port: object) -> None:
    if port is None:
        return
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"port must be an int or None, got {port!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1..65535, got {port}")
    if port == SHARED_PORT:
        raise ValueError(
            f"port={SHARED_PORT} is the shared server's port; a private server never uses it"
        )


def _check_netns(netns: object) -> None:
    if netns is None:
        return
    if not isinstance(netns, str):
        raise TypeError(f"netns must be a str (a network namespace's name) or None, got {netns!r}")
    if not netns or "/" in netns or netns in (".", "..") or not (_NETNS_DIR / netns).exists():
        raise ValueError(
            f"netns must name a network namespace in {str(_NETNS_DIR)!r} "
            f"(as ip netns list shows them), got {netns!r}"
        )


def _check_mode(mode: object) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
