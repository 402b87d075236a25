"""Groups of ``trio-gm member --json`` processes on simulated hosts, and gm's checks.

A :class:`HostGroup` (made by :func:`host_group`) starts members inside the
hosts of a :class:`~trio_gm.testing.netns.SimulatedNetwork`, each listening
on ``0.0.0.0:0`` and advertising its host's address, all on one store (a
private PostgreSQL server on a host of its own, or an SQLite file on the
shared filesystem), and kills and reaps every one of them when the block
ends. Every member remembers what it was told to broadcast
(:attr:`HostMember.script`), so the checks can compare what each member
delivered from each sender with what that sender sent:

* :func:`assert_sender_order`: from every sender, every receiver delivered a
  contiguous run of what it sent (from the first message, unless the
  receiver joined later): in order, with no gap and no duplicate;
* :func:`assert_nothing_after_death`: no receiver delivered from a member
  after it had reported that member dead;
* :func:`assert_held_by`: the given messages were delivered by every member
  given (what was confirmed before a cut, by the members still alive);
* :func:`assert_agree_on`: the survivors delivered the same messages from
  a member that died.

The phases are fences, never sleeps: :func:`phase` (every member floods and
confirms; returns once every member delivered every fence) and
:func:`deaths_reported` (every survivor reported a death).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Final

import trio

from tests.net.procs import Stderr
from trio_gm.cli import EXIT_STOPPED_BY_GROUP, EXIT_STOPPED_BY_STORE
from trio_gm.testing.member_process import MemberProcess
from trio_gm.testing.netns import Host, SimulatedNetwork

__all__ = [
    "FOREVER",
    "GROUP",
    "HEARTBEAT",
    "HostGroup",
    "HostMember",
    "assert_agree_on",
    "assert_held_by",
    "assert_nothing_after_death",
    "assert_sender_order",
    "assert_stopped_by_group",
    "assert_stopped_by_store",
    "check_all",
    "confirm_all",
    "confirmed_so_far",
    "deaths_reported",
    "exited_first",
    "first_of",
    "flood_all",
    "host_group",
    "phase",
]

#: The group every member joins.
GROUP: Final = "hosts"
#: Seconds of silence before a peer is down (``--heartbeat``).
HEARTBEAT: Final = 1.0
#: How long a test waits for one event it expects (bounds a broken test only).
WAIT: Final = 30.0
#: A script's last element after ``flood-forever``: then 0, 1, 2, ... for ever.
FOREVER: Final = object()


class HostMember(MemberProcess):
    """A member process on a simulated host that remembers what it broadcast."""

    def __init__(self, name: str, host: Host) -> None:
        super().__init__(name, host=host, wait=WAIT)
        self.host: Host = host
        #: What it was told to broadcast, in order (FOREVER last after flood-forever).
        self.script: list[Any] = []
        #: Each member's script length when this one was ready (joined).
        self.joined_at: dict[HostMember, int] = {}
        self.stderr = Stderr()

    async def flood(self, count: int) -> None:
        """``flood COUNT``: broadcast 0 .. COUNT-1; returns once all are handed to the member."""
        await self.flooded(await self.start_flood(count))

    async def start_flood(self, count: int) -> int:
        """``flood COUNT`` without waiting; what :meth:`flooded` takes."""
        mark = len(self.events)
        self._extend(range(count))
        await self.command(f"flood {count}")
        return mark

    async def flooded(self, mark: int) -> None:
        """Wait until the flood :meth:`start_flood` started (``mark``) is handed to the member."""
        await self.expect(lambda e: e["event"] == "flooded", after=mark)

    async def flood_forever(self) -> None:
        """``flood-forever``: broadcast 0, 1, 2, ... until the process ends."""
        self._extend([FOREVER])
        await self.command("flood-forever")

    async def send_confirmed(self, text: str) -> None:
        """``confirm TEXT`` without waiting (see :meth:`confirmed`)."""
        self._extend([text])
        await self.command(f"confirm {text}")

    async def confirmed(self, text: str) -> None:
        """Wait until its ``confirm TEXT`` returned: every member then holds TEXT."""
        await self.expect(lambda e: e["event"] == "confirmed" and e["msg"] == text)

    async def confirm(self, text: str) -> None:
        await self.send_confirmed(text)
        await self.confirmed(text)

    def _extend(self, items: Iterable[Any]) -> None:
        assert FOREVER not in self.script, f"{self.name} floods for ever: nothing comes after"
        self.script.extend(items)

    async def delivered(self, sender: HostMember, msg: Any) -> None:
        """Wait until it delivered ``msg`` from ``sender``."""
        await self.expect(
            lambda e: e["event"] == "msg" and e["sender"] == sender.id and e["msg"] == msg
        )

    async def saw_death(self, dead: HostMember) -> None:
        """Wait until it reported ``dead`` dead (``members_changed``)."""
        await self.expect(lambda e: e["event"] == "members_changed" and dead.id in e["deaths"])

    async def saw_birth(self, born: HostMember) -> None:
        """Wait until it reported ``born`` joined (``members_changed``)."""
        await self.expect(lambda e: e["event"] == "members_changed" and born.id in e["births"])


class HostGroup:
    """Members of group :data:`GROUP` on the hosts of ``net``, all on store ``store_url``."""

    def __init__(self, net: SimulatedNetwork, store_url: str, nursery: trio.Nursery) -> None:
        self.net = net
        self.store_url = store_url
        self.nursery = nursery
        self.members: list[HostMember] = []

    async def start(self, name: str, host: Host, *extra: str) -> HostMember:
        """Start member ``name`` on ``host``; returns once it has joined (``ready``)."""
        member = HostMember(name, host)
        args = [
            "--store",
            self.store_url,
            "--group",
            GROUP,
            "--listen",
            "0.0.0.0:0",
            "--advertise",
            host.address,
            "--heartbeat",
            f"{HEARTBEAT:g}",
            *extra,
        ]
        try:
            await member.start(self.nursery, args, stderr=subprocess.PIPE)
        finally:
            self.members.append(member)  # to be reaped
        member.joined_at = {other: len(other.script) for other in self.members}
        assert member.process is not None
        assert member.process.stderr is not None
        self.nursery.start_soon(member.stderr.collect, member.process.stderr)
        assert member.address.startswith(f"{host.address}:"), member.address
        return member

    async def start_all(self, names: Sequence[tuple[str, Host]], *extra: str) -> list[HostMember]:
        """Start members concurrently; returns them in the order given, all joined."""
        started: dict[str, HostMember] = {}

        async def one(name: str, host: Host) -> None:
            started[name] = await self.start(name, host, *extra)

        async with trio.open_nursery() as nursery:
            for name, host in names:
                nursery.start_soon(one, name, host)
        return [started[name] for name, _ in names]

    async def exit_status(self, member: HostMember, within: float = WAIT) -> int:
        """Wait until ``member`` exits (its standard error closed too); its status."""
        assert member.process is not None
        with trio.fail_after(within):
            status = await member.process.wait()
            await member.stderr.closed.wait()
            await member.closed.wait()
        return status

    async def quit(self, member: HostMember) -> None:
        """``quit``; it must leave cleanly: status 0, no traceback or error on standard error.

        WARNING lines are allowed: the transport logs, for instance, a dial
        to a node on a host whose processes were killed being reset.
        """
        await member.command("quit")
        status = await self.exit_status(member)
        unexpected = [
            line for line in member.stderr.text.splitlines() if not line.startswith("WARNING ")
        ]
        assert (status, unexpected) == (0, []), (
            f"{member.name} exited {status}: {member.stderr.text}"
        )
        assert member.events[-1] == {"event": "terminate", "reason": "normal"}

    async def kill_all(self) -> None:
        """SIGKILL (after SIGCONT: some may be stopped) every member still running, and reap."""
        for member in self.members:
            if member.running:
                with contextlib.suppress(ProcessLookupError):
                    member.signal(signal.SIGCONT)
                    member.signal(signal.SIGKILL)
        for member in self.members:
            if member.process is not None:
                await member.process.wait()


@contextlib.asynccontextmanager
async def host_group(net: SimulatedNetwork, store_url: str) -> AsyncIterator[HostGroup]:
    """A :class:`HostGroup` whose members are all killed and reaped when the block ends."""
    async with trio.open_nursery() as nursery:
        group = HostGroup(net, store_url, nursery)
        try:
            yield group
        finally:
            with trio.CancelScope(shield=True):
                await group.kill_all()
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ phases


async def first_of(
    members: Sequence[HostMember], wait: Callable[[HostMember], Awaitable[object]]
) -> HostMember:
    """The first of ``members`` for which ``wait(member)`` returns (the rest are cancelled)."""
    winner: list[HostMember] = []
    async with trio.open_nursery() as nursery:

        async def one(member: HostMember) -> None:
            await wait(member)
            winner.append(member)
            nursery.cancel_scope.cancel()

        for member in members:
            nursery.start_soon(one, member)
    return winner[0]


async def exited_first(
    group: HostGroup, members: Sequence[HostMember], within: float
) -> HostMember:
    """The first of ``members`` to exit, within ``within`` seconds."""
    with trio.fail_after(within):
        return await first_of(members, group.exit_status)


async def confirm_all(members: Sequence[HostMember], tag: str) -> None:
    """Each member confirms ``TAG-NAME`` (all at once); returns when every one returned."""
    for member in members:
        await member.send_confirmed(f"{tag}-{member.name}")
    for member in members:
        await member.confirmed(f"{tag}-{member.name}")


async def flood_all(members: Sequence[HostMember], count: int) -> None:
    """Every member floods ``count`` numbers (all at once); returns when all are handed over."""
    marks = [await member.start_flood(count) for member in members]
    for member, mark in zip(members, marks, strict=True):
        await member.flooded(mark)


async def phase(members: Sequence[HostMember], tag: str, count: int) -> None:
    """Every member floods ``count`` numbers, then confirms ``TAG-NAME``.

    Returns once every member has delivered every fence, and so, by
    per-sender order, every message of the phase.
    """
    await flood_all(members, count)
    await confirm_all(members, tag)
    for receiver in members:
        for sender in members:
            await receiver.delivered(sender, f"{tag}-{sender.name}")


async def deaths_reported(survivors: Sequence[HostMember], dead: Iterable[HostMember]) -> None:
    """Wait until every survivor has reported every one of ``dead`` dead.

    A death is reported once the dead member is erased from the ring, by the
    survivor that inherited it; the others hear of it with the next activity
    that carries the new view. So the first survivor to report it confirms a
    message, which goes round the ring with that view.
    """
    for gone in dead:
        first = await first_of(survivors, functools.partial(HostMember.saw_death, dead=gone))
        await first.confirm(f"death-of-{gone.name}")
        for survivor in survivors:
            await survivor.saw_death(gone)


def confirmed_so_far(members: Iterable[HostMember]) -> list[tuple[HostMember, list[Any]]]:
    """Each member's script so far: all confirmed, once its last ``confirm`` has returned."""
    return [(member, list(member.script)) for member in members]


# ------------------------------------------------------------------- checks


def _expected(script: Sequence[Any], start: int, count: int) -> list[Any]:
    """``script[start : start + count]`` (after FOREVER: 0, 1, 2, ... from there)."""
    if FOREVER in script:
        fixed = list(script[: script.index(FOREVER)])
        script = fixed + list(range(max(0, start + count - len(fixed))))
    return list(script[start : start + count])


def _segment(got: list[Any], script: Sequence[Any], joined_at: int) -> int | None:
    """Where in ``script`` the contiguous run ``got`` starts, at ``joined_at`` or before.

    A receiver that joined after its sender began gets a run from about the
    point where it joined (a message still in flight then, or later).
    """
    candidates: list[int] = [joined_at, *range(joined_at)]
    for start in candidates:
        if got == _expected(script, start, len(got)):
            return start
    return None


def assert_sender_order(
    receivers: Iterable[HostMember], senders: Iterable[HostMember], *, complete: bool = False
) -> None:
    """From each sender, each receiver delivered a contiguous run of its script.

    In order, with no gap and no duplicate; from its first message if the
    receiver joined before the sender's first message, else from about
    where it joined. ``complete``: up to the script's end.
    """
    senders = list(senders)
    problems: list[str] = []
    for receiver in receivers:
        for sender in senders:
            got = receiver.messages_from(sender.id)
            joined_at = receiver.joined_at.get(sender, 0)
            start = _segment(got, sender.script, joined_at)
            if start is None:
                want = _expected(sender.script, joined_at, len(got))
                first = next(
                    (i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w),
                    len(want),
                )
                problems.append(
                    f"{receiver.name} from {sender.name}: message {first} after where it "
                    f"joined ({joined_at}) is {got[first]!r}, expected "
                    f"{want[first] if first < len(want) else 'nothing'!r} "
                    f"(got {len(got)} messages)"
                )
            elif complete and start + len(got) != len(sender.script):
                problems.append(
                    f"{receiver.name} from {sender.name}: messages {start} to "
                    f"{start + len(got)} of {len(sender.script)}"
                )
    assert problems == [], "per-sender order violated:\n" + "\n".join(problems)


def assert_nothing_after_death(receivers: Iterable[HostMember]) -> None:
    """No receiver delivered from a member after it reported that member dead."""
    problems: list[str] = []
    for receiver in receivers:
        dead: set[str] = set()
        for event in receiver.events:
            if event["event"] == "members_changed":
                dead.update(event["deaths"])
            elif event["event"] == "msg" and event["sender"] in dead:
                problems.append(f"{receiver.name} delivered {event} after reporting its death")
    assert problems == [], "\n".join(problems)


def check_all(members: Sequence[HostMember]) -> None:
    """gm's guarantees over every log: per-sender order, nothing after a death."""
    assert_sender_order(members, members)
    assert_nothing_after_death(members)


def assert_agree_on(survivors: Iterable[HostMember], dead: HostMember) -> None:
    """Every survivor delivered the same messages from ``dead``."""
    held = {survivor.name: survivor.messages_from(dead.id) for survivor in survivors}
    counts = {name: len(messages) for name, messages in held.items()}
    assert len({repr(messages) for messages in held.values()}) == 1, (
        f"the survivors disagree on what {dead.name} sent: {counts}"
    )


def assert_stopped_by_group(member: HostMember, status: int) -> None:
    """It stopped on its own with reason ``shutdown``: exit 3, and one line saying why."""
    assert status == EXIT_STOPPED_BY_GROUP, (member.name, status, member.stderr.text)
    assert member.events[-1] == {"event": "terminate", "reason": "shutdown"}
    assert f"member {member.id} of group {GROUP!r} lost its membership" in member.stderr.text
    assert "Traceback" not in member.stderr.text


def assert_stopped_by_store(member: HostMember, status: int, outage_timeout: float) -> None:
    """It stopped with the store unreachable past its outage timeout: exit 4, one line."""
    assert status == EXIT_STOPPED_BY_STORE, (member.name, status, member.stderr.text)
    assert member.events[-1]["event"] == "terminate"
    assert f"outage_timeout of {outage_timeout:g} s" in member.events[-1]["reason"]
    assert f"member {member.id} of group {GROUP!r} stopped: the store failed" in (
        member.stderr.text
    )
    assert "Traceback" not in member.stderr.text


def assert_held_by(
    receivers: Iterable[HostMember], messages: Iterable[tuple[HostMember, Sequence[Any]]]
) -> None:
    """Each receiver delivered every one of ``messages`` (sender, the messages it sent)."""
    messages = list(messages)
    problems: list[str] = []
    for receiver in receivers:
        for sender, sent in messages:
            got = receiver.messages_from(sender.id)
            if got[: len(sent)] != list(sent):
                problems.append(
                    f"{receiver.name} holds {len(got)} messages of {sender.name}, "
                    f"not the {len(sent)} confirmed"
                )
    assert problems == [], "confirmed messages lost:\n" + "\n".join(problems)
