"""Simulated hosts: Linux network namespaces on one bridge, with cuts to make and heal.

Multi-host tests need machines whose links they may cut. A
:class:`SimulatedNetwork` is a Linux bridge and one network namespace per
"host", each joined to the bridge by a veth pair, with an IPv4 address in
``10.231.X.0/24`` and an IPv6 address in ``fd00:10:231:X::/64`` (``X`` random
per network, so concurrent runs are easy to tell apart in ``ip`` listings;
they could not clash anyway, each network being a bridge of its own)::

    with SimulatedNetwork.create(hosts=3) as net:   # hosts a, b, c
        a, b, c = net.hosts
        server = a.popen([sys.executable, "-m", "my.server", a.address])
        net.cut(a, b)          # a and b drop each other's packets; both reach c
        net.cut_one_way(a, c)  # c drops a's packets; c's still reach a
        net.isolate(b)         # b and everyone else drop each other's packets
        net.heal_all()
        db = net.add_host("db")
        with PostgresServer.running(host=db.address, netns=db.netns) as pg: ...

The hosts share this machine's filesystem, users and processes: only the
network differs. A host has ``lo`` and ``eth0`` and a route to the subnet,
nothing else, so it reaches the other hosts and no one else; its
``127.0.0.1`` is its own. The test process stays in the root namespace,
which has no address on the bridge: it talks to the hosts through the
processes it runs there (:meth:`Host.popen`, :meth:`Host.open_process`),
through sockets made inside them (:meth:`Host.socket`), or through the
filesystem (a PostgreSQL server's Unix socket reaches it from anywhere).

Cuts
    A cut is a silent drop, as a firewall's ``DROP`` is: the receiving host
    has a policy rule, ``ip rule add from SRC iif eth0 blackhole``, ahead of
    its ``local`` table (which each host moves from priority 0 to 32000 for
    this), so packets from a cut peer are discarded on arrival and the
    sender hears nothing. A connection attempt across a cut therefore times
    out, and an open connection stalls, rather than failing at once. (A
    blackhole *route* at the sender would be simpler, but fails the
    sender's own ``connect`` and ``send`` at once with ``EINVAL``: a cut a
    program can see, which a real partition is not.)

    :meth:`~SimulatedNetwork.cut_one_way` ``(a, b)`` drops only a's packets
    to b; b's datagrams still reach a, but TCP breaks both ways (a
    connection from b never sees a's SYN-ACK). :meth:`~SimulatedNetwork.isolate`
    drops everything between a host and every other one, hosts added later
    included. Cuts and isolations are tracked separately and idempotent:
    cutting twice needs one heal, healing a pair that is not cut does
    nothing, and :meth:`~SimulatedNetwork.rejoin` leaves the host's explicit
    cuts in place. Neighbour tables are static (every host has a permanent
    ARP and NDP entry for every other's fixed MAC address), so no
    resolution ever crosses a cut: a one-way cut stays one-way over IPv6
    too, whose neighbour advertisements would come from the dropped
    direction, and a heal works at once.

Lifetime and cleanup
    Everything is named after the network's random id (``trgm<id>b`` the
    bridge, ``trgm<id>v<n>`` the veths, ``trgm-<id>-<host>`` the
    namespaces), and :meth:`SimulatedNetwork.close` (the ``with`` block's
    end, whatever ends it, a ``KeyboardInterrupt`` included) SIGKILLs every
    process left in the namespaces (those :meth:`Host.popen` started are
    also reaped), then deletes the veths, the namespaces and the bridge,
    and checks that nothing with the id remains. A network whose process
    died before it could do so is removed by :func:`remove_leftovers`:
    each network writes its owner (PID and start time) to
    ``/run/trio_gm_netns/<id>.json`` before making anything and deletes it
    last, so leftovers of a dead owner are told apart from a live network
    of a concurrent run.

Where it runs
    As root on Linux with ``ip`` (iproute2) on ``PATH``;
    :meth:`SimulatedNetwork.unavailable_reason` says why not elsewhere, by
    trying to make and remove a one-host network.

Sync and async
    The methods block, each for milliseconds (:meth:`SimulatedNetwork.create`
    and :meth:`~SimulatedNetwork.close` a few per host). From trio, call the
    ``*_async`` variants, which run the same method in a worker thread, or
    use :meth:`SimulatedNetwork.running_async`. A network is not safe to
    use from two threads at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

__all__ = [
    "PREFIX",
    "Host",
    "SimulatedNetwork",
    "SimulatedNetworkError",
    "in_namespace",
    "remove_leftovers",
]

#: The start of every bridge, veth and namespace name this module makes.
PREFIX = "trgm"
#: Where each network records its owner while it exists (see :func:`remove_leftovers`).
OWNER_DIR = Path("/run/trio_gm_netns")
#: The interface every host has on the bridge.
INTERFACE = "eth0"
#: At most this many hosts on one network (addresses .1 to .254).
MAX_HOSTS = 254

_NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
#: Priority of the drop rules; each host's ``local`` table moves behind them.
_DROP_PRIORITY = 100
_LOCAL_PRIORITY = 32000
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_ID = r"[0-9a-f]{6}"
_NAMESPACE_OF = re.compile(rf"{PREFIX}-({_ID})-")
_LINK_OF = re.compile(rf"{PREFIX}({_ID})[bv]")
_IP_TIMEOUT = 30.0
_KILL_TIMEOUT = 10.0
_POLL = 0.01

T = TypeVar("T")


class SimulatedNetworkError(RuntimeError):
    """A simulated network could not be made, changed or removed.

    The message names the command that failed and what it printed.
    """


# --------------------------------------------------------------- namespaces


_libc: ctypes.CDLL | None = None


def _setns(path: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path!r}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def in_namespace(netns: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` in a new thread that has entered network namespace ``netns``.

    The thread ends when ``fn`` returns, so nothing else ever runs in the
    namespace by accident. Sockets ``fn`` makes belong to the namespace for
    their whole life, whichever thread uses them later; so do the
    ``/proc/sys/net`` files it opens. Raises what ``fn`` raises, and
    ``OSError`` if there is no namespace ``netns`` (a name ``ip netns
    list`` shows) or we may not enter it.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            _setns(str(_NETNS_DIR / netns))
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name=f"in_namespace({netns})", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _namespace_ids(names: Iterable[str]) -> dict[tuple[int, int], str]:
    """(st_dev, st_ino) of each live namespace among ``names``, to find its processes."""
    found: dict[tuple[int, int], str] = {}
    for name in names:
        with contextlib.suppress(OSError):
            st = os.stat(_NETNS_DIR / name)
            found[(st.st_dev, st.st_ino)] = name
    return found


def _processes_in(names: Iterable[str]) -> dict[str, list[int]]:
    """The live processes (zombies excluded: they have left) in each namespace."""
    ids = _namespace_ids(names)
    found: dict[str, list[int]] = {name: [] for name in ids.values()}
    if not ids:
        return found
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:  # gone, or a zombie
            continue
        name = ids.get((st.st_dev, st.st_ino))
        if name is not None:
            found[name].append(int(entry.name))
    for pids in found.values():
        pids.sort()
    return found


def _kill_processes_in(names: Sequence[str], timeout: float = _KILL_TIMEOUT) -> None:
    """SIGKILL every process in the namespaces until there is none."""
    deadline = time.monotonic() + timeout
    while pids := [pid for group in _processes_in(names).values() for pid in group]:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise SimulatedNetworkError(f"processes {pids} in {list(names)} survive SIGKILL")
        time.sleep(_POLL)


def _write_sysctls(settings: dict[str, str]) -> None:
    for key, value in settings.items():
        with open("/proc/sys/" + key.replace(".", "/"), "w", encoding="ascii") as file:
            file.write(value)


# ---------------------------------------------------------------- ip command


def _ip(
    args: Sequence[str],
    *,
    batch: Sequence[str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (with ``batch`` lines on stdin for ``-b -``)."""
    command = ["ip", *args]
    try:
        result = subprocess.run(
            command,
            input="".join(line + "\n" for line in batch) if batch is not None else None,
            stdin=subprocess.DEVNULL if batch is None else None,
            capture_output=True,
            text=True,
            timeout=_IP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SimulatedNetworkError(
            f"{' '.join(command)} did not finish within {_IP_TIMEOUT:g} s"
        ) from exc
    if check and result.returncode != 0:
        commands = "".join(f"\n  {line}" for line in batch) if batch else ""
        raise SimulatedNetworkError(
            f"{' '.join(command)} failed with status {result.returncode}: "
            f"{(result.stdout + result.stderr).strip() or 'no output'}"
            + (f"\ncommands:{commands}" if commands else "")
        )
    return result


def _ip_batch(lines: Sequence[str], *options: str) -> None:
    if lines:
        _ip([*options, "-b", "-"], batch=lines)


def _links() -> list[str]:
    result = _ip(["-j", "link", "show"])
    return [str(link["ifname"]) for link in json.loads(result.stdout or "[]")]


def _namespaces() -> list[str]:
    try:
        return sorted(os.listdir(_NETNS_DIR))
    except FileNotFoundError:
        return []


# --------------------------------------------------------------- ownership


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is not alive."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def _owner_record() -> dict[str, int]:
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid) or 0, "pidns": _pid_namespace()}


def _owner_file(network_id: str) -> Path:
    return OWNER_DIR / f"{network_id}.json"


def _write_owner(network_id: str) -> None:
    OWNER_DIR.mkdir(mode=0o755, exist_ok=True)
    path = _owner_file(network_id)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(_owner_record()), encoding="ascii")
    temporary.replace(path)


def _owner_alive(network_id: str) -> bool:
    """Whether the process that made network ``network_id`` still runs.

    An owner in another PID namespace cannot be checked and counts as alive.
    """
    try:
        record = json.loads(_owner_file(network_id).read_text(encoding="ascii"))
        pid, start, pidns = int(record["pid"]), int(record["start"]), int(record["pidns"])
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):
        return False  # a torn or foreign file: nothing of ours can rely on it
    if pidns != _pid_namespace():
        return True
    return _start_time(pid) == start


def _remove_network(network_id: str) -> list[str]:
    """Kill the processes in network ``network_id``'s namespaces and delete all of it.

    Works from what exists, not from what a :class:`SimulatedNetwork`
    remembers, so it also finishes a removal that was interrupted. Returns
    the names of the namespaces and links it deleted; raises
    :class:`SimulatedNetworkError` if any remains.
    """

    def ours() -> tuple[list[str], list[str]]:
        return (
            [name for name in _namespaces() if name.startswith(f"{PREFIX}-{network_id}-")],
            [name for name in _links() if name.startswith(f"{PREFIX}{network_id}")],
        )

    namespaces, links = ours()
    _kill_processes_in(namespaces)
    bridge = _bridge_name(network_id)
    # Deleting one end of a veth deletes the pair at once, where the end of
    # its namespace would free it later, in the kernel's own time.
    lines = [f"link del {name}" for name in links if name != bridge]
    lines += [f"netns del {name}" for name in namespaces]
    lines += [f"link del {bridge}"] if bridge in links else []
    if lines:
        _ip(["-force", "-b", "-"], batch=lines, check=False)
    left = [name for names in ours() for name in names]
    if left:
        raise SimulatedNetworkError(f"could not remove {left} of simulated network {network_id}")
    with contextlib.suppress(FileNotFoundError):
        _owner_file(network_id).unlink()
    return [*namespaces, *links]


def remove_leftovers() -> list[str]:
    """Remove the networks whose owning process has died without removing them.

    A network belongs to the process that made it; while that process
    runs, its network is left alone, so this is safe beside concurrent
    test runs (in the same PID namespace; owners in another one are never
    judged dead). Returns the names of the namespaces and links removed.
    Needs what the networks need (see :meth:`SimulatedNetwork.unavailable_reason`).
    """
    ids: set[str] = set()
    for name in _namespaces():
        if match := _NAMESPACE_OF.match(name):
            ids.add(match.group(1))
    for name in _links():
        if match := _LINK_OF.match(name):
            ids.add(match.group(1))
    with contextlib.suppress(FileNotFoundError):
        # Not the .tmp files: one may be an owner record being written now.
        for path in OWNER_DIR.iterdir():
            if re.fullmatch(rf"{_ID}\.json", path.name):
                ids.add(path.name[:6])
    removed: list[str] = []
    for network_id in sorted(ids):
        if not _owner_alive(network_id):
            removed += _remove_network(network_id)
    return removed


def _bridge_name(network_id: str) -> str:
    return f"{PREFIX}{network_id}b"


def _default_names(count: int) -> list[str]:
    """``a``, ``b``, ... ``z``, then ``h27``, ``h28``, ...: the issue's hosts A, B, C."""
    return [chr(ord("a") + i) if i < 26 else f"h{i + 1}" for i in range(count)]


@functools.cache
def _probe() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "not root: making network namespaces, veths and bridges needs root"
    if shutil.which("ip") is None:
        return "no ip command (iproute2) on PATH"
    try:
        with SimulatedNetwork.create(hosts=1):
            pass
    except (SimulatedNetworkError, OSError) as exc:
        return f"a network namespace could not be made and removed here: {exc}"
    return None


# --------------------------------------------------------------------- hosts


class Host:
    """One simulated host: a network namespace with ``lo`` and ``eth0`` on the bridge.

    Made by :meth:`SimulatedNetwork.create` and :meth:`SimulatedNetwork.add_host`.
    Processes it runs share this machine's filesystem and users; they see
    only the host's network.
    """

    def __init__(self, network: SimulatedNetwork, name: str, index: int) -> None:
        """Private: hosts come from their :class:`SimulatedNetwork`."""
        self._network = network
        self._name = name
        self._index = index
        self._popens: list[subprocess.Popen[Any]] = []

    @property
    def name(self) -> str:
        """The host's name on its network (``a``, ``db``, ...)."""
        return self._name

    @property
    def network(self) -> SimulatedNetwork:
        return self._network

    @property
    def index(self) -> int:
        """1 for the first host, and the last part of its addresses."""
        return self._index

    @property
    def netns(self) -> str:
        """The network namespace's name, as ``ip netns list`` shows it."""
        return f"{PREFIX}-{self._network.id}-{self._name}"

    @property
    def veth(self) -> str:
        """The root-namespace end of the host's veth pair (a port of the bridge)."""
        return f"{PREFIX}{self._network.id}v{self._index}"

    @property
    def address(self) -> str:
        """The host's IPv4 address, ``10.231.X.INDEX``."""
        return f"10.231.{self._network._octet}.{self._index}"

    @property
    def address6(self) -> str:
        """The host's IPv6 address, ``fd00:10:231:X::INDEX``, compressed as the kernel shows it.

        Raises :class:`SimulatedNetworkError` if the network has no IPv6.
        """
        if not self._network.ipv6:
            raise SimulatedNetworkError(f"{self._network!r} was made with ipv6=False")
        return str(ipaddress.IPv6Address(f"fd00:10:231:{self._network._octet}::{self._index}"))

    @property
    def mac(self) -> str:
        """The MAC address of the host's ``eth0``, fixed by the network's octet and the index."""
        return f"02:74:67:6d:{self._network._octet:02x}:{self._index:02x}"

    def addresses(self) -> list[str]:
        """The host's IPv4 address and, if the network has IPv6, its IPv6 address."""
        return [self.address, self.address6] if self._network.ipv6 else [self.address]

    def __repr__(self) -> str:
        return f"<Host {self._name} {self.address} in {self.netns}>"

    # ---------------------------------------------------------- processes

    def command(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """``argv`` prefixed to run inside the host: ``ip netns exec NETNS ...``.

        ``ip`` enters the namespace and executes ``argv`` in its own place,
        so the PID a caller sees is the program's.
        """
        self._network._check_open()
        if isinstance(argv, str | bytes):
            raise TypeError(f"argv must be a sequence of arguments, not the string {argv!r}")
        return ["ip", "netns", "exec", self.netns, *(os.fspath(arg) for arg in argv)]

    def run(
        self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """:func:`subprocess.run` of ``argv`` inside the host (same keyword arguments)."""
        return subprocess.run(self.command(argv), **kwargs)

    def popen(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.Popen[Any]:
        """:class:`subprocess.Popen` of ``argv`` inside the host (same keyword arguments).

        The network's :meth:`~SimulatedNetwork.close` kills it if it still
        runs, reaps it and closes its pipes. The process is ``ip`` in our
        namespace until it has entered the host's and executed ``argv``
        (milliseconds later): wait for a sign of life before signalling it
        or counting on :meth:`processes` to list it.
        """
        process: subprocess.Popen[Any] = subprocess.Popen(self.command(argv), **kwargs)
        self._popens = [p for p in self._popens if p.returncode is None]
        self._popens.append(process)
        return process

    async def run_process(
        self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        """:func:`trio.run_process` of ``argv`` inside the host (same keyword arguments)."""
        return await trio.run_process(self.command(argv), **kwargs)

    async def open_process(
        self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any
    ) -> trio.Process:
        """:func:`trio.lowlevel.open_process` of ``argv`` inside the host.

        The network's :meth:`~SimulatedNetwork.close` kills it if it still
        runs (waiting for it stays the caller's business, as with trio).
        """
        return await trio.lowlevel.open_process(self.command(argv), **kwargs)

    def processes(self) -> list[int]:
        """PIDs of every live process in the host's namespace, whoever started it."""
        self._network._check_open()
        return _processes_in([self.netns]).get(self.netns, [])

    def signal_processes(self, signum: int) -> list[int]:
        """Send ``signum`` to every process in the host (SIGKILL: a host crash); returns PIDs.

        A process that forks meanwhile may leave a child unsignalled; for
        SIGKILL, call until it returns ``[]``.
        """
        pids = self.processes()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        return pids

    # ------------------------------------------------------------- sockets

    def socket(
        self,
        family: socket.AddressFamily = socket.AF_INET,
        type: socket.SocketKind = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> socket.socket:
        """A new socket inside the host: it binds, listens and connects as the host.

        It stays in the host's namespace whichever thread uses it (wrap it
        with :func:`trio.socket.from_stdlib_socket` for trio). Close it
        yourself: an open socket keeps the namespace alive, though not its
        name or link, after :meth:`~SimulatedNetwork.close`.
        """
        self._network._check_open()
        return in_namespace(self.netns, functools.partial(socket.socket, family, type, proto))

    def _reap(self) -> None:
        for process in self._popens:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=_KILL_TIMEOUT)
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        self._popens = []


# ------------------------------------------------------------------- network


class SimulatedNetwork:
    """A bridge and N hosts on it, each a network namespace; see the module docstring.

    Use it as a context manager, ``with SimulatedNetwork.create(hosts=3) as
    net:``, or call :meth:`close`; from trio, ``async with
    SimulatedNetwork.running_async(hosts=3) as net:``.
    """

    def __init__(self, network_id: str, octet: int, ipv6: bool) -> None:
        """Private: use :meth:`create` or :meth:`running_async`."""
        self._id = network_id
        self._octet = octet
        self._ipv6 = ipv6
        self._hosts: dict[str, Host] = {}
        self._next_index = 1
        #: Explicit one-way cuts, (src, dst): dst drops src's packets.
        self._cuts: set[tuple[str, str]] = set()
        self._isolated: set[str] = set()
        #: The drops that are in the kernel, as (src, dst): dst has the rule for src.
        self._applied: set[tuple[str, str]] = set()
        self._closed = False

    # ------------------------------------------------------------ creating

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why no simulated network can be made here, or None.

        Not Linux, not root, no ``ip``, or (tried once per process) making
        and removing a one-host network failed, as it does in a container
        without ``CAP_SYS_ADMIN`` and ``CAP_NET_ADMIN``.
        """
        return _probe()

    @classmethod
    def create(cls, hosts: int | Iterable[str] = 3, *, ipv6: bool = True) -> SimulatedNetwork:
        """Make the bridge and the hosts: ``hosts`` is a count (named ``a``, ``b``, ...) or names.

        Host names are 1 to 32 letters, digits, ``_`` and ``-``, starting
        with a letter or digit, unique on the network. ``ipv6``: give each
        host an IPv6 address too (with duplicate address detection off, so
        it works at once). Everything made is removed again if this fails
        or is interrupted. Raises :class:`SimulatedNetworkError` (see
        :meth:`unavailable_reason`), or ``ValueError``/``TypeError`` for bad
        ``hosts``.
        """
        names = cls._check_names(hosts)
        network = cls._new(ipv6)
        try:
            _write_owner(network._id)
            _ip_batch(
                [
                    f"link add {network.bridge} type bridge mcast_snooping 0",
                    f"link set {network.bridge} up",
                ]
            )
            network._disable_root_ipv6(network.bridge)
            for name in names:
                network._add_host(name)
        except BaseException:
            network.close()
            raise
        return network

    @classmethod
    @contextlib.asynccontextmanager
    async def running_async(
        cls, hosts: int | Iterable[str] = 3, *, ipv6: bool = True
    ) -> AsyncIterator[SimulatedNetwork]:
        """:meth:`create` for trio, closed when the block ends; blocking work runs in threads."""
        network = await trio.to_thread.run_sync(functools.partial(cls.create, hosts, ipv6=ipv6))
        try:
            yield network
        finally:
            with trio.CancelScope(shield=True):
                await network.close_async()

    @classmethod
    def _new(cls, ipv6: bool) -> SimulatedNetwork:
        taken_ids = {match.group(1) for name in _links() if (match := _LINK_OF.match(name))}
        while True:
            network_id = secrets.token_hex(3)
            if network_id not in taken_ids and not _owner_file(network_id).exists():
                return cls(network_id, random.randrange(256), ipv6)

    @staticmethod
    def _check_names(hosts: int | Iterable[str]) -> list[str]:
        if isinstance(hosts, bool) or not isinstance(hosts, int | Iterable):
            raise TypeError(f"hosts must be a count or host names, got {hosts!r}")
        if isinstance(hosts, str):
            raise TypeError(f"hosts must be a count or a list of names, not the string {hosts!r}")
        if isinstance(hosts, int):
            if not 0 <= hosts <= MAX_HOSTS:
                raise ValueError(f"hosts must be 0 to {MAX_HOSTS}, got {hosts}")
            return _default_names(hosts)
        names = list(hosts)
        if len(names) > MAX_HOSTS:
            raise ValueError(f"at most {MAX_HOSTS} hosts, got {len(names)}")
        for name in names:
            _check_name(name)
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"host names must be unique, got {duplicates} more than once")
        return names

    # ---------------------------------------------------------- properties

    @property
    def id(self) -> str:
        """The network's random id: 6 hex digits in every name it makes."""
        return self._id

    @property
    def bridge(self) -> str:
        return _bridge_name(self._id)

    @property
    def ipv6(self) -> bool:
        return self._ipv6

    @property
    def subnet(self) -> str:
        """``10.231.X.0/24``."""
        return f"10.231.{self._octet}.0/24"

    @property
    def subnet6(self) -> str:
        """``fd00:10:231:X::/64``."""
        return str(ipaddress.IPv6Network(f"fd00:10:231:{self._octet}::/64"))

    @property
    def hosts(self) -> tuple[Host, ...]:
        """Every host, in the order they were made."""
        return tuple(self._hosts.values())

    def __getitem__(self, name: str) -> Host:
        """The host called ``name``; ``KeyError`` names the hosts there are."""
        try:
            return self._hosts[name]
        except KeyError:
            raise KeyError(
                f"no host {name!r} on {self!r}; its hosts are {sorted(self._hosts)}"
            ) from None

    @property
    def cuts(self) -> frozenset[tuple[str, str]]:
        """The explicit one-way cuts, as (from, to) host names; :meth:`cut` makes two."""
        return frozenset(self._cuts)

    @property
    def isolated(self) -> frozenset[str]:
        """The names of the hosts :meth:`isolate` cut off."""
        return frozenset(self._isolated)

    @property
    def dropped(self) -> frozenset[tuple[str, str]]:
        """Every (from, to) pair of hosts whose packets are dropped, by cuts and isolation."""
        return frozenset(self._wanted_drops())

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._hosts)} hosts"
        return f"<SimulatedNetwork {self._id} {self.subnet} {state}>"

    def __enter__(self) -> SimulatedNetwork:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --------------------------------------------------------------- hosts

    def add_host(self, name: str | None = None) -> Host:
        """Add a host (default name: the next of ``a``, ``b``, ...) with the next address.

        It starts with the network's cuts in force: an isolated host's
        packets and the new host's are dropped between them. Raises
        ``ValueError`` if the name is bad or taken, or the network full;
        if making it fails, what was made of it is removed again (other
        hosts may keep a neighbour entry for its unused address).
        """
        self._check_open()
        if name is None:
            name = next(n for n in _default_names(MAX_HOSTS + 1) if n not in self._hosts)
        _check_name(name)
        if name in self._hosts:
            raise ValueError(f"{self!r} already has a host {name!r}")
        if self._next_index > MAX_HOSTS:
            raise ValueError(f"{self!r} is full: at most {MAX_HOSTS} hosts")
        try:
            return self._add_host(name)
        except BaseException:
            self._discard_host(name)
            raise

    def _discard_host(self, name: str) -> None:
        """Remove what a failed :meth:`add_host` made of host ``name``; the rest stays."""
        host = self._hosts.pop(name)
        self._cuts = {pair for pair in self._cuts if name not in pair}
        self._isolated.discard(name)
        self._applied = {pair for pair in self._applied if name not in pair}
        host._reap()
        _kill_processes_in([host.netns])
        _ip(
            ["-force", "-b", "-"],
            batch=[f"link del {host.veth}", f"netns del {host.netns}"],
            check=False,
        )

    def _add_host(self, name: str) -> Host:
        others = list(self._hosts.values())
        host = Host(self, name, self._next_index)
        self._next_index += 1
        self._hosts[name] = host  # before making it, so a failure's close() finds it
        _ip_batch(
            [
                f"netns add {host.netns}",
                f"link add {host.veth} type veth "
                f"peer name {INTERFACE} address {host.mac} netns {host.netns}",
                f"link set {host.veth} master {self.bridge} up",
            ]
        )
        self._disable_root_ipv6(host.veth)
        if self._ipv6:
            # Before eth0 goes up: its link-local address is then valid at
            # once, and neighbour discovery never waits for DAD.
            conf = "net/ipv6/conf"
            in_namespace(
                host.netns,
                functools.partial(
                    _write_sysctls,
                    {
                        f"{conf}/all/disable_ipv6": "0",
                        f"{conf}/{INTERFACE}/disable_ipv6": "0",
                        f"{conf}/{INTERFACE}/accept_dad": "0",
                        f"{conf}/{INTERFACE}/accept_ra": "0",
                    },
                ),
            )
        ip4 = [
            "link set lo up",
            f"addr add {host.address}/24 dev {INTERFACE}",
            f"link set {INTERFACE} up",
            f"rule add pref {_LOCAL_PRIORITY} lookup local",
            "rule del pref 0 lookup local",
            *_neighbours(others),
        ]
        _ip_batch(ip4, "-n", host.netns)
        if self._ipv6:
            ip6 = [
                f"addr add {host.address6}/64 dev {INTERFACE} nodad",
                f"rule add pref {_LOCAL_PRIORITY} lookup local",
                "rule del pref 0 lookup local",
            ]
            _ip_batch(ip6, "-n", host.netns, "-6")
        for other in others:
            _ip_batch(_neighbours([host]), "-n", other.netns)
        self._apply()
        return host

    def _disable_root_ipv6(self, link: str) -> None:
        """Keep the root namespace's ends silent: no link-local address, no DAD, no MLD."""
        with contextlib.suppress(FileNotFoundError):  # no IPv6 in this kernel
            _write_sysctls({f"net/ipv6/conf/{link}/disable_ipv6": "1"})

    # ---------------------------------------------------------------- cuts

    def cut(self, a: Host | str, b: Host | str) -> None:
        """Drop every packet between ``a`` and ``b``, both ways; both still reach the rest."""
        src, dst = self._pair(a, b)
        self._change(lambda: self._cuts.update({(src, dst), (dst, src)}))

    def cut_one_way(self, a: Host | str, b: Host | str) -> None:
        """Drop ``a``'s packets to ``b``; ``b``'s still reach ``a`` (TCP breaks both ways)."""
        src, dst = self._pair(a, b)
        self._change(lambda: self._cuts.add((src, dst)))

    def heal(self, a: Host | str, b: Host | str) -> None:
        """Undo :meth:`cut` and :meth:`cut_one_way` between ``a`` and ``b``, either way round.

        Isolation stays: see :meth:`rejoin`.
        """
        src, dst = self._pair(a, b)
        self._change(lambda: self._cuts.difference_update({(src, dst), (dst, src)}))

    def isolate(self, host: Host | str) -> None:
        """Drop every packet between ``host`` and every other host, now and added later."""
        name = self._name_of(host)
        self._change(lambda: self._isolated.add(name))

    def rejoin(self, host: Host | str) -> None:
        """Undo :meth:`isolate`; the host's explicit cuts stay."""
        name = self._name_of(host)
        self._change(lambda: self._isolated.discard(name))

    def heal_all(self) -> None:
        """Undo every cut and isolation: every host reaches every other."""

        def clear() -> None:
            self._cuts.clear()
            self._isolated.clear()

        self._change(clear)

    def _change(self, edit: Callable[[], None]) -> None:
        self._check_open()
        edit()
        self._apply()

    def _wanted_drops(self) -> set[tuple[str, str]]:
        wanted = set(self._cuts)
        for name in self._isolated:
            for other in self._hosts:
                if other != name:
                    wanted |= {(name, other), (other, name)}
        return wanted

    def _apply(self) -> None:
        """Bring the kernel's drop rules to :meth:`_wanted_drops`, one batch per host changed."""
        wanted = self._wanted_drops()
        changes: dict[str, list[tuple[str, str]]] = {}
        for src, dst in wanted - self._applied:
            changes.setdefault(dst, []).append(("add", src))
        for src, dst in self._applied - wanted:
            changes.setdefault(dst, []).append(("del", src))
        for dst, edits in sorted(changes.items()):
            host = self._hosts[dst]
            families = [("-4", "address")] + ([("-6", "address6")] if self._ipv6 else [])
            try:
                for option, attribute in families:
                    _ip_batch(
                        [
                            f"rule {verb} pref {_DROP_PRIORITY} "
                            f"from {getattr(self._hosts[src], attribute)} "
                            f"iif {INTERFACE} blackhole"
                            for verb, src in sorted(edits)
                        ],
                        "-n",
                        host.netns,
                        option,
                    )
            except BaseException:
                self._reread_drops(host)
                raise
            for verb, src in edits:
                if verb == "add":
                    self._applied.add((src, dst))
                else:
                    self._applied.discard((src, dst))

    def _reread_drops(self, host: Host) -> None:
        """Learn which drops ``host`` really has, after a change to it failed part-way.

        A pair counts as dropped if either family's rule is there, so the
        next change removes what is left of it.
        """
        by_address = {
            address: name for name, other in self._hosts.items() for address in other.addresses()
        }
        present: set[str] = set()
        families = ["-4", "-6"] if self._ipv6 else ["-4"]
        for option in families:
            result = _ip(
                ["-n", host.netns, option, "-j", "rule", "show", "pref", str(_DROP_PRIORITY)],
                check=False,
            )
            with contextlib.suppress(ValueError):
                for rule in json.loads(result.stdout or "[]"):
                    name = by_address.get(str(rule.get("src")))
                    if name is not None:
                        present.add(name)
        self._applied = {(s, d) for s, d in self._applied if d != host.name}
        self._applied |= {(src, host.name) for src in present}

    def _name_of(self, host: Host | str) -> str:
        if isinstance(host, Host):
            if host.network is not self:
                raise ValueError(f"{host!r} is on another network than {self!r}")
            return host.name
        if isinstance(host, str):
            return self[host].name
        raise TypeError(f"expected a Host or a host name, got {host!r}")

    def _pair(self, a: Host | str, b: Host | str) -> tuple[str, str]:
        src, dst = self._name_of(a), self._name_of(b)
        if src == dst:
            raise ValueError(f"a host cannot be cut from itself, got {src!r} twice")
        return src, dst

    # ------------------------------------------------------------- closing

    def close(self) -> None:
        """Kill every process in the hosts, delete the veths, namespaces and bridge.

        Idempotent. Finishes even if interrupted once (then re-raises the
        interruption). Raises :class:`SimulatedNetworkError` if something
        of the network could not be removed.
        """
        if self._closed:
            return
        try:
            self._close()
        except BaseException:
            # A KeyboardInterrupt may have stopped an ip command half-way:
            # start again from what exists, then report the first failure.
            with contextlib.suppress(Exception):
                self._close()
            raise

    def _close(self) -> None:
        for host in self._hosts.values():
            host._reap()
        _remove_network(self._id)
        self._closed = True
        self._applied.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise SimulatedNetworkError(f"{self!r} cannot be used any more")

    # ----------------------------------------------------------- async API

    async def add_host_async(self, name: str | None = None) -> Host:
        """:meth:`add_host` in a worker thread."""
        return await trio.to_thread.run_sync(self.add_host, name)

    async def cut_async(self, a: Host | str, b: Host | str) -> None:
        """:meth:`cut` in a worker thread."""
        await trio.to_thread.run_sync(self.cut, a, b)

    async def cut_one_way_async(self, a: Host | str, b: Host | str) -> None:
        """:meth:`cut_one_way` in a worker thread."""
        await trio.to_thread.run_sync(self.cut_one_way, a, b)

    async def heal_async(self, a: Host | str, b: Host | str) -> None:
        """:meth:`heal` in a worker thread."""
        await trio.to_thread.run_sync(self.heal, a, b)

    async def heal_all_async(self) -> None:
        """:meth:`heal_all` in a worker thread."""
        await trio.to_thread.run_sync(self.heal_all)

    async def isolate_async(self, host: Host | str) -> None:
        """:meth:`isolate` in a worker thread."""
        await trio.to_thread.run_sync(self.isolate, host)

    async def rejoin_async(self, host: Host | str) -> None:
        """:meth:`rejoin` in a worker thread."""
        await trio.to_thread.run_sync(self.rejoin, host)

    async def close_async(self) -> None:
        """:meth:`close` in a worker thread."""
        await trio.to_thread.run_sync(self.close)


def _neighbours(hosts: Iterable[Host]) -> list[str]:
    """``ip`` lines giving each of ``hosts`` a permanent ARP/NDP entry (after eth0 is up)."""
    return [
        f"neigh replace {address} lladdr {host.mac} dev {INTERFACE} nud permanent"
        for host in hosts
        for address in host.addresses()
    ]


def _check_name(name: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"a host name must be a str, got {name!r}")
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(
            "a host name must be 1 to 32 letters, digits, '_' or '-', "
            f"starting with a letter or digit, got {name!r}"
        )
