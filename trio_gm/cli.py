"""The ``trio-gm`` command line: ``demo``, ``bench``, ``soak``, ``member``.

``trio-gm demo`` is the first thing to run: a group of members in this
process, one killed and one joining part-way, every guarantee checked.
``trio-gm bench`` measures speed, ``trio-gm soak`` runs the soak test.

``trio-gm member`` runs one member in this process, for a group spread over
terminals, processes or hosts sharing a store (PostgreSQL, or an SQLite
file on one host). It prints what the member sees and takes commands on its
standard input, one a line:

====================  ===================================================
``send TEXT``         broadcast TEXT
``confirm TEXT``      confirmed broadcast of TEXT (prints ``confirmed``)
``flood N``           broadcast the numbers 0 .. N-1, as fast as allowed
``flood-forever``     broadcast 0, 1, 2, ... until the process ends
``numbered R E``      broadcast 0, 1, 2, ... R a second, every E-th with
                      confirmed_broadcast (prints ``confirmed`` for each)
``numbered-end``      end ``numbered`` with one more confirmed broadcast,
                      the next number (prints ``confirmed``, ``numbered_end``)
``members``           print the alive members
``quit``              leave the group and exit
====================  ===================================================

The ``confirmed`` lines of ``numbered`` carry ``sent``, the
:func:`time.monotonic` just before the call (one clock for every process of
a machine), so that a checker knows which members were in the group by then.

Ctrl-C, SIGTERM or end of input leaves the group cleanly. With ``--json``
every line printed is one JSON object (for programs driving the member).
If the member stops on its own (it lost its membership, or the store
failed) the command stops reading its input, prints one line on standard
error saying why, and exits with status 3 or 4 (see :data:`EXIT_STATUSES`).

Every failure a user can cause (a bad argument, URL, cookie file or
address, an unreachable store, a member stopped by its group or its store)
is one line on standard error and a documented exit status, never a
traceback; ``--log-level DEBUG`` logs the traceback too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from . import (
    CookieError,
    GroupStore,
    Member,
    MemberId,
    MemberStopped,
    StoreError,
    open_node,
    open_store,
)
from ._bench import (
    BenchResult,
    CountingMember,
    bench_in_process,
    confirmed_latencies,
    flood,
    peak_rss_kib,
    percentiles,
    rss_kib,
)
from ._cookie import load_cookie
from .store import DEFAULT_OUTAGE_TIMEOUT, Group, check_group_name
from .testing.nemesis import KINDS, NemesisConfig, Progress, print_summary, run_nemesis
from .testing.nemesis import unavailable_reason as nemesis_unavailable
from .testing.postgres import PostgresServer
from .testing.soak import (
    SoakMember,
    SoakReport,
    check_finals,
    postgres_outages,
    print_report,
    run_soak,
)
from .transport.tcp import TransportStatistics, split_address

log = logging.getLogger("trio_gm.cli")


#: Exit statuses of every command (``--help`` and the README say the same).
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_STOPPED_BY_GROUP: Final = 3
EXIT_STOPPED_BY_STORE: Final = 4
EXIT_INTERRUPTED: Final = 130

EXIT_STATUSES: Final = f"""\
exit status:
  {EXIT_OK}    done; member: it left the group (quit, end of input, Ctrl-C, SIGTERM);
       demo, soak: every guarantee held
  {EXIT_FAILED}    demo, soak: a guarantee was violated; bench: a worker failed;
       or standard output was closed
  {EXIT_USAGE}    bad usage, or what was given does not work at the start: the store
       URL, an unreachable store, the cookie file, the --listen address, the
       group name
  {EXIT_STOPPED_BY_GROUP}    member: stopped by its group: it lost its membership (the other
       members recorded it dead, or the group was deleted)
  {EXIT_STOPPED_BY_STORE}    stopped by the store: it failed after the start (member: the store
       was unreachable for longer than its outage timeout, or refused a change)
  {EXIT_INTERRUPTED}  demo, bench, soak: interrupted (Ctrl-C)
Failures are one line on standard error; --log-level DEBUG logs their traceback."""


_SEE_EXIT_STATUSES: Final = "exit status: 0 done, 2 bad usage; the others: trio-gm --help"


class CommandFailed(Exception):
    """A failure the user can act on: one line on standard error, exit ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class UsageError(CommandFailed):
    """Bad usage, or something given that does not work at the start: exit status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class _Printer:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def __call__(self, event: str, **fields: Any) -> None:
        if self.as_json:
            line = json.dumps({"event": event, **fields}, default=_jsonable)
        else:
            details = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
            line = f"{event} {details}".rstrip()
        print(line, flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, MemberId):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return repr(value)


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


class _PrintingMember:
    """gm callbacks that print every event, and note when the member stops."""

    def __init__(self, out: _Printer) -> None:
        self.out = out
        #: Set when ``handle_terminate`` runs; ``reason`` is its reason.
        self.stopped = trio.Event()
        self.reason: Any = None

    def joined(self, args: Any, members: list[MemberId]) -> None:
        self.out("joined", members=[str(m) for m in members])

    def members_changed(self, args: Any, births: list[MemberId], deaths: list[MemberId]) -> None:
        self.out(
            "members_changed", births=[str(m) for m in births], deaths=[str(m) for m in deaths]
        )

    def handle_msg(self, args: Any, sender: MemberId, msg: Any) -> None:
        self.out("msg", sender=str(sender), msg=msg)

    def handle_terminate(self, args: Any, reason: Any) -> None:
        self.reason = reason
        self.stopped.set()
        self.out("terminate", reason=str(reason))


async def _member(args: argparse.Namespace) -> int:
    out = _Printer(args.json)
    # Without --cookie-file, open_node reads (or makes) the per-user cookie file.
    cookie: bytes | None = None
    if args.cookie_file is not None:
        try:
            cookie = await load_cookie(Path(args.cookie_file), create=False)
        except CookieError as exc:
            raise UsageError(str(exc)) from exc
    # Ctrl-C and SIGTERM are taken from the start, so that even one that
    # arrives while joining ends in a clean leave and exit status 0.
    ended: CommandFailed | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_leave_on_signal, signals, nursery.cancel_scope)
            ended = await _run_member(args, cookie, out)
            nursery.cancel_scope.cancel()
    if ended is not None:
        raise ended
    return EXIT_OK


async def _run_member(
    args: argparse.Namespace, cookie: bytes | None, out: _Printer
) -> CommandFailed | None:
    """Join, run the commands, leave; why the member stopped, if it stopped on its own."""
    callbacks = _PrintingMember(out)
    who: str | None = None  # the member, once it has joined
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                store = await stack.enter_async_context(
                    open_store(
                        args.store, schema=args.schema, outage_timeout=args.store_outage_timeout
                    )
                )
                await store.create_tables()
                stack.enter_context(_store_outages_told(out))
                node = await stack.enter_async_context(
                    open_node(
                        store,
                        listen=args.listen,
                        advertise=args.advertise,
                        cookie=cookie,
                        heartbeat_interval=args.heartbeat,
                    )
                )
                member = await stack.enter_async_context(node.open_member(args.group, callbacks))
            except Exception as exc:
                failure = _start_failure(exc, args)
                if failure is None:
                    raise
                raise failure from exc
            who = f"member {member.id} of group {args.group!r}"
            out("ready", id=str(member.id), address=node.address)
            stopped = await _commands(member, out, callbacks)
    except Exception as exc:
        # A store error that crashed the member comes out of its block.
        cause = _lone(exc)
        if who is not None and isinstance(cause, StoreError):
            raise _stopped_by(who, cause) from exc
        raise
    return _stopped_by(who, callbacks.reason) if stopped else None


class _OutageLines(logging.Handler):
    """Tells the member's output when the store goes away and when it is back."""

    def __init__(self, out: _Printer) -> None:
        super().__init__(logging.WARNING)
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "store_outage", None)
        if event == "began":
            self._out(
                "store_away",
                state=getattr(record, "store_state", "unreachable"),
                reason=getattr(record, "store_reason", ""),
                timeout=getattr(record, "store_timeout", None),
            )
        elif event == "ended":
            self._out("store_back", after=round(getattr(record, "store_away_for", 0.0), 1))


@contextlib.contextmanager
def _store_outages_told(out: _Printer) -> Iterator[None]:
    """For the block: outage lines on the member's output (not twice on standard error)."""
    store_log = logging.getLogger("trio_gm.store")
    handler = _OutageLines(out)

    def not_an_outage(record: logging.LogRecord) -> bool:
        return getattr(record, "store_outage", None) is None

    root_handlers = logging.getLogger().handlers
    store_log.addHandler(handler)
    for root_handler in root_handlers:
        root_handler.addFilter(not_an_outage)
    try:
        yield
    finally:
        store_log.removeHandler(handler)
        for root_handler in root_handlers:
            root_handler.removeFilter(not_an_outage)


def _start_failure(exc: Exception, args: argparse.Namespace) -> UsageError | None:
    """What a failure to open the store, the node or the member tells the user."""
    cause = _lone(exc)
    if isinstance(cause, OSError) and args.listen is not None:
        return UsageError(f"cannot listen on {args.listen}: {cause}")
    if isinstance(cause, StoreError | ValueError):  # CookieError is a ValueError
        return UsageError(str(cause))
    return None


def _stopped_by(who: str, reason: Any) -> CommandFailed:
    """The one line and exit status for a member that stopped on its own."""
    if isinstance(reason, StoreError):
        return CommandFailed(f"{who} stopped: the store failed: {reason}", EXIT_STOPPED_BY_STORE)
    if reason == "shutdown":
        return CommandFailed(
            f"{who} lost its membership: the store no longer lists it alive "
            "(the other members recorded it dead, or the group was deleted)",
            EXIT_STOPPED_BY_GROUP,
        )
    text = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else reason
    return CommandFailed(f"{who} stopped: {text}", EXIT_STOPPED_BY_GROUP)


async def _leave_on_signal(signals: Any, scope: trio.CancelScope) -> None:
    """Ctrl-C or SIGTERM: leave the group cleanly and exit 0."""
    async for _ in signals:
        scope.cancel()
        return


async def _commands(member: Member, out: _Printer, callbacks: _PrintingMember) -> bool:
    """Run the commands on standard input until ``quit`` or its end; True if the member
    stopped on its own first (then no more input is read)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_when_set, callbacks.stopped, nursery.cancel_scope)
        await _read_commands(member, out, nursery)
        nursery.cancel_scope.cancel()
    return callbacks.stopped.is_set()


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _read_commands(member: Member, out: _Printer, nursery: trio.Nursery) -> None:
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    numbered = _Numbered()
    buffer = b""
    while True:
        chunk = await stdin.receive_some(65536)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            line = raw.decode(errors="replace").strip()
            command, _, rest = line.partition(" ")
            if command == "quit":
                return
            try:
                await _command(member, out, nursery, command, rest, numbered)
            except MemberStopped:
                # The member is stopping on its own: its handle_terminate,
                # which runs before any call fails, ends the commands.
                await trio.sleep_forever()


async def _command(
    member: Member,
    out: _Printer,
    nursery: trio.Nursery,
    command: str,
    rest: str,
    numbered: _Numbered,
) -> None:
    if command == "send":
        await member.broadcast(rest)
    elif command == "confirm":
        await member.confirmed_broadcast(rest)
        out("confirmed", msg=rest)
    elif command == "flood":
        if not rest.isdigit():
            out("error", message=f"flood takes a count (a whole number >= 0), got {rest!r}")
            return
        count = int(rest)
        for i in range(count):
            await member.broadcast(i)
            if i % 100 == 99:
                await trio.lowlevel.checkpoint()
        out("flooded", count=count)
    elif command == "flood-forever":
        nursery.start_soon(_flood_forever, member)
    elif command == "numbered":
        numbered.begin(member, out, nursery, rest)
    elif command == "numbered-end":
        numbered.finish(out)
    elif command == "members":
        out("members", members=[str(m) for m in await member.group_members()])
    elif command:
        out("error", message=f"unknown command {command!r}")


async def _flood_forever(member: Member) -> None:
    i = 0
    try:
        while True:
            await member.broadcast(i)
            i += 1
            await trio.sleep(0.0005)
    except MemberStopped:
        return  # the member stopped on its own: _commands ends


@attrs.define(eq=False)
class _Numbered:
    """``numbered R E``: numbers at a steady rate, some of them confirmed; ``numbered-end``."""

    started: bool = False
    end: trio.Event = attrs.Factory(trio.Event)

    def begin(self, member: Member, out: _Printer, nursery: trio.Nursery, rest: str) -> None:
        words = rest.split()
        try:
            rate, every = float(words[0]), int(words[1])
            if len(words) != 2 or not rate > 0 or every < 1:
                raise ValueError
        except (ValueError, IndexError):
            out(
                "error",
                message="numbered takes a rate (messages a second, > 0) and how often to "
                f"confirm (every E-th message, E >= 1), got {rest!r}",
            )
            return
        if self.started:
            out("error", message="numbered is already running")
            return
        self.started = True
        nursery.start_soon(self._run, member, out, 1 / rate, every)

    def finish(self, out: _Printer) -> None:
        if not self.started:
            out("error", message="numbered-end without numbered")
            return
        self.end.set()

    async def _run(self, member: Member, out: _Printer, interval: float, every: int) -> None:
        i = 0
        try:
            while not self.end.is_set():
                if i % every == every - 1:
                    await self._confirm(member, out, i)
                else:
                    await member.broadcast(i)
                i += 1
                with trio.move_on_after(interval):
                    await self.end.wait()
            await self._confirm(member, out, i)  # the fence: every member has them all
            out("numbered_end", last=i)
        except MemberStopped:
            return  # the member stopped on its own: _commands ends

    @staticmethod
    async def _confirm(member: Member, out: _Printer, i: int) -> None:
        sent = time.monotonic()
        await member.confirmed_broadcast(i)
        out("confirmed", msg=i, sent=sent)


# -- demo -------------------------------------------------------------------


class _DemoMember(SoakMember):
    """The soak checker, also counting deliveries per sender."""

    def __init__(self, report: SoakReport, name: str) -> None:
        super().__init__(report, name)
        self.per_sender: dict[MemberId, int] = {}
        self.births: list[MemberId] = []
        self.deaths: list[MemberId] = []

    def members_changed(self, args: Any, births: list[MemberId], deaths: list[MemberId]) -> None:
        super().members_changed(args, births, deaths)
        self.births += births
        self.deaths += deaths

    def handle_msg(self, args: Any, sender: MemberId, msg: Any) -> None:
        super().handle_msg(args, sender, msg)
        self.per_sender[sender] = self.per_sender.get(sender, 0) + 1


@attrs.define(eq=False)
class _DemoSlot:
    name: str
    callbacks: _DemoMember
    member: Member | None = None
    sent: int = -1
    alive: bool = True
    latency_us: dict[str, float] = attrs.Factory(dict)
    stop: trio.Event = attrs.Factory(trio.Event)
    finished: trio.Event = attrs.Factory(trio.Event)
    leave: trio.Event = attrs.Factory(trio.Event)


async def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    console = Console()
    report = SoakReport()
    slots: list[_DemoSlot] = []
    with tempfile.TemporaryDirectory(prefix="trio-gm-demo-") as tmp:
        url = args.store or f"sqlite:///{tmp}/demo.db"
        async with _opened_store(url) as store:
            async with open_node(store) as node, trio.open_nursery() as nursery:

                async def run(slot: _DemoSlot, task_status: trio.TaskStatus[None]) -> None:
                    with trio.CancelScope() as scope:
                        slot_scopes[slot.name] = scope
                        async with node.open_member("demo", slot.callbacks) as member:
                            slot.member = member
                            slot.callbacks.me = member.id
                            task_status.started()
                            while not slot.stop.is_set():
                                for _ in range(50):
                                    slot.sent += 1
                                    await member.broadcast(slot.sent)
                                await trio.sleep(0.002)
                            samples = []
                            for _ in range(20):
                                start = time.perf_counter()
                                slot.sent += 1
                                await member.confirmed_broadcast(slot.sent)
                                samples.append((time.perf_counter() - start) * 1e6)
                            slot.latency_us = percentiles(samples)
                            slot.finished.set()
                            await slot.leave.wait()

                slot_scopes: dict[str, trio.CancelScope] = {}

                async def join(name: str) -> None:
                    slot = _DemoSlot(name, _DemoMember(report, name))
                    slots.append(slot)
                    await nursery.start(run, slot)

                def table(title: str) -> Table:
                    grid = Table(title=title)
                    for column in ("member", "state", "sent", "delivered", "from each sender"):
                        grid.add_column(column)
                    for slot in slots:
                        per = ", ".join(
                            f"{_short(s)}:{n}" for s, n in sorted(slot.callbacks.per_sender.items())
                        )
                        grid.add_row(
                            slot.name,
                            "alive" if slot.alive else "killed",
                            str(slot.sent + 1),
                            str(sum(slot.callbacks.per_sender.values())),
                            per,
                        )
                    return grid

                for i in range(args.members):
                    await join(f"m{i + 1}")
                started = trio.current_time()
                killed = joined_late = False
                with Live(table("trio_gm demo"), console=console, refresh_per_second=4) as live:
                    while (now := trio.current_time()) - started < args.seconds:
                        if not killed and now - started >= args.seconds * 0.4:
                            victim = slots[1]
                            assert victim.member is not None
                            victim.member.kill()
                            victim.alive = False
                            slot_scopes[victim.name].cancel()
                            killed = True
                        if not joined_late and now - started >= args.seconds * 0.6:
                            await join(f"m{args.members + 1}")
                            joined_late = True
                        live.update(table(f"trio_gm demo: {now - started:4.1f}s"))
                        await trio.sleep(0.25)
                    elapsed = trio.current_time() - started
                    survivors = [slot for slot in slots if slot.alive]
                    for slot in survivors:
                        slot.stop.set()
                    for slot in survivors:
                        await slot.finished.wait()
                    live.update(table(f"trio_gm demo: {elapsed:4.1f}s, done"))
                check_finals(report, [(slot.callbacks, slot.sent) for slot in survivors])
                for slot in survivors:
                    slot.leave.set()

    summary = Table(title="per member")
    for column in (
        "member", "delivered", "msgs/s", "order violations", "births seen", "deaths seen",
        "confirmed p50 µs", "p99 µs",
    ):  # fmt: skip
        summary.add_column(column)
    for slot in slots:
        violations = sum(1 for v in report.violations if v.startswith(f"{slot.name} "))
        delivered = sum(slot.callbacks.per_sender.values())
        summary.add_row(
            slot.name + ("" if slot.alive else " (killed)"),
            str(delivered),
            f"{delivered / elapsed:,.0f}",
            str(violations),
            str(len(slot.callbacks.births)),
            str(len(slot.callbacks.deaths)),
            str(slot.latency_us.get("p50", "-")),
            str(slot.latency_us.get("p99", "-")),
        )
    console.print(summary)
    for violation in report.violations[:20]:
        console.print(f"[red]VIOLATION[/red] {violation}")
    if report.violations:
        console.print(f"[red]{len(report.violations)} guarantee violations[/red]")
        return 1
    console.print(
        "[green]every guarantee held[/green]: per-sender order, no gaps, no duplicates, "
        "members announced before their messages, every survivor has every survivor's messages"
    )
    return 0


def _short(member: MemberId) -> str:
    return f"#{member.serial}"


# -- bench --------------------------------------------------------------------


async def _bench(args: argparse.Namespace) -> int:
    if args.members < 1:
        raise UsageError(f"--members must be at least 1, got {args.members}")
    if not args.seconds > 0:
        raise UsageError(f"--seconds must be positive, got {args.seconds}")
    if args.processes:
        result = await _bench_processes(args)
    else:
        async with _opened_store(args.store) as store:
            result = await bench_in_process(
                store,
                members=args.members,
                seconds=args.seconds,
                one_sender=args.one_sender,
                confirms=args.confirms,
            )
    if args.json:
        print(json.dumps(attrs.asdict(result)))
    else:
        where = "processes over TCP" if result.processes else "one process"
        print(
            f"{result.members} members ({where}), {result.senders} broadcasting, {result.seconds}s"
        )
        print(f"  delivered to all:   {result.delivered_to_all_per_s:,.0f} msgs/s")
        print(f"  sent:               {result.sent_per_s:,.0f} msgs/s")
        print(f"  received/member:    {', '.join(f'{r:,.0f}' for r in result.received_per_s)}")
        print(f"  confirmed latency:  {result.confirmed_us} µs (idle)")
        if result.memory_per_member_kib is not None:
            print(
                f"  memory per member:  {result.memory_per_member_kib:,.0f} KiB (peak RSS growth)"
            )
        if result.rss_per_process_kib is not None and result.rss_growth_per_process_kib:
            print(
                "  RSS per process:    "
                + ", ".join(
                    "?" if rss is None or growth is None else f"{rss:,.0f} KiB ({growth:+,.0f})"
                    for rss, growth in zip(
                        result.rss_per_process_kib, result.rss_growth_per_process_kib, strict=True
                    )
                )
                + " (at the end, and its growth since the flood began)"
            )
    return 0


async def _bench_processes(args: argparse.Namespace) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="trio-gm-bench-") as tmp:
        cookie = Path(tmp) / "cookie"
        await load_cookie(cookie)  # a new one, mode 0600, as the workers require
        store = args.store if args.store != "sqlite://" else f"sqlite:///{tmp}/bench.db"
        async with _opened_store(store):
            pass  # a store that does not work is one line here, not one per worker
        workers: list[trio.Process] = []
        try:
            for index in range(args.members):
                cmd = [
                    sys.executable, "-m", "trio_gm.cli", "bench-worker", "--store", store,
                    "--cookie-file", str(cookie), "--seconds", str(args.seconds),
                    "--confirms", str(args.confirms if index == 0 else 0),
                ] + (["--sender"] if index == 0 or not args.one_sender else [])  # fmt: skip
                workers.append(
                    await trio.lowlevel.open_process(
                        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE
                    )
                )
                await _read_json(workers[-1])  # joined
            for worker in workers:
                assert worker.stdin is not None
                await worker.stdin.send_all(b"go\n")
            results = [await _read_json(worker) for worker in workers]
            for worker in workers:
                assert worker.stdin is not None
                await worker.stdin.send_all(b"quit\n")
            for worker in workers:
                await worker.wait()
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
    elapsed = results[0]["elapsed"]
    received = [r["delivered"] / r["elapsed"] for r in results]
    return BenchResult(
        members=args.members,
        senders=1 if args.one_sender else args.members,
        seconds=round(elapsed, 3),
        processes=True,
        delivered_to_all_per_s=round(min(received)),
        sent_per_s=round(sum(r["sent"] / r["flood_seconds"] for r in results)),
        received_per_s=[round(r) for r in received],
        confirmed_us=results[0]["confirmed_us"],
        memory_per_member_kib=round(
            statistics.fmean(
                max(0.0, r["peak_rss_kib"] - r["peak_rss_before_kib"]) for r in results
            ),
            1,
        ),
        rss_per_process_kib=[r["rss_kib"] for r in results],
        rss_growth_per_process_kib=[
            None if r["rss_kib"] is None else round(r["rss_kib"] - r["rss_before_kib"], 1)
            for r in results
        ],
        delivered_per_process=[r["delivered_total"] for r in results],
        frames_in_per_s=[
            None if r.get("frames_in") is None else round(r["frames_in"] / r["elapsed"])
            for r in results
        ],
        bytes_in_per_s=[
            None if r.get("bytes_in") is None else round(r["bytes_in"] / r["elapsed"])
            for r in results
        ],
    )


async def _read_json(process: trio.Process) -> dict[str, Any]:
    assert process.stdout is not None
    line = b""
    with trio.fail_after(120):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                status = await process.wait()
                raise CommandFailed(
                    f"a benchmark worker exited with status {status} "
                    "(what it printed on standard error says why)",
                    EXIT_FAILED,
                )
            line += chunk
    result: dict[str, Any] = json.loads(line)
    return result


def _wire_delta(
    before: TransportStatistics | None, after: TransportStatistics | None, field: str
) -> int | None:
    if before is None or after is None:
        return None
    return int(getattr(after, field) - getattr(before, field))


async def _bench_worker(args: argparse.Namespace) -> int:
    # Ctrl-C in a terminal reaches every process of its group: the parent
    # bench takes it and ends its workers, which need not report it too.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cookie = await load_cookie(Path(args.cookie_file), create=False)
    except CookieError as exc:
        raise UsageError(str(exc)) from exc
    counter = CountingMember()
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    async with _opened_store(args.store) as store:
        async with open_node(store, listen="127.0.0.1:0", cookie=cookie) as node:
            async with node.open_member("bench", counter) as member:
                print(json.dumps({"event": "joined"}), flush=True)
                assert await stdin.receive_some(3) == b"go\n"
                rss_before, peak_before = rss_kib(), peak_rss_kib()
                stop = trio.Event()
                sent = [0]

                async def send() -> None:
                    sent[0] = await flood(member, stop)

                async with trio.open_nursery() as nursery:
                    flood_start = time.perf_counter()
                    if args.sender:
                        nursery.start_soon(send)
                    await trio.sleep(0.5)
                    base, start = counter.delivered, time.perf_counter()
                    wire_before = node.statistics()
                    await trio.sleep(args.seconds)
                    elapsed = time.perf_counter() - start
                    delivered = counter.delivered - base
                    wire_after = node.statistics()
                    stop.set()
                    # (``sent`` counts the ramp as well: so does its window.)
                    flood_seconds = time.perf_counter() - flood_start
                latencies = (
                    await confirmed_latencies(member, args.confirms) if args.confirms else {}
                )
                print(
                    json.dumps(
                        {
                            "delivered": delivered,
                            "elapsed": elapsed,
                            "sent": sent[0],
                            "flood_seconds": flood_seconds,
                            "confirmed_us": latencies,
                            "delivered_total": counter.delivered,
                            "frames_in": _wire_delta(wire_before, wire_after, "frames_in"),
                            "bytes_in": _wire_delta(wire_before, wire_after, "bytes_in"),
                            "rss_before_kib": rss_before,
                            "rss_kib": rss_kib(),
                            "peak_rss_before_kib": peak_before,
                            "peak_rss_kib": peak_rss_kib(),
                        }
                    ),
                    flush=True,
                )
                await stdin.receive_some(5)
    return 0


# -- soak ---------------------------------------------------------------------


async def _soak(args: argparse.Namespace) -> int:
    if args.hosts is not None:
        return await _nemesis_soak(args)
    if args.nemesis is not None or args.members_per_host is not None or args.log_dir is not None:
        raise UsageError("--nemesis, --members-per-host and --log-dir go with --hosts N")
    members = 4 if args.members is None else args.members
    if not args.store_outages:
        async with _opened_store(args.store or "sqlite://") as store:
            report = await run_soak(
                store, seconds=args.seconds, members=members, seed=args.seed, nodes=args.nodes
            )
        return print_report(report)
    if args.store is not None:
        raise UsageError(
            "--store-outages runs a PostgreSQL server of its own, to kill and restart: "
            "leave out --store"
        )
    why_not = PostgresServer.unavailable_reason()
    if why_not is not None:
        raise UsageError(f"--store-outages needs a PostgreSQL server of its own: {why_not}")
    async with PostgresServer.running_async() as server:
        # Outages last at most 3 s: far below the timeout, so no member may stop.
        async with _opened_store(server.url, outage_timeout=60.0) as store:
            report = await run_soak(
                store,
                seconds=args.seconds,
                members=members,
                seed=args.seed,
                nodes=args.nodes,
                outage=postgres_outages(server),
            )
    for outage in report.outages:
        print("store outage:", outage)
    return print_report(report)


async def _nemesis_soak(args: argparse.Namespace) -> int:
    """``soak --hosts N``: members on simulated hosts, and a nemesis (trio_gm.testing.nemesis)."""
    given = [
        flag
        for flag, value in (
            ("--store", args.store),
            ("--store-outages", args.store_outages or None),
            ("--members", args.members),
            ("--nodes", None if args.nodes == 1 else args.nodes),
        )
        if value is not None
    ]
    if given:
        raise UsageError(
            f"{', '.join(given)} cannot go with --hosts, which runs its own hosts, store and "
            "members (--members-per-host sets how many)"
        )
    config = NemesisConfig(
        hosts=args.hosts,
        members_per_host=2 if args.members_per_host is None else args.members_per_host,
        seconds=args.seconds,
        seed=args.seed,
        nemesis=frozenset(KINDS) if args.nemesis is None else args.nemesis,
        log_dir=None if args.log_dir is None else Path(args.log_dir),
    )
    try:
        config.check()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    why_not = nemesis_unavailable()
    if why_not is not None:
        raise UsageError(f"--hosts cannot run here: {why_not}")
    report = await run_nemesis(config, progress=Progress(sys.stdout))
    return print_summary(report)


def _nemesis_kinds(text: str) -> frozenset[str]:
    kinds = frozenset(word.strip() for word in text.split(",") if word.strip())
    unknown = sorted(kinds - set(KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(KINDS)}, got {text!r}"
        )
    return kinds


# -- what every command shares ------------------------------------------------


@contextlib.asynccontextmanager
async def _opened_store(
    url: str, schema: str | None = None, outage_timeout: float = DEFAULT_OUTAGE_TIMEOUT
) -> AsyncIterator[GroupStore]:
    """The store at ``url`` with its table; one that does not work is a UsageError.

    Only opening counts as the start: a store error later in the block
    propagates as itself (exit status 4).
    """
    async with contextlib.AsyncExitStack() as stack:
        try:
            store = await stack.enter_async_context(
                open_store(url, schema=schema, outage_timeout=outage_timeout)
            )
            await store.create_tables()
        except StoreError as exc:
            raise UsageError(str(exc)) from exc
        yield store


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc``'s nursery groups, Cancelled aside."""
    leaves: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop()
        if isinstance(current, BaseExceptionGroup):
            pending.extend(reversed(current.exceptions))
        elif not isinstance(current, trio.Cancelled):
            leaves.append(current)
    return leaves


def _lone(exc: BaseException) -> BaseException:
    """The one exception inside ``exc``'s nursery groups, Cancelled aside; else ``exc``.

    Nurseries wrap what escapes them (in this module, in open_node, in
    open_member); a failure the user caused is a single exception in there.
    """
    leaves = _leaves(exc)
    return leaves[0] if len(leaves) == 1 else exc


def _user_failure(exc: BaseException) -> tuple[int, str] | None:
    """The exit status and one line for a failure the user caused; None for a bug.

    Several at once (every member of a soak finding the store gone, every
    task finding standard output closed) are told by the first.
    """
    failures = [_classify(leaf) for leaf in _leaves(exc)]
    if not failures or None in failures:
        return None
    first = failures[0]
    assert first is not None
    if first[1] == _OUTPUT_CLOSED:
        # Nothing more can be written there, and Python's final flush would
        # complain: point standard output at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return first


_OUTPUT_CLOSED: Final = "standard output was closed"


def _classify(cause: BaseException) -> tuple[int, str] | None:
    if isinstance(cause, CommandFailed):
        return cause.status, str(cause)
    if isinstance(cause, StoreError):  # opening one is a UsageError: this came later
        return EXIT_STOPPED_BY_STORE, f"the store failed: {cause}"
    if isinstance(cause, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(cause, BrokenPipeError):
        return EXIT_FAILED, _OUTPUT_CLOSED
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-gm",
        description="trio_gm: RabbitMQ's guaranteed multicast ring on trio.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much to log to standard error (default WARNING)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        epilog=_SEE_EXIT_STATUSES,
        help="a group of members in this process, one killed and one joining part-way",
        description="Run a group of members in this process broadcasting sequence numbers; "
        "part-way through one member is killed and another joins. Every delivery is "
        "checked against gm's guarantees; exit status 0 only if all of them held.",
    )
    demo.add_argument("--store", default=None, help="store URL (default: SQLite in a temp dir)")
    demo.add_argument("--members", type=_at_least(2), default=5, help="members (default 5)")
    demo.add_argument("--seconds", type=_positive, default=8.0, help="how long (default 8)")

    bench = commands.add_parser(
        "bench",
        epilog=_SEE_EXIT_STATUSES,
        help="measure throughput and confirmed latency",
        description="Flood a group for a while (all members broadcasting, or one), then "
        "measure idle confirmed_broadcast latency. Prints send/receive rates, the rate "
        "of messages delivered to every member, latency percentiles and memory per member.",
    )
    bench.add_argument("--members", type=_at_least(1), default=5, help="members (default 5)")
    bench.add_argument("--seconds", type=_positive, default=5.0, help="flood time (default 5)")
    bench.add_argument("--one-sender", action="store_true", help="only one member broadcasts")
    bench.add_argument(
        "--processes", action="store_true", help="one member per process, over TCP on loopback"
    )
    bench.add_argument("--confirms", type=_at_least(1), default=300, help="latency samples")
    bench.add_argument("--store", default="sqlite://", help="store URL (default: in memory)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")

    soak = commands.add_parser(
        "soak",
        epilog=_SEE_EXIT_STATUSES,
        help="soak-test a group with joins, leaves and kills",
        description="Members broadcast sequence numbers while others join, leave and are "
        "killed; every callback checks gm's guarantees. Exit status 1 on any violation. "
        "With --hosts N, the nemesis soak: member processes on N simulated hosts and a "
        "store on a host of its own, under partitions, kills, pauses and store cuts "
        "(trio-gm soak --hosts 5 --seconds 600); a live progress line, then a summary; "
        "exit status 2 where it cannot run (not root, no PostgreSQL binaries).",
    )
    soak.add_argument("--seconds", type=_positive, default=30.0, help="how long (default 30)")
    soak.add_argument(
        "--members", type=_at_least(2), default=None, help="group size to aim for (default 4)"
    )
    soak.add_argument("--seed", type=int, default=0, help="random seed")
    soak.add_argument("--nodes", type=_at_least(1), default=1, help="TCP nodes to spread over")
    soak.add_argument("--store", default=None, help="store URL (default: in memory)")
    soak.add_argument(
        "--store-outages",
        action="store_true",
        help="run a PostgreSQL server of its own as the store, and kill, restart and stop it "
        "every 2 s or so (each outage under 3 s) beside the chaos; needs PostgreSQL's "
        "binaries (and, as root, the postgres user)",
    )
    soak.add_argument(
        "--hosts",
        type=_at_least(3),
        default=None,
        metavar="N",
        help="the nemesis soak instead: N simulated hosts (network namespaces; needs root) and "
        "a store host with a PostgreSQL server of its own, member processes on the hosts "
        "broadcasting numbered messages, some confirmed, while a nemesis partitions hosts, "
        "kills and pauses processes and cuts hosts from the store; every delivery checked",
    )
    soak.add_argument(
        "--nemesis",
        type=_nemesis_kinds,
        default=None,
        metavar="KINDS",
        help=f"with --hosts: what the nemesis does, of {','.join(KINDS)} (default all)",
    )
    soak.add_argument(
        "--members-per-host",
        type=_at_least(1),
        default=None,
        metavar="M",
        help="with --hosts: member processes on each host (default 2)",
    )
    soak.add_argument(
        "--log-dir",
        default=None,
        help="with --hosts: keep every member's output and the nemesis's schedule here "
        "(default: a temporary directory, kept only if a guarantee was violated)",
    )
    member = commands.add_parser(
        "member",
        help="run one member of a group in this process",
        description=__doc__,
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    member.add_argument("--store", required=True, help="store URL shared by the group")
    member.add_argument("--schema", default=None, help="PostgreSQL schema holding the group table")
    member.add_argument(
        "--group", required=True, type=_group_name, help="group name (at most 255 characters)"
    )
    member.add_argument(
        "--listen", default=None, help="HOST:PORT to listen on for other nodes (port 0: any)"
    )
    member.add_argument(
        "--advertise",
        default=None,
        metavar="HOST[:PORT]",
        help="the address other hosts dial to reach this node (needed with a wildcard "
        "--listen such as 0.0.0.0:7000; the port defaults to the bound one)",
    )
    member.add_argument(
        "--store-outage-timeout",
        type=_positive,
        default=DEFAULT_OUTAGE_TIMEOUT,
        metavar="SECONDS",
        help="how long the member outlives a store that is unreachable or locked "
        f"(default {DEFAULT_OUTAGE_TIMEOUT:g})",
    )
    member.add_argument(
        "--cookie-file",
        default=None,
        help="file holding the node cookie, mode 0600 (default: $TRIO_GM_COOKIE_FILE, else "
        "~/.config/trio-gm/cookie, made if missing)",
    )
    member.add_argument(
        "--heartbeat", type=_positive, default=5.0, help="seconds of silence before a peer is down"
    )
    member.add_argument("--json", action="store_true", help="print JSON lines")

    group = commands.add_parser(
        "group",
        epilog=_SEE_EXIT_STATUSES,
        help="what the store holds of groups: list, show, forget",
        description="What the store believes: during a partition, the view every member "
        "acts on. 'list' the groups, 'show' one (its view version and its ring in order, "
        "with alive/dead marks and each member's host), 'forget' one (delete its row: only "
        "for a group none of whose members runs).",
    )
    actions = group.add_subparsers(dest="group_command", required=True, metavar="ACTION")
    for action, helptext in (
        ("list", "the names of every group in the store"),
        ("show", "one group's view version and ring"),
        ("forget", "delete one group's row (gm's forget_group)"),
    ):
        sub = actions.add_parser(action, help=helptext, epilog=_SEE_EXIT_STATUSES)
        if action != "list":
            sub.add_argument("group", type=_group_name, help="group name")
        sub.add_argument("--store", required=True, help="store URL")
        sub.add_argument("--schema", default=None, help="PostgreSQL schema holding the table")
        sub.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _worker_parser() -> argparse.ArgumentParser:
    """``trio-gm bench-worker``: one member of ``bench --processes`` (not for users)."""
    worker = argparse.ArgumentParser(prog="trio-gm bench-worker")
    worker.add_argument("--store", required=True)
    worker.add_argument("--cookie-file", required=True)
    worker.add_argument("--seconds", type=float, required=True)
    worker.add_argument("--confirms", type=int, default=0)
    worker.add_argument("--sender", action="store_true")
    worker.set_defaults(command="bench-worker", log_level="WARNING")
    return worker


async def _group(args: argparse.Namespace) -> int:
    """``trio-gm group list|show|forget``: what the store believes of groups."""
    out = _Printer(args.json)
    try:
        async with open_store(args.store, schema=args.schema) as store:
            if args.group_command == "list":
                names = await store.list_groups()
                if args.json:
                    print(json.dumps({"groups": names}), flush=True)
                else:
                    for name in names:
                        print(name, flush=True)
                return EXIT_OK
            group = await store.read_group(args.group)
            if group is None:
                if args.group_command == "forget":
                    out("forgot", group=args.group, existed=False)
                    return EXIT_OK
                raise UsageError(f"no group {args.group!r} in the store {store.url}")
            if args.group_command == "forget":
                await store.forget_group(args.group)
                out("forgot", group=args.group, existed=True)
                return EXIT_OK
            _show_group(group, as_json=args.json)
            return EXIT_OK
    except StoreError as exc:
        raise UsageError(str(exc)) from exc


def _member_host(node: str) -> str | None:
    """The host in a node name ``host:port#incarnation`` (None for a node of one process)."""
    try:
        return split_address(node)[0]
    except ValueError:
        return None


def _show_group(group: Group, *, as_json: bool) -> None:
    members = [
        {"id": str(m.id), "node": m.id.node, "host": _member_host(m.id.node), "dead": m.dead}
        for m in group.members
    ]
    if as_json:
        print(
            json.dumps({"group": group.name, "version": group.version, "members": members}),
            flush=True,
        )
        return
    alive = sum(not m.dead for m in group.members)
    print(
        f"group {group.name!r}, view version {group.version}: "
        f"{len(members)} in the ring, {alive} alive",
        flush=True,
    )
    for position, member in enumerate(members, 1):
        where = f" on {member['host']}" if member["host"] else ""
        state = "dead" if member["dead"] else "alive"
        print(f"  {position}. {member['id']}{where}  {state}", flush=True)


_RUNNERS: Final = {
    "demo": _demo,
    "bench": _bench,
    "bench-worker": _bench_worker,
    "soak": _soak,
    "member": _member,
    "group": _group,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The worker bench --processes starts is parsed apart, so that it is in
    # no list of commands.
    if argv[:1] == ["bench-worker"]:
        args = _worker_parser().parse_args(argv[1:])
    else:
        args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return trio.run(_RUNNERS[args.command], args)
    except BaseException as exc:
        failure = _user_failure(exc)
        if failure is None:
            raise
        status, message = failure
        log.debug("trio-gm %s: exit status %d", args.command, status, exc_info=exc)
        print(f"trio-gm {args.command}: {message}", file=sys.stderr)
        return status


def _group_name(text: str) -> str:
    try:
        return check_group_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected at least {low}, got {value}")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
