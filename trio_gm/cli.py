"""The ``trio-gm`` command line.

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
import sys
from collections.abc import Sequence
from typing import Any

import trio

from . import MemberId, StoreError, open_node, open_store

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
    cookie: bytes | None = None
    if args.cookie_file is not None:
        try:
            cookie = (await trio.Path(args.cookie_file).read_bytes()).strip()
        except OSError as exc:
            raise UsageError(f"cannot read the cookie file {args.cookie_file!r}: {exc}") from exc
        if not cookie:
            raise UsageError(f"the cookie file {args.cookie_file!r} is empty")
    try:
        async with open_store(args.store, schema=args.schema) as store:
            await store.create_tables()
            async with open_node(
                store,
                listen=args.listen,
                cookie=cookie,
                heartbeat_interval=args.heartbeat,
            ) as node:
                async with node.open_member(args.group, _PrintingMember(out)) as member:
                    out("ready", id=str(member.id), address=node.address)
                    with trio.open_signal_receiver(signal.SIGTERM) as signals:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(_leave_on_signal, signals, nursery.cancel_scope)
                            await _commands(member, out, nursery)
                            nursery.cancel_scope.cancel()
    except StoreError as exc:
        raise UsageError(str(exc)) from exc
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return 0


async def _leave_on_signal(signals: Any, scope: trio.CancelScope) -> None:
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
    member.add_argument("--cookie-file", default=None, help="file holding the node cookie")
    member.add_argument(
        "--heartbeat", type=float, default=5.0, help="seconds of silence before a peer is down"
    )
    member.add_argument("--json", action="store_true", help="print JSON lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "member":
            return trio.run(_member, args)
    except UsageError as exc:
        print(f"trio-gm {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
