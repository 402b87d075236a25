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
``members``           print the alive members
``quit``              leave the group and exit
====================  ===================================================

Ctrl-C (or end of input) leaves the group cleanly. With ``--json`` every
line printed is one JSON object (for programs driving the member).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from . import CookieError, Member, MemberId, StoreError, open_node, open_store
from ._bench import (
    BenchResult,
    CountingMember,
    bench_in_process,
    confirmed_latencies,
    flood,
    percentiles,
)
from ._cookie import load_cookie
from .testing.soak import SoakMember, SoakReport, check_finals, print_report, run_soak

log = logging.getLogger("trio_gm.cli")


class UsageError(Exception):
    """A bad argument: printed without a traceback, exit status 2."""


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
    """gm callbacks that print every event."""

    def __init__(self, out: _Printer) -> None:
        self.out = out

    def joined(self, args: Any, members: list[MemberId]) -> None:
        self.out("joined", members=[str(m) for m in members])

    def members_changed(self, args: Any, births: list[MemberId], deaths: list[MemberId]) -> None:
        self.out(
            "members_changed", births=[str(m) for m in births], deaths=[str(m) for m in deaths]
        )

    def handle_msg(self, args: Any, sender: MemberId, msg: Any) -> None:
        self.out("msg", sender=str(sender), msg=msg)

    def handle_terminate(self, args: Any, reason: Any) -> None:
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
    failure: UsageError | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_leave_on_signal, signals, nursery.cancel_scope)
            try:
                await _run_member(args, cookie, out, nursery)
            except (StoreError, ValueError) as exc:
                failure = UsageError(str(exc))
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return 0


async def _run_member(
    args: argparse.Namespace, cookie: bytes | None, out: _Printer, nursery: trio.Nursery
) -> None:
    async with open_store(args.store, schema=args.schema) as store:
        await store.create_tables()
        async with (
            open_node(
                store, listen=args.listen, cookie=cookie, heartbeat_interval=args.heartbeat
            ) as node,
            node.open_member(args.group, _PrintingMember(out)) as member,
        ):
            out("ready", id=str(member.id), address=node.address)
            await _commands(member, out, nursery)


async def _leave_on_signal(signals: Any, scope: trio.CancelScope) -> None:
    """Ctrl-C or SIGTERM: leave the group cleanly and exit 0."""
    async for _ in signals:
        scope.cancel()
        return


async def _commands(member: Any, out: _Printer, nursery: trio.Nursery) -> None:
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
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
            if command == "send":
                await member.broadcast(rest)
            elif command == "confirm":
                await member.confirmed_broadcast(rest)
                out("confirmed", msg=rest)
            elif command == "flood":
                count = int(rest)
                for i in range(count):
                    await member.broadcast(i)
                    if i % 100 == 99:
                        await trio.lowlevel.checkpoint()
                out("flooded", count=count)
            elif command == "flood-forever":
                nursery.start_soon(_flood_forever, member)
            elif command == "members":
                out("members", members=[str(m) for m in await member.group_members()])
            elif command == "quit":
                return
            elif command:
                out("error", message=f"unknown command {command!r}")


async def _flood_forever(member: Any) -> None:
    i = 0
    while True:
        await member.broadcast(i)
        i += 1
        await trio.sleep(0.0005)


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
        try:
            async with open_store(url) as store:
                await store.create_tables()
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
                                f"{_short(s)}:{n}"
                                for s, n in sorted(slot.callbacks.per_sender.items())
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
        except StoreError as exc:
            raise UsageError(str(exc)) from exc

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
        try:
            async with open_store(args.store) as store:
                await store.create_tables()
                result = await bench_in_process(
                    store,
                    members=args.members,
                    seconds=args.seconds,
                    one_sender=args.one_sender,
                    confirms=args.confirms,
                )
        except StoreError as exc:
            raise UsageError(str(exc)) from exc
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
    return 0


async def _bench_processes(args: argparse.Namespace) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="trio-gm-bench-") as tmp:
        cookie = Path(tmp) / "cookie"
        await load_cookie(cookie)  # a new one, mode 0600, as the workers require
        store = args.store if args.store != "sqlite://" else f"sqlite:///{tmp}/bench.db"
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
        sent_per_s=round(sum(r["sent"] for r in results) / elapsed),
        received_per_s=[round(r) for r in received],
        confirmed_us=results[0]["confirmed_us"],
        memory_per_member_kib=None,
    )


async def _read_json(process: trio.Process) -> dict[str, Any]:
    assert process.stdout is not None
    line = b""
    with trio.fail_after(120):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise UsageError("a benchmark worker died; run it alone to see why")
            line += chunk
    result: dict[str, Any] = json.loads(line)
    return result


async def _bench_worker(args: argparse.Namespace) -> int:
    cookie = await load_cookie(Path(args.cookie_file), create=False)
    counter = CountingMember()
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    async with open_store(args.store) as store:
        await store.create_tables()
        async with open_node(store, listen="127.0.0.1:0", cookie=cookie) as node:
            async with node.open_member("bench", counter) as member:
                print(json.dumps({"event": "joined"}), flush=True)
                assert await stdin.receive_some(3) == b"go\n"
                stop = trio.Event()
                sent = [0]

                async def send() -> None:
                    sent[0] = await flood(member, stop)

                async with trio.open_nursery() as nursery:
                    if args.sender:
                        nursery.start_soon(send)
                    await trio.sleep(0.5)
                    base, start = counter.delivered, time.perf_counter()
                    await trio.sleep(args.seconds)
                    elapsed = time.perf_counter() - start
                    delivered = counter.delivered - base
                    stop.set()
                latencies = (
                    await confirmed_latencies(member, args.confirms) if args.confirms else {}
                )
                print(
                    json.dumps(
                        {
                            "delivered": delivered,
                            "elapsed": elapsed,
                            "sent": sent[0],
                            "confirmed_us": latencies,
                        }
                    ),
                    flush=True,
                )
                await stdin.receive_some(5)
    return 0


# -- soak ---------------------------------------------------------------------


async def _soak(args: argparse.Namespace) -> int:
    try:
        async with open_store(args.store) as store:
            await store.create_tables()
            report = await run_soak(
                store, seconds=args.seconds, members=args.members, seed=args.seed, nodes=args.nodes
            )
    except StoreError as exc:
        raise UsageError(str(exc)) from exc
    return print_report(report)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-gm",
        description="trio_gm: RabbitMQ's guaranteed multicast ring on trio.",
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

    worker = commands.add_parser("bench-worker", help=argparse.SUPPRESS)
    worker.add_argument("--store", required=True)
    worker.add_argument("--cookie-file", required=True)
    worker.add_argument("--seconds", type=float, required=True)
    worker.add_argument("--confirms", type=int, default=0)
    worker.add_argument("--sender", action="store_true")

    soak = commands.add_parser(
        "soak",
        help="soak-test a group with joins, leaves and kills",
        description="Members broadcast sequence numbers while others join, leave and are "
        "killed; every callback checks gm's guarantees. Exit status 1 on any violation.",
    )
    soak.add_argument("--seconds", type=_positive, default=30.0, help="how long (default 30)")
    soak.add_argument("--members", type=_at_least(2), default=4, help="group size to aim for")
    soak.add_argument("--seed", type=int, default=0, help="random seed")
    soak.add_argument("--nodes", type=_at_least(1), default=1, help="TCP nodes to spread over")
    soak.add_argument("--store", default="sqlite://", help="store URL (default: in memory)")
    member = commands.add_parser(
        "member",
        help="run one member of a group in this process",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    member.add_argument("--store", required=True, help="store URL shared by the group")
    member.add_argument("--schema", default=None, help="PostgreSQL schema holding the group table")
    member.add_argument("--group", required=True, help="group name")
    member.add_argument(
        "--listen", default=None, help="HOST:PORT to listen on for other nodes (port 0: any)"
    )
    member.add_argument(
        "--cookie-file",
        default=None,
        help="file holding the node cookie, mode 0600 (default: $TRIO_GM_COOKIE_FILE, else "
        "~/.config/trio-gm/cookie, made if missing)",
    )
    member.add_argument(
        "--heartbeat", type=float, default=5.0, help="seconds of silence before a peer is down"
    )
    member.add_argument("--json", action="store_true", help="print JSON lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    runners = {
        "demo": _demo,
        "bench": _bench,
        "bench-worker": _bench_worker,
        "soak": _soak,
        "member": _member,
    }
    try:
        return trio.run(runners[args.command], args)
    except UsageError as exc:
        print(f"trio-gm {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


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
