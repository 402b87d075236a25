"""The nemesis soak: members on simulated hosts under partitions, kills, pauses and store cuts.

Jepsen's analysis of RabbitMQ (2014) showed mirrored queues losing
acknowledged messages under network partitions. This soak shows whether
trio_gm's ring loses a confirmed message, or breaks one of gm's other
guarantees, when the network and the processes misbehave. It is what
``trio-gm soak --hosts 5`` runs.

What runs
    A :class:`~trio_gm.testing.netns.SimulatedNetwork` of ``hosts`` hosts
    (``a``, ``b``, ...) and one more, ``db``, which runs a private
    PostgreSQL server (:class:`~trio_gm.testing.postgres.PostgresServer`)
    as the group's store. Each host runs ``members_per_host`` member
    processes (``trio-gm member --json``, listening on ``0.0.0.0:0`` and
    advertising the host's address), each in a *slot*: once its member is
    ready the slot starts ``numbered RATE E`` (the numbers 0, 1, 2, ...
    ``rate`` a second, every ``confirm_every``-th one with
    ``confirmed_broadcast``); when the process ends, for whatever reason,
    the slot starts a fresh one (a new member) after a short pause, once
    no fault touches its host.

The nemesis
    One fault at a time: a quiet spell, then one action, held for a while
    and healed. The kinds come in rounds, each enabled kind once per round
    in a random order, so a short run meets them all; all choices come
    from ``seed`` (which processes a choice hits depends on timing too).

    ==============  ======================================================
    ``partitions``  *partial*: ``cut(x, y)`` of two member hosts, both
                    still reaching the rest and the store; *one-way*:
                    ``cut_one_way(x, y)``; *split*: one or two member
                    hosts (a minority) cut off from every other host and
                    the store (``isolate`` for one)
    ``kills``       SIGKILL of one member process, or of every process on
                    one host (a host crash)
    ``pauses``      SIGSTOP of one member process or of a whole host, then
                    SIGCONT
    ``store``       ``cut(x, db)``: one host loses the store, and only it
    ==============  ======================================================

    A partition or pause is either short (0.2 to 0.4 heartbeats, which
    nobody should notice) or long (3 heartbeats to ``longest_fault``).
    Never in between: a fault that ends just as the failure detectors fire
    leaves both sides of it recording each other's deaths in the store,
    and gm keeps whichever side writes first, not the majority. A store cut
    lasts 0.5 s to ``longest_fault``, below the members'
    ``store_outage_timeout``, so no member should stop for it.

The checks (:class:`NemesisChecker`)
    Every member's events are checked as they are read:

    * ``gap``, ``duplicate``: from each sender, the numbers follow each
      other with no gap and no repeat (or reordering). The first one a
      receiver sees from a sender may be any number, except that a
      receiver ready before the sender began ``numbered`` must see 0 first.
    * ``unannounced``: no message, and no death, from a member the
      receiver has not been told of (in ``joined`` or a birth).
    * ``after-death``: no message from a sender after its death was
      reported to that receiver.

    After the chaos, everything is healed, every member left makes a final
    confirmed broadcast (``numbered-end``), the fence, and then:

    * ``fence``: every member still running has made its final broadcast,
      and holds every other's messages up to that one.
    * A member is *touched* from the start of the first fault that hit its
      process (a kill, a pause) or its host (as one of the hosts named
      above: the two of a partial or one-way cut, the minority of a split,
      the host of a store cut), counting a fault on its host that ended
      less than ``margin`` seconds before the process started. Until then
      it was alive and connected to the majority and to the store all its
      life. (Being conservative, the checks ask nothing of a member once it
      has been touched, even by a fault it survived.)
    * ``not-running``: a member stopped, or did not make its final
      broadcast, without ever being touched.
    * ``lost-confirmed``: a member lacks a message whose
      ``confirmed_broadcast`` returned, though it was ready before that
      call began (the ``confirmed`` line's ``sent`` time, on the same
      monotonic clock as the harness's read times) and untouched and
      running until the harness read that the call had returned. A fault
      after that cannot excuse it: the member delivered the message before
      the call returned, and its log holds all it printed, even if it was
      killed later.
    * ``crash``: a member process exited in a way that is no gm outcome:
      not 3 (stopped by its group) nor 4 (by its store), nor killed by the
      nemesis, nor 0 after the harness asked it to quit.

Limits
    The failure detector cannot tell a paused process from a starved one:
    on a machine so loaded that a member gets no CPU for a heartbeat, its
    neighbours record it dead as they would a paused one, and the checker
    reports ``not-running`` for a member no fault touched. (The test
    suite's run passed 50 times in a row at a load average of 10 on two
    cores.)

Logs
    Every line each member printed (after the monotonic time it was read),
    its standard error and the nemesis's schedule go into a directory
    (``log_dir``, else a temporary one, deleted after a run without
    violations): what a bug report quotes.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import IO, Any, Final, TextIO

import attrs
import trio

from .._cookie import load_cookie
from .member_process import MemberProcess
from .netns import Host, SimulatedNetwork
from .postgres import PostgresServer

__all__ = [
    "KINDS",
    "Fault",
    "NemesisChecker",
    "NemesisConfig",
    "NemesisReport",
    "Progress",
    "Violation",
    "print_summary",
    "run_nemesis",
    "unavailable_reason",
]

#: The nemesis's kinds of action, as ``--nemesis`` names them.
KINDS: Final = ("partitions", "kills", "pauses", "store")
#: The violations the checker reports, by kind.
VIOLATION_KINDS: Final = (
    "gap",
    "duplicate",
    "unannounced",
    "after-death",
    "lost-confirmed",
    "not-running",
    "fence",
    "crash",
)
GROUP: Final = "nemesis"
#: At most this many violations are kept (all are counted).
MAX_VIOLATIONS: Final = 1000


# ---------------------------------------------------------------- records


@attrs.frozen
class Fault:
    """One nemesis action, from before it was applied to after it was healed.

    ``kind`` is one of :data:`KINDS`; ``hosts`` are the hosts whose network
    it touched, ``members`` the member processes (by name) it hit.
    Times are :func:`time.monotonic`.
    """

    kind: str
    what: str
    start: float
    end: float
    hosts: frozenset[str] = frozenset()
    members: frozenset[str] = frozenset()


@attrs.frozen
class Violation:
    """A broken guarantee: its kind (one of :data:`VIOLATION_KINDS`), whose log, what."""

    kind: str
    member: str
    text: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.member}: {self.text}"


# ---------------------------------------------------------------- checker


@attrs.define(eq=False)
class _Log:
    """What the checker knows of one member process."""

    name: str
    host: str
    launched: float
    id: str | None = None
    ready: float | None = None
    numbered: float | None = None
    exited: float | None = None
    status: int | None = None
    reason: str | None = None
    final: int | None = None
    known: set[str] = attrs.Factory(set)
    dead: set[str] = attrs.Factory(set)
    last: dict[str, int] = attrs.Factory(dict)
    #: Per sender, the runs of consecutive numbers received, as [first, last].
    held: dict[str, list[list[int]]] = attrs.Factory(dict)
    #: Its confirmed messages: (number, sent, read time of ``confirmed``).
    confirmed: list[tuple[int, float, float]] = attrs.Factory(list)

    def holds(self, sender: str, number: int) -> bool:
        return any(first <= number <= last for first, last in self.held.get(sender, ()))


class NemesisChecker:
    """Checks the members' logs as they come, and the end (see the module docstring).

    Feed it, in the order things happened: :meth:`launched` when a member
    process starts, :meth:`event` with every JSON line it prints (and the
    time it was read), :meth:`began_numbered` just before writing
    ``numbered``, :meth:`exited` when it has ended and all its output is
    read, :meth:`fault` for every nemesis action (at the latest when healed;
    a kill before its signal is sent). Then :meth:`finish` after the fence.
    Times are :func:`time.monotonic` seconds.
    """

    def __init__(self, *, margin: float = 2.0) -> None:
        self.margin = margin
        self.logs: dict[str, _Log] = {}
        self.faults: list[Fault] = []
        self.violations: list[Violation] = []
        self.violation_count = 0
        self.deliveries = 0
        #: (Confirmed message, member) pairs checked at the end.
        self.confirmed_checks = 0
        #: The members never touched at all, at the end.
        self.untouched: list[str] = []
        self.survivors: list[str] = []
        self.finished = False
        self._names: dict[str, str] = {}
        self._killed: set[str] = set()
        self._quitting: set[str] = set()

    # -- input

    def launched(self, name: str, host: str, at: float) -> None:
        if name in self.logs:
            raise ValueError(f"member process {name!r} launched twice")
        self.logs[name] = _Log(name, host, at)

    def began_numbered(self, name: str, at: float) -> None:
        self.logs[name].numbered = at

    def quitting(self, name: str) -> None:
        """The harness is about to ask ``name`` to quit: exit status 0 is expected."""
        self._quitting.add(name)

    def fault(self, fault: Fault) -> None:
        self.faults.append(fault)
        if fault.kind == "kills":
            self._killed |= fault.members

    def event(self, name: str, event: dict[str, Any], at: float) -> None:
        log = self.logs[name]
        kind = event.get("event")
        if kind == "msg":
            self._message(log, str(event["sender"]), event["msg"])
        elif kind == "members_changed":
            for member in event["deaths"]:
                if member not in log.known:
                    self._violation("unannounced", log, f"death of {self._who(member)}")
                log.known.discard(member)
                log.dead.add(member)
            log.known.update(event["births"])
        elif kind == "joined":
            log.known = set(event["members"])
        elif kind == "ready":
            log.id, log.ready = str(event["id"]), at
            self._names[log.id] = name
        elif kind == "confirmed" and "sent" in event:
            log.confirmed.append((int(event["msg"]), float(event["sent"]), at))
        elif kind == "numbered_end":
            log.final = int(event["last"])
        elif kind == "terminate":
            log.reason = str(event["reason"])

    def exited(self, name: str, status: int, at: float, detail: str = "") -> None:
        log = self.logs[name]
        log.exited, log.status = at, status
        if self.finished or (log.ready is None and status in (2, 3, 4, -signal.SIGKILL)):
            return  # after the check, or a start that failed for a reason gm gives
        if status in (3, 4):
            return
        if status == -signal.SIGKILL and name in self._killed:
            return
        if status == 0 and name in self._quitting:
            return
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        self._violation("crash", log, how + (f": {detail}" if detail else ""))

    # -- the checks as it goes

    def _message(self, log: _Log, sender: str, number: Any) -> None:
        self.deliveries += 1
        if not isinstance(number, int):
            self._violation("duplicate", log, f"from {self._who(sender)}: {number!r}, no number")
            return
        if sender in log.dead:
            self._violation(
                "after-death", log, f"{number} from {self._who(sender)} after its death"
            )
        elif sender not in log.known and sender != log.id:
            self._violation(
                "unannounced", log, f"{number} from {self._who(sender)}, never announced"
            )
        last = log.last.get(sender)
        runs = log.held.setdefault(sender, [])
        if last is None:
            source = self.logs.get(self._names.get(sender, ""))
            if (
                number != 0
                and source is not None
                and source.numbered is not None
                and log.ready is not None
                and log.ready < source.numbered
            ):
                self._violation(
                    "gap",
                    log,
                    f"first message from {self._who(sender)} is {number}, not 0, "
                    "though this member was ready before it began",
                )
            runs.append([number, number])
        elif number == last + 1:
            runs[-1][1] = number
        elif number > last + 1:
            self._violation(
                "gap", log, f"from {self._who(sender)}: {number} after {last}, {last + 1} missing"
            )
            runs.append([number, number])
        else:
            self._violation(
                "duplicate", log, f"from {self._who(sender)}: {number} again, after {last}"
            )
            return
        log.last[sender] = number

    # -- the checks at the end

    def touched_at(self, log: _Log) -> float:
        """When a fault first touched ``log``'s member (see the module docstring), or inf."""
        first = math.inf
        for fault in self.faults:
            if log.name in fault.members or (
                log.host in fault.hosts and fault.end + self.margin >= log.launched
            ):
                first = min(first, fault.start)
        return first

    def finish(self, chaos_end: float) -> list[Violation]:
        """The checks at the end (after the fence); returns every violation kept."""
        self.finished = True
        logs = [log for log in self.logs.values() if log.ready is not None]
        running = [log for log in logs if log.exited is None]
        survivors = [log for log in running if log.final is not None]
        self.survivors = [log.name for log in survivors]
        for log in running:
            if log.final is None:
                self._violation("fence", log, "its final confirmed broadcast did not return")
        for holder in survivors:
            for sender in survivors:
                assert sender.id is not None
                assert sender.final is not None
                got = holder.last.get(sender.id)
                if got != sender.final or not holder.holds(sender.id, sender.final):
                    self._violation(
                        "fence",
                        holder,
                        f"holds {sender.name}'s messages up to {got}, "
                        f"not up to its final confirmed one, {sender.final}",
                    )
        confirmed = sorted(
            (
                (at, sent, number, sender)
                for sender in logs
                for number, sent, at in sender.confirmed
            ),
            key=lambda entry: entry[0],
        )
        for log in logs:
            assert log.ready is not None
            touched = self.touched_at(log)
            # Until when it must hold every confirmed message sent while it was a member.
            until = min(touched, math.inf if log.exited is None else log.exited)
            if touched > (chaos_end if log.exited is None else log.exited):
                self.untouched.append(log.name)
                if log.exited is not None or log.final is None:
                    state = (
                        f"exited with status {log.status} (reason {log.reason})"
                        if log.exited is not None
                        else "did not make its final confirmed broadcast"
                    )
                    self._violation(
                        "not-running",
                        log,
                        "connected to the majority and the store all its life, but " + state,
                    )
            for at, sent, number, sender in confirmed:
                if at >= until:
                    break
                if sent <= log.ready:
                    continue
                assert sender.id is not None
                self.confirmed_checks += 1
                if not log.holds(sender.id, number):
                    self._violation(
                        "lost-confirmed",
                        log,
                        f"lacks {sender.name}'s confirmed message {number}, sent "
                        f"{sent - log.ready:.3f} s after this member was ready and confirmed "
                        f"before any fault touched it",
                    )
        return list(self.violations)

    # -- helpers

    @property
    def confirmed_count(self) -> int:
        return sum(len(log.confirmed) for log in self.logs.values())

    def _who(self, member_id: str) -> str:
        name = self._names.get(member_id)
        return f"{name} {member_id}" if name else member_id

    def _violation(self, kind: str, log: _Log, text: str) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(Violation(kind, log.name, text))


# ----------------------------------------------------------------- config


@attrs.frozen
class NemesisConfig:
    """How a nemesis soak runs (see the module docstring)."""

    hosts: int = 5
    members_per_host: int = 2
    seconds: float = 60.0
    seed: int = 0
    nemesis: frozenset[str] = frozenset(KINDS)
    heartbeat: float = 1.0
    store_outage_timeout: float = 30.0
    #: The longest partition, pause or store cut.
    longest_fault: float = 8.0
    #: Messages a second each member broadcasts, and how often one is confirmed.
    rate: float = 20.0
    confirm_every: int = 5
    #: Seconds between two nemesis actions (drawn between these).
    quiet: tuple[float, float] = (1.0, 4.0)
    #: Seconds a slot waits before a fresh member replaces one that ended.
    rejoin_delay: tuple[float, float] = (0.5, 2.0)
    #: Seconds after the heal for the aftermath, before the fence.
    settle: float = 5.0
    #: Seconds the fence (every final confirmed broadcast) may take.
    fence_timeout: float = 60.0
    #: How long before a process started a fault on its host still counts.
    margin: float = 2.0
    log_dir: Path | None = None

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting that cannot work."""
        if self.hosts < 3:
            raise ValueError(f"a nemesis soak needs at least 3 hosts, got {self.hosts}")
        if self.members_per_host < 1:
            raise ValueError(f"members_per_host must be at least 1, got {self.members_per_host}")
        unknown = sorted(self.nemesis - set(KINDS))
        if unknown or not self.nemesis:
            raise ValueError(
                f"the nemesis kinds are {', '.join(KINDS)}; got {sorted(self.nemesis) or 'none'}"
            )
        if not 3 * self.heartbeat < self.longest_fault < self.store_outage_timeout:
            raise ValueError(
                "a long fault lasts from 3 heartbeats to longest_fault, below the store "
                "outage timeout: expected 3 * heartbeat < longest_fault < store_outage_timeout, "
                f"got heartbeat {self.heartbeat:g}, longest_fault {self.longest_fault:g}, "
                f"store_outage_timeout {self.store_outage_timeout:g}"
            )
        if not self.seconds > 0 or not self.rate > 0 or self.confirm_every < 1:
            raise ValueError(
                "seconds and rate must be positive and confirm_every at least 1, got "
                f"{self.seconds:g}, {self.rate:g}, {self.confirm_every}"
            )


# ----------------------------------------------------------------- report


@attrs.define
class NemesisReport:
    """What a nemesis soak did and found."""

    config: NemesisConfig
    #: Nemesis actions by kind (of :data:`KINDS`), and by the finer kind.
    actions: collections.Counter[str] = attrs.Factory(collections.Counter)
    details: collections.Counter[str] = attrs.Factory(collections.Counter)
    killed: int = 0
    paused: int = 0
    started: int = 0
    failed_starts: int = 0
    #: How members (once ready) ended before the check ("stopped by group", ...).
    exits: collections.Counter[str] = attrs.Factory(collections.Counter)
    deliveries: int = 0
    confirmed: int = 0
    confirmed_checks: int = 0
    survivors: int = 0
    #: Survivors never touched by any fault.
    untouched: int = 0
    violations: list[Violation] = attrs.Factory(list)
    violation_count: int = 0
    seconds: float = 0.0
    log_dir: Path | None = None

    @property
    def operations(self) -> int:
        return sum(self.actions.values())

    @property
    def ok(self) -> bool:
        return self.violation_count == 0


def print_summary(report: NemesisReport, out: TextIO | None = None) -> int:
    """Print the violations and the summary table; return the exit status (0 or 1)."""
    out = sys.stdout if out is None else out
    for violation in report.violations[:50]:
        print("VIOLATION", violation, file=out)
    if report.violation_count > 50:
        print(f"... and {report.violation_count - 50} more violations", file=out)
    config = report.config

    def detail(*names: str) -> str:
        parts = [f"{name} {report.details[name]}" for name in names if report.details[name]]
        return f"({', '.join(parts)})" if parts else ""

    exits = ", ".join(f"{how} {count}" for how, count in sorted(report.exits.items()))
    rows = [
        ("operations", report.operations, ""),
        ("  partitions", report.actions["partitions"], detail("partial", "one-way", "split")),
        ("  kills", report.actions["kills"], f"({report.killed} processes)"),
        ("  pauses", report.actions["pauses"], f"({report.paused} processes)"),
        ("  store cuts", report.actions["store"], ""),
        (
            "members started",
            report.started,
            f"({report.started - config.hosts * config.members_per_host} to replace others, "
            f"{report.failed_starts} failed to start)",
        ),
        ("members ended", sum(report.exits.values()), f"({exits})" if exits else ""),
        ("deliveries checked", report.deliveries, ""),
        (
            "confirmed messages",
            report.confirmed,
            f"({report.confirmed_checks} checks of a member that must hold one)",
        ),
        ("survivors at the end", report.survivors, f"({report.untouched} never touched)"),
        ("violations", report.violation_count, ""),
    ]
    print(
        f"nemesis soak: {config.hosts} hosts, {config.members_per_host} members each, "
        f"{report.seconds:.0f} s, seed {config.seed}, nemesis {','.join(sorted(config.nemesis))}",
        file=out,
    )
    for label, value, note in rows:
        print(f"  {label:<22}{value:>9}  {note}".rstrip(), file=out)
    if report.log_dir is not None:
        print(f"  logs in {report.log_dir}", file=out)
    return 0 if report.ok else 1


class Progress:
    """A live progress line: rewritten in place on a terminal, else printed every ``every`` s."""

    def __init__(self, out: TextIO, *, tty: bool | None = None, every: float = 5.0) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.every = every
        self._printed = -math.inf
        self._shown = False

    @property
    def interval(self) -> float:
        """How often the harness should call :meth:`update`."""
        return 0.5 if self.tty else self.every

    def update(self, line: str) -> None:
        if self.tty:
            # One that wrapped would not be rewritten in place.
            width = shutil.get_terminal_size().columns - 1
            self.out.write("\r\x1b[K" + line[:width])
            self._shown = True
        elif time.monotonic() - self._printed >= self.every * 0.9:
            self.out.write(line + "\n")
            self._printed = time.monotonic()
        self.out.flush()

    def note(self, line: str) -> None:
        """A line that stays (a violation as it is found)."""
        self.out.write(("\r\x1b[K" if self._shown else "") + line + "\n")
        self._shown = False
        self.out.flush()

    def done(self) -> None:
        if self._shown:
            self.out.write("\n")
            self._shown = False
        self.out.flush()


def unavailable_reason() -> str | None:
    """Why a nemesis soak cannot run here (no simulated hosts, no private PostgreSQL), or None."""
    why_not = SimulatedNetwork.unavailable_reason()
    if why_not is not None:
        return f"no simulated hosts: {why_not}"
    why_not = PostgresServer.unavailable_reason()
    if why_not is not None:
        return f"no private PostgreSQL server: {why_not}"
    return None


# ---------------------------------------------------------------- harness


@attrs.define(eq=False)
class _Slot:
    host: Host
    index: int
    rng: random.Random
    proc: MemberProcess | None = None
    incarnation: int = 0
    starting: bool = False
    numbered: bool = False


async def run_nemesis(config: NemesisConfig, *, progress: Progress | None = None) -> NemesisReport:
    """Run a nemesis soak (see the module docstring) and return its report.

    Raises ``ValueError`` for a config that cannot work, and what the
    simulated network or PostgreSQL raise where they cannot run (see
    :func:`unavailable_reason`).
    """
    config.check()
    report = NemesisReport(config)
    own_dir = config.log_dir is None
    log_dir = (
        Path(tempfile.mkdtemp(prefix="trio-gm-nemesis-"))
        if config.log_dir is None
        else config.log_dir
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    report.log_dir = log_dir
    cookie_dir = Path(tempfile.mkdtemp(prefix="trio-gm-nemesis-cookie-"))
    try:
        cookie = cookie_dir / "cookie"
        await load_cookie(cookie, create=True)
        names = [chr(ord("a") + i) if i < 26 else f"h{i + 1}" for i in range(config.hosts)]
        async with SimulatedNetwork.running_async([*names, "db"], ipv6=False) as net:
            db = net["db"]
            async with PostgresServer.running_async(host=db.address, netns=db.netns) as pg:
                soak = _Soak(config, report, net, pg, cookie, log_dir, progress)
                await soak.run()
    finally:
        shutil.rmtree(cookie_dir, ignore_errors=True)
    if own_dir and report.ok:
        shutil.rmtree(log_dir, ignore_errors=True)
        report.log_dir = None
    return report


class _Soak:
    """One run: the slots, the nemesis, the fence."""

    def __init__(
        self,
        config: NemesisConfig,
        report: NemesisReport,
        net: SimulatedNetwork,
        pg: PostgresServer,
        cookie: Path,
        log_dir: Path,
        progress: Progress | None,
    ) -> None:
        self.config = config
        self.report = report
        self.net = net
        self.pg = pg
        self.cookie = cookie
        self.log_dir = log_dir
        self.progress = progress
        self.rng = random.Random(config.seed)
        self.checker = NemesisChecker(margin=config.margin)
        self.hosts = [host for host in net.hosts if host.name != "db"]
        self.db = net["db"]
        self.slots = [
            _Slot(host, index, random.Random(self.rng.random()))
            for host in self.hosts
            for index in range(1, config.members_per_host + 1)
        ]
        #: Hosts a fault touches now: no member starts there meanwhile.
        self.busy: set[str] = set()
        #: Set when the chaos is over: no member starts any more.
        self.ending = trio.Event()
        self._changed = trio.Event()
        #: When the run began (the schedule's times count from it), and the chaos.
        self.t0 = self.began = time.monotonic()
        self.last_action = "none yet"
        self._reported = 0

    # -- the run

    async def run(self) -> None:
        config = self.config
        self.schedule = await trio.to_thread.run_sync(
            functools.partial(open, self.log_dir / "nemesis.log", "w", encoding="utf-8")
        )
        try:
            self._note(
                f"seed {config.seed}, {config.hosts} hosts x {config.members_per_host} members, "
                f"nemesis {','.join(sorted(config.nemesis))}, heartbeat {config.heartbeat:g} s, "
                f"store {self.pg.url}; times from monotonic {self.t0:.3f}"
            )
            async with trio.open_nursery() as nursery:
                if self.progress is not None:
                    nursery.start_soon(self._show_progress)
                for slot in self.slots:
                    nursery.start_soon(self._run_slot, slot)
                with trio.move_on_after(60):
                    await self._until(lambda: all(slot.numbered for slot in self.slots))
                self.began = time.monotonic()
                deadline = self.began + config.seconds
                await self._nemesis(deadline)
                chaos_end = time.monotonic()
                self.ending.set()
                await self._end(chaos_end)
                nursery.cancel_scope.cancel()
        finally:
            if self.progress is not None:
                self.progress.done()
            self.schedule.close()
        checker, report = self.checker, self.report
        report.seconds = chaos_end - self.began
        report.deliveries = checker.deliveries
        report.confirmed = checker.confirmed_count
        report.confirmed_checks = checker.confirmed_checks
        report.survivors = len(checker.survivors)
        report.untouched = len(set(checker.untouched) & set(checker.survivors))
        report.violations = list(checker.violations)
        report.violation_count = checker.violation_count

    async def _end(self, chaos_end: float) -> None:
        """Heal, let the aftermath settle, fence, check, and quit the survivors."""
        config = self.config
        await self.net.heal_all_async()
        self._note("end of the chaos: everything healed")
        with trio.move_on_after(config.fence_timeout):
            await self._until(lambda: not any(slot.starting for slot in self.slots))
        await trio.sleep(config.settle)
        fenced = [
            slot.proc
            for slot in self.slots
            if slot.proc is not None and slot.numbered and slot.proc.running
        ]
        self._note(f"fence: {len(fenced)} members make their final confirmed broadcast")
        async with trio.open_nursery() as nursery:
            for proc in fenced:
                nursery.start_soon(self._fence, proc)
        # Every line printed before the finals returned is read once each
        # member's answer to `members`, printed after them, is.
        async with trio.open_nursery() as nursery:
            for proc in fenced:
                nursery.start_soon(self._flush, proc)
        self.checker.finish(chaos_end)
        self._note_violations()
        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                if slot.proc is not None:
                    self.checker.quitting(slot.proc.name)
                    nursery.start_soon(slot.proc.stop)

    async def _fence(self, proc: MemberProcess) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.command("numbered-end")
        with contextlib.suppress(AssertionError), trio.move_on_after(self.config.fence_timeout):
            await proc.expect(lambda e: e["event"] == "numbered_end")

    async def _flush(self, proc: MemberProcess) -> None:
        if not proc.running:
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await proc.command("members")
        with contextlib.suppress(AssertionError), trio.move_on_after(self.config.fence_timeout):
            await proc.expect(lambda e: e["event"] == "members")

    # -- the slots

    async def _run_slot(self, slot: _Slot) -> None:
        while True:
            await self._until(lambda: slot.host.name not in self.busy or self.ending.is_set())
            if self.ending.is_set():
                return
            slot.incarnation += 1
            await self._run_member(slot, f"{slot.host.name}{slot.index}.{slot.incarnation}")
            with trio.move_on_after(slot.rng.uniform(*self.config.rejoin_delay)):
                await self.ending.wait()

    async def _until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()``, checked whenever a slot or the busy hosts change."""
        while not predicate():
            await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _run_member(self, slot: _Slot, name: str) -> None:
        config = self.config
        args = [
            "--store",
            self.pg.url,
            "--group",
            GROUP,
            "--listen",
            "0.0.0.0:0",
            "--advertise",
            slot.host.address,
            "--heartbeat",
            f"{config.heartbeat:g}",
            "--store-outage-timeout",
            f"{config.store_outage_timeout:g}",
            "--cookie-file",
            str(self.cookie),
        ]
        errors_path = self.log_dir / f"{name}.stderr"
        with contextlib.ExitStack() as files:
            log, errors = await trio.to_thread.run_sync(
                _open_files, files, [self.log_dir / f"{name}.jsonl", errors_path]
            )
            proc = MemberProcess(
                name,
                host=slot.host,
                wait=config.fence_timeout,
                on_event=self._on_event,
                keep_messages=False,
                log=log,
            )
            self.checker.launched(name, slot.host.name, time.monotonic())
            self.report.started += 1
            slot.proc, slot.starting, slot.numbered = proc, True, False
            self._wake()
            async with trio.open_nursery() as nursery:
                try:
                    await proc.start(nursery, args, stderr=errors)
                except (RuntimeError, AssertionError) as exc:
                    self.report.failed_starts += 1
                    self._note(f"{name} did not start: {exc}")
                    if proc.running:
                        assert proc.process is not None
                        proc.process.kill()
                else:
                    self.checker.began_numbered(name, time.monotonic())
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await proc.command(f"numbered {config.rate:g} {config.confirm_every}")
                    slot.numbered = True
                finally:
                    slot.starting = False
                    self._wake()
                assert proc.process is not None
                status = await proc.process.wait()
            errors.flush()
            detail = _last_line(errors_path)
            self.checker.exited(name, status, time.monotonic(), detail)
            if not self.checker.finished:
                how = _ending(status)
                if self.checker.logs[name].ready is not None:
                    self.report.exits[how] += 1
                self._note(f"{name} ended: {how}" + (f" ({detail})" if detail else ""))
            slot.proc, slot.numbered = None, False
            self._wake()

    def _on_event(self, proc: MemberProcess, event: dict[str, Any]) -> None:
        self.checker.event(proc.name, event, time.monotonic())

    # -- the nemesis

    async def _nemesis(self, deadline: float) -> None:
        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "partitions": self._partition,
            "kills": self._kill,
            "pauses": self._pause,
            "store": self._store_cut,
        }
        kinds = [kind for kind in KINDS if kind in self.config.nemesis]
        round_: list[str] = []
        while True:
            quiet = self.rng.uniform(*self.config.quiet)
            if time.monotonic() + quiet >= deadline:
                await trio.sleep(max(0.0, deadline - time.monotonic()))
                return
            await trio.sleep(quiet)
            if not round_:
                round_ = self.rng.sample(kinds, len(kinds))
            kind = round_.pop()
            await actions[kind]()
            self.report.actions[kind] += 1

    def _duration(self) -> float:
        """A short fault (nobody should notice) or a long one (everyone should)."""
        beat = self.config.heartbeat
        if self.rng.random() < 0.25:
            return self.rng.uniform(0.2, 0.4) * beat
        return self.rng.uniform(3 * beat, self.config.longest_fault)

    async def _hold(
        self,
        kind: str,
        what: str,
        duration: float,
        apply: Callable[[], None],
        heal: Callable[[], None],
        *,
        hosts: Iterable[str] = (),
        members: Iterable[str] = (),
        busy: Iterable[str] = (),
    ) -> None:
        """Apply a fault, hold it ``duration`` seconds, heal it, record it."""
        busy = set(busy) | set(hosts)
        self.busy |= busy
        self.last_action = f"{what} for {duration:.1f} s"
        start = time.monotonic()
        self._note(f"{what} for {duration:.1f} s")
        try:
            await trio.to_thread.run_sync(apply)
            await trio.sleep(duration)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(heal)
                self.busy -= busy
                self._wake()
                end = time.monotonic()
                self.checker.fault(
                    Fault(kind, what, start, end, frozenset(hosts), frozenset(members))
                )
                self._note(f"healed: {what}")

    def _pick_hosts(self, count: int) -> list[str]:
        return sorted(self.rng.sample([host.name for host in self.hosts], count))

    async def _partition(self) -> None:
        net = self.net
        shape = self.rng.choice(["partial", "one-way", "split"])
        duration = self._duration()
        self.report.details[shape] += 1
        if shape == "split":
            minority = self._pick_hosts(self.rng.randint(1, (len(self.hosts) - 1) // 2))
            if len(minority) == 1:
                (alone,) = minority
                await self._hold(
                    "partitions",
                    f"split: {alone} isolated from every host and the store",
                    duration,
                    lambda: net.isolate(alone),
                    lambda: net.rejoin(alone),
                    hosts=minority,
                )
                return
            others = [host.name for host in net.hosts if host.name not in minority]
            pairs = [(x, y) for x in minority for y in others]

            def cut_all() -> None:
                for x, y in pairs:
                    net.cut(x, y)

            def heal_all() -> None:
                for x, y in pairs:
                    net.heal(x, y)

            await self._hold(
                "partitions",
                f"split: {'+'.join(minority)} cut off from the other hosts and the store",
                duration,
                cut_all,
                heal_all,
                hosts=minority,
            )
            return
        x, y = self._pick_hosts(2)
        if self.rng.random() < 0.5:
            x, y = y, x
        if shape == "partial":
            await self._hold(
                "partitions",
                f"partial: {x} <-> {y} cut",
                duration,
                lambda: net.cut(x, y),
                lambda: net.heal(x, y),
                hosts=(x, y),
            )
        else:
            await self._hold(
                "partitions",
                f"one-way: {x} -> {y} cut",
                duration,
                lambda: net.cut_one_way(x, y),
                lambda: net.heal(x, y),
                hosts=(x, y),
            )

    def _targets(self, verb: str) -> tuple[str, list[_Slot], Host | None]:
        """One member process (70%) or one whole host (30%), and what to call it."""
        with_procs = [slot for slot in self.slots if slot.proc is not None and slot.proc.running]
        if self.rng.random() < 0.3 or not with_procs:
            host = self.rng.choice(self.hosts)
            slots = [slot for slot in self.slots if slot.host is host and slot.proc is not None]
            return f"{verb} every process on {host.name}", slots, host
        slot = self.rng.choice(with_procs)
        assert slot.proc is not None
        return f"{verb} {slot.proc.name}", [slot], None

    async def _kill(self) -> None:
        what, slots, host = self._targets("SIGKILL")
        names = [slot.proc.name for slot in slots if slot.proc is not None]
        self.last_action = what
        now = time.monotonic()
        self.checker.fault(Fault("kills", what, now, now, frozenset(), frozenset(names)))
        self._note(what + (f" ({', '.join(names)})" if host is not None else ""))
        if host is not None:
            self.report.details["host"] += 1
            self.busy.add(host.name)
            try:
                # Until none is left: one that forked meanwhile may have a child.
                for _ in range(100):
                    if not await trio.to_thread.run_sync(host.signal_processes, signal.SIGKILL):
                        break
                    await trio.sleep(0.01)
            finally:
                self.busy.discard(host.name)
                self._wake()
        else:
            self.report.details["process"] += 1
            for slot in slots:
                if slot.proc is not None and slot.proc.running:
                    slot.proc.signal(signal.SIGKILL)
        self.report.killed += len(names)

    async def _pause(self) -> None:
        what, slots, host = self._targets("SIGSTOP")
        procs = [slot.proc for slot in slots if slot.proc is not None and slot.proc.running]
        names = [proc.name for proc in procs]
        pids: list[int] = []

        def stop() -> None:
            if host is not None:
                pids.extend(host.signal_processes(signal.SIGSTOP))
            else:
                for proc in procs:
                    assert proc.process is not None
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.process.pid, signal.SIGSTOP)
                        pids.append(proc.process.pid)

        def resume() -> None:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

        self.report.paused += len(names)
        await self._hold(
            "pauses",
            what + (f" ({', '.join(names)})" if host is not None else "") + ", then SIGCONT",
            self._duration(),
            stop,
            resume,
            members=names,
            busy=[host.name] if host is not None else [],
        )

    async def _store_cut(self) -> None:
        (x,) = self._pick_hosts(1)
        duration = self.rng.uniform(0.5, self.config.longest_fault)
        await self._hold(
            "store",
            f"store cut: {x} <-> db",
            duration,
            lambda: self.net.cut(x, self.db),
            lambda: self.net.heal(x, self.db),
            hosts=[x],
        )

    # -- output

    def _note(self, line: str) -> None:
        self.schedule.write(f"{time.monotonic() - self.t0:9.3f} {line}\n")
        self.schedule.flush()

    def _note_violations(self) -> None:
        violations = self.checker.violations
        for violation in violations[self._reported : self._reported + 20]:
            if self.progress is not None:
                self.progress.note(f"VIOLATION {violation}")
            self._note(f"VIOLATION {violation}")
        self._reported = len(violations)

    async def _show_progress(self) -> None:
        assert self.progress is not None
        total = self.config.seconds
        while True:
            self._note_violations()
            elapsed = max(0.0, time.monotonic() - self.began)
            alive = sum(1 for slot in self.slots if slot.numbered and slot.proc is not None)
            phase = "fence" if self.ending.is_set() else f"{min(elapsed, total):4.0f}/{total:.0f} s"
            self.progress.update(
                f"[{phase}] {self.report.operations} nemesis actions (last: {self.last_action})"
                f" | members {alive}/{len(self.slots)} alive"
                f" | {self.checker.deliveries} deliveries checked"
                f" | {self.checker.violation_count} violations"
            )
            await trio.sleep(self.progress.interval)


def _open_files(stack: contextlib.ExitStack, paths: list[Path]) -> list[IO[bytes]]:
    return [stack.enter_context(open(path, "wb")) for path in paths]


def _ending(status: int) -> str:
    if status == 3:
        return "stopped by group"
    if status == 4:
        return "stopped by store"
    if status == -signal.SIGKILL:
        return "killed"
    return f"status {status}"


def _last_line(path: Path) -> str:
    """The last line of a member's standard error (why it stopped), or ''."""
    try:
        with open(path, "rb") as file:
            file.seek(max(0, os.path.getsize(path) - 4096))
            lines = file.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""
