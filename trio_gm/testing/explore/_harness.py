"""The harness: a group whose every message, DOWN and transaction waits for a step.

Members are real :class:`~trio_gm.ring.member.MemberActor` instances on one
:class:`~trio_gm.actor.ActorNode`, in one ``trio.run`` with a
``MockClock`` that only moves when a step says so. Their
:class:`~trio_gm.ring.io.RingIO` is :class:`HarnessIO`, which holds
everything a member does to the world until the scheduler picks it:

* a ring message goes to the end of the link queue sender -> receiver;
* the ``AddOnRight`` call of a join goes on the link joiner -> left like a
  message; delivering it posts the call to the left, whose reply (or the
  failure, if the left is or becomes dead) goes back on the link left ->
  joiner, behind the catch-up the left sent first;
* a monitor is recorded by the harness; when the target stops, its
  ``Down(ref, target, reason)`` goes to the end of the link target ->
  watcher, after everything the target sent on it (as the runtime
  guarantees);
* a store operation parks the member until a step runs it against the
  in-memory :class:`~trio_gm.store.Group` with the op's own ``apply``
  (:mod:`trio_gm.store.ops`), so changes are totally ordered, one per step;
  a dirty read returns the current group at once.

After every step the harness waits until every task is blocked
(``wait_all_tasks_blocked``), so the effect of a step is the same on every
run, then checks the invariants (:mod:`._checks`).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, cast

import attrs
import trio
import trio.testing

from ..._exceptions import ActorError, ActorStopped, MemberStopped, NoSuchActor
from ..._ids import MemberId
from ...actor import ActorContext, ActorNode, Down, From, MonitorRef
from ...actor._node import CALL
from ...ring.io import EraseMembers, PruneOrCreate, RecordDead, RecordNewMember, StoreOp
from ...ring.member import OrphanedJoin, _ConfirmedBroadcast, raise_if_shutting_down
from ...ring.messages import Activity, AddOnRight, Catchup, CheckNeighbours, RingMessage
from ...store import Group, GroupStore, LostMembership
from . import _checks
from ._member import BUGS, ExplorerMember

GROUP: Final = "explore"
#: Steps the final drain may take before the run counts as not quiescing.
DRAIN_LIMIT: Final = 4000
#: How far a ``tick`` step moves the mock clock (past gm's 25 ms flush timer).
TICK: Final = 0.03

_UNSET: Final[Any] = object()


# -- what travels on a link ------------------------------------------------


@attrs.define(eq=False)
class _Call:
    """A joiner's ``AddOnRight`` call, travelling joiner -> left."""

    caller: MemberId
    callee: MemberId
    request: AddOnRight
    done: trio.Event = attrs.Factory(trio.Event)
    reply: _Reply | None = None
    abandoned: bool = False


@attrs.frozen(eq=False)
class _Reply:
    """The answer to a :class:`_Call`, travelling left -> joiner."""

    call: _Call
    value: Any
    error: str | None = None


LinkItem = Activity | Catchup | CheckNeighbours | Down | _Call | _Reply


@attrs.define(eq=False)
class _Transaction:
    member: MemberId
    op: StoreOp
    done: trio.Event = attrs.Factory(trio.Event)
    result: Group | LostMembership | None = None


@attrs.frozen
class Publication:
    """A message as its publisher handled it."""

    sender: MemberId
    #: Its place in its sender's publication order (0, 1, 2, ...).
    number: int
    #: Members alive in the stored ring (and running) when it was published.
    group: frozenset[MemberId]


@attrs.define(eq=False)
class ConfirmRecord:
    slot: Slot
    msg: tuple[int, int]
    outcome: str | None = None


@attrs.define(eq=False)
class Slot:
    """One member of the explored group, alive or not, and what it saw."""

    index: int
    actor: ExplorerMember
    id: MemberId | None = None
    #: Set once ``init`` returned (the member joined): it takes broadcasts.
    started: bool = False
    killed: bool = False
    leaving: bool = False
    #: Its join failed as an orphan (its left died between recording it and
    #: handing over its state): it recorded itself dead and stopped.
    orphaned: bool = False
    #: Its death was seen by the harness (DOWNs queued).
    gone: bool = False
    down_reason: Any = None
    #: Ring messages posted to its mailbox and not yet handled, oldest first.
    inbox: list[Activity | Catchup] = attrs.Factory(list)
    last_version: int = -1
    sent: int = -1
    confirming: bool = False
    terminated: Any = _UNSET
    known: set[MemberId] = attrs.Factory(set)
    #: Messages delivered to it, per sender, in delivery order.
    delivered: dict[MemberId, list[tuple[int, int]]] = attrs.Factory(dict)
    #: Its own messages in the order it published them.
    published: int = 0
    delivered_msgs: set[tuple[int, int]] = attrs.Factory(set)

    @property
    def label(self) -> str:
        return f"m{self.index}"


@attrs.define
class ScheduleReport:
    """What one schedule did and what it broke."""

    steps: list[int]
    members: int
    bug: str | None
    trace: list[str] = attrs.Factory(list)
    violations: list[str] = attrs.Factory(list)
    #: Steps of ``steps`` actually used (a schedule stops at its first violation).
    used: int = 0
    deliveries: int = 0

    def format(self) -> str:
        lines = [f"schedule of {len(self.steps)} steps, {self.members} members"]
        if self.bug:
            lines[0] += f", injected bug {self.bug}"
        lines += [f"  {line}" for line in self.trace]
        lines += [f"VIOLATION {v}" for v in self.violations]
        return "\n".join(lines)


class _HarnessNode(ActorNode):
    """An actor node whose replies to the harness's join calls go on links."""

    harness: Harness

    def reply(self, from_: From, value: Any) -> None:
        call = self.harness.calls.pop(from_.tag, None) if from_.node == self.name else None
        if call is None:
            super().reply(from_, value)
            return
        cell = self.cell(call.callee)
        if cell is not None:
            cell.callers.discard(from_.tag)
        self.harness.push(call.callee, call.caller, _Reply(call, value))

    def fail_callers(self, tags: set[int], reason: Any) -> None:
        rest = set()
        for tag in tags:
            call = self.harness.calls.pop(tag, None)
            if call is None:
                rest.add(tag)
            else:
                self.harness.push(
                    call.callee, call.caller, _Reply(call, None, f"stopped: {reason!r}")
                )
        super().fail_callers(rest, reason)


class HarnessIO:
    """A member's :class:`~trio_gm.ring.io.RingIO` under the harness."""

    def __init__(self, harness: Harness, ctx: ActorContext) -> None:
        self.harness = harness
        self.me: MemberId = ctx.id

    def send(self, to: MemberId, msg: RingMessage) -> None:
        self.harness.push(self.me, to, msg)

    async def call(self, to: MemberId, request: AddOnRight) -> Any:
        call = _Call(self.me, to, request)
        self.harness.push(self.me, to, call)
        try:
            await call.done.wait()
        except BaseException:
            call.abandoned = True
            raise
        reply = call.reply
        assert reply is not None
        if reply.error == "noproc":
            raise NoSuchActor(f"no actor {to} to call with {request!r}")
        if reply.error is not None:
            # The left may have committed this join before it stopped: the
            # member then finds itself in the ring, an orphan.
            raise ActorStopped(f"actor {to} {reply.error} before replying to {request!r}")
        return reply.value

    def monitor(self, target: MemberId) -> MonitorRef:
        return self.harness.monitor(self.me, target)

    def demonitor(self, ref: MonitorRef) -> None:
        self.harness.demonitor(self.me, ref)

    async def transact(self, op: StoreOp) -> Group | LostMembership:
        txn = _Transaction(self.me, op)
        pending = self.harness.transactions
        pending.append(txn)
        try:
            await txn.done.wait()
        finally:
            if txn in pending:
                pending.remove(txn)
        assert txn.result is not None
        return txn.result

    async def read_group(self) -> Group | None:
        await trio.lowlevel.checkpoint()
        return self.harness.group


class Recorder:
    """The callbacks of an explored member: record everything, check as it comes."""

    def __init__(self, harness: Harness, slot: Slot) -> None:
        self.harness = harness
        self.slot = slot

    def joined(self, args: Any, members: list[MemberId]) -> None:
        self.slot.known = set(members)

    def members_changed(self, args: Any, births: list[MemberId], deaths: list[MemberId]) -> None:
        slot = self.slot
        for member in deaths:
            if member not in slot.known:
                self.harness.violation(
                    f"{slot.label} was told of the death of {self.harness.name(member)}, "
                    "never announced to it"
                )
            slot.known.discard(member)
        slot.known.update(births)

    def handle_msg(self, args: Any, sender: MemberId, msg: tuple[int, int]) -> None:
        slot, harness = self.slot, self.harness
        if sender == slot.id:
            harness.published[msg] = Publication(sender, slot.published, harness.in_group())
            slot.published += 1
        elif sender not in slot.known:
            harness.violation(
                f"{slot.label} got {msg} from {harness.name(sender)} before it was announced"
            )
        slot.delivered.setdefault(sender, []).append(msg)
        slot.delivered_msgs.add(msg)

    def handle_terminate(self, args: Any, reason: Any) -> None:
        self.slot.terminated = reason


#: Kinds of step, with the share of the step values (out of 100) each gets.
#: A value whose kind has nothing to do falls through to the next kind.
KINDS: Final = (
    ("deliver", 40),
    ("deliver-all", 10),
    ("transaction", 15),
    ("broadcast", 12),
    ("confirm", 5),
    ("kill", 6),
    ("join", 5),
    ("leave", 4),
    ("tick", 3),
)
#: Largest step value: a kind (value % 100) and an option (value // 100).
STEP_MAX: Final = 100 * 64 - 1


class Harness:
    """Runs one schedule: a list of step values, then a drain, then the checks."""

    def __init__(
        self,
        *,
        members: int = 3,
        bug: str | None = None,
        joins: int = 2,
        trace: bool = True,
    ) -> None:
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        if bug is not None and bug not in BUGS:
            raise ValueError(f"unknown bug {bug!r}; known: {', '.join(BUGS)}")
        self.initial = members
        self.joins_left = joins
        self.member_class: type[ExplorerMember] = BUGS[bug] if bug else ExplorerMember
        self.node = _HarnessNode("explore")
        self.node.harness = self
        self.clock = trio.testing.MockClock()
        self.group: Group | None = None
        self.slots: list[Slot] = []
        self.by_id: dict[MemberId, Slot] = {}
        self.links: dict[tuple[MemberId, MemberId], deque[LinkItem]] = {}
        self.monitors: dict[MonitorRef, tuple[MemberId, MemberId]] = {}
        self.transactions: list[_Transaction] = []
        self.calls: dict[int, _Call] = {}
        self._tags = iter(range(10**9, 2 * 10**9))
        self.published: dict[tuple[int, int], Publication] = {}
        self.confirms: list[ConfirmRecord] = []
        self.violations: list[str] = []
        self.trace: list[str] | None = [] if trace else None
        self.closed = False
        self.deliveries = 0
        self._nursery: trio.Nursery | None = None

    # -- names and reports --------------------------------------------------

    def name(self, member: MemberId) -> str:
        slot = self.by_id.get(member)
        return slot.label if slot is not None else str(member)

    def violation(self, what: str) -> None:
        """Record a violation; the first one also dumps the state into the trace."""
        if self.closed:
            return
        if not self.violations and self.trace is not None:
            self.trace.extend(f"| {line}" for line in self.dump())
        self.violations.append(what)

    @property
    def stopped(self) -> bool:
        return bool(self.violations)

    def dump(self) -> list[str]:
        """The whole state, one line per member, link and transaction."""
        lines = [f"store v{self.group.version if self.group else '-'}: ring {self._ring()}"]
        for slot in self.slots:
            actor = slot.actor
            if not self.running(slot):
                lines.append(f"{slot.label}: not running")
                continue
            if not hasattr(actor, "view"):
                lines.append(f"{slot.label}: joining")
                continue
            state = actor.members_state
            known = (
                "no state yet"
                if state is None
                else " ".join(
                    f"{self.name(p)}[{ps.first}..{ps.pending_last} pub {ps.last_pub} "
                    f"ack {ps.last_ack}]"
                    for p, ps in sorted(state.items())
                )
            )
            aliases = ",".join(map(self.name, sorted(actor.view[actor.self_id].aliases)))
            lines.append(
                f"{slot.label}: v{actor.view.version} left {self.name(actor.left[0])} "
                f"right {self.name(actor.right[0])} aliases {{{aliases}}} {known}; "
                f"mailbox {[self.describe(m) for m in slot.inbox]}"
            )
        for (src, dst), queue in sorted(self.links.items()):
            items = ", ".join(self.describe(item) for item in queue)
            lines.append(f"link {self.name(src)}->{self.name(dst)}: {items}")
        for txn in self.transactions:
            lines.append(f"pending transaction: {_describe_op(txn.op, self)}")
        return lines

    def _log(self, line: str) -> None:
        if self.trace is not None:
            self.trace.append(line)

    def describe(self, item: LinkItem) -> str:
        name = self.name
        if type(item) is Activity:
            parts = []
            for e in item.entries:
                part = name(e.publisher)
                if e.pubs:
                    part += f" pubs {e.first}..{e.first + len(e.pubs) - 1}"
                if e.acks:
                    part += f" acks {e.ack_last - e.acks + 1}..{e.ack_last}"
                parts.append(part)
            return f"Activity(v{item.version} {'; '.join(parts)})"
        if type(item) is Catchup:
            parts = [
                f"{name(p)} pending {s.pending_first}..{s.pending_first + len(s.pending) - 1}"
                f" last_pub {s.last_pub} last_ack {s.last_ack}"
                for p, s in item.state
            ]
            return f"Catchup(v{item.version} {'; '.join(parts)})"
        if type(item) is CheckNeighbours:
            return f"CheckNeighbours(v{item.version})"
        if type(item) is Down:
            return f"DOWN({name(item.target)}, {item.reason!r})"
        if type(item) is _Call:
            return "AddOnRight call"
        assert type(item) is _Reply
        return f"AddOnRight reply ({item.error or 'ok'})"

    # -- the world as members see it ------------------------------------------

    def running(self, slot: Slot) -> bool:
        return slot.id is not None and self.node.is_alive(slot.id)

    def ready(self, slot: Slot) -> bool:
        return (
            self.running(slot)
            and slot.started
            and slot.actor.members_state is not None
            and not slot.leaving
        )

    def in_group(self) -> frozenset[MemberId]:
        if self.group is None:
            return frozenset()
        return frozenset(m for m in self.group.alive if self.node.is_alive(m))

    def push(self, src: MemberId, dst: MemberId, item: LinkItem) -> None:
        """Put ``item`` at the end of the link ``src`` -> ``dst``."""
        slot = self.by_id.get(dst)
        if slot is None or slot.gone:
            if type(item) is _Call:
                self.push(dst, src, _Reply(item, None, "noproc"))
            return
        self.links.setdefault((src, dst), deque()).append(item)

    def monitor(self, watcher: MemberId, target: MemberId) -> MonitorRef:
        ref = self.node.new_monitor_ref()
        cell = self.node.cell(watcher)
        assert cell is not None
        cell.monitors[ref] = target
        if self.node.is_alive(target):
            self.monitors[ref] = (watcher, target)
        else:
            self.push(target, watcher, Down(ref, target, "noproc"))
        return ref

    def demonitor(self, watcher: MemberId, ref: MonitorRef) -> None:
        cell = self.node.cell(watcher)
        if cell is not None:
            cell.monitors.pop(ref, None)
        self.monitors.pop(ref, None)

    def apply(self, op: StoreOp) -> Group | LostMembership:
        """Run one store operation on the in-memory group (a committed transaction)."""
        result = op.apply(self.group, GROUP)
        if isinstance(result, Group):
            self.group = result
        return result

    # -- hooks from the members ---------------------------------------------------

    def on_ring_message(self, member: ExplorerMember, msg: Any) -> None:
        inbox = self.by_id[member.self_id].inbox
        for i, waiting in enumerate(inbox):
            if waiting is msg:
                del inbox[i]
                return

    def on_down(self, member: ExplorerMember, down: Down) -> None:
        slot = self.by_id[member.self_id]
        if down.target != member.left[0]:
            return
        if any(msg.sender == down.target for msg in slot.inbox):
            self.violation(
                f"{slot.label} handles the DOWN of its left {self.name(down.target)} before "
                "that left's last message, which was delivered to it first"
            )

    # -- lifetimes ------------------------------------------------------------------

    def _io_factory(self, ctx: ActorContext, store: Any, group_name: str) -> HarnessIO:
        slot = self._starting
        assert slot is not None
        slot.id = ctx.id
        self.by_id[ctx.id] = slot
        self._starting = None
        return HarnessIO(self, ctx)

    _starting: Slot | None = None

    async def start_member(self) -> Slot:
        index = len(self.slots)
        actor = self.member_class(
            GROUP,
            None,
            None,
            cast(GroupStore, None),
            max_in_flight=10**9,
            io_factory=self._io_factory,
        )
        slot = Slot(index, actor)
        actor.callbacks = Recorder(self, slot)
        actor.observer = self
        actor.label = slot.label
        self.slots.append(slot)
        self._starting = slot
        assert self._nursery is not None
        self._nursery.start_soon(self._run_member, slot)
        await trio.testing.wait_all_tasks_blocked()
        return slot

    async def _run_member(self, slot: Slot) -> None:
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await self.node.start_actor(nursery, slot.actor)
                except OrphanedJoin:
                    slot.orphaned = True
                    return
                slot.started = True
        except Exception as exc:
            if not slot.killed:
                self.violation(f"{slot.label} crashed: {_unwrap(exc)!r}")

    def _detect_deaths(self) -> None:
        """Queue the DOWNs of members that stopped since the last step."""
        for slot in self.slots:
            if slot.gone or slot.id is None or self.node.is_alive(slot.id):
                continue
            slot.gone = True
            slot.inbox.clear()
            if slot.killed:
                reason: Any = "killed"
            elif slot.orphaned:
                reason = "orphaned"
            elif slot.actor.stop_reason is not None:
                reason = slot.actor.stop_reason
            else:
                reason = "normal"
            slot.down_reason = reason
            dead = slot.id
            for ref, (watcher, target) in list(self.monitors.items()):
                if target == dead:
                    del self.monitors[ref]
                    self.push(dead, watcher, Down(ref, dead, reason))
                elif watcher == dead:
                    del self.monitors[ref]
            for (src, dst), queue in list(self.links.items()):
                if dst == dead:
                    for item in queue:
                        if type(item) is _Call:
                            self.push(dst, src, _Reply(item, None, "noproc"))
                    del self.links[(src, dst)]

    async def settle(self) -> None:
        await trio.testing.wait_all_tasks_blocked()
        self._detect_deaths()

    # -- steps ----------------------------------------------------------------------

    def deliver(self, src: MemberId, dst: MemberId) -> None:
        queue = self.links[(src, dst)]
        item = queue.popleft()
        if not queue:
            del self.links[(src, dst)]
        self.deliveries += 1
        if type(item) is _Reply:
            call = item.call
            if not call.abandoned:
                call.reply = item
                call.done.set()
            return
        slot = self.by_id[dst]
        if not self.node.is_alive(dst):
            if type(item) is _Call:
                self.push(dst, src, _Reply(item, None, "noproc"))
            return
        if type(item) is _Call:
            tag = next(self._tags)
            self.calls[tag] = item
            cell = self.node.cell(dst)
            assert cell is not None
            cell.callers.add(tag)
            cell.mailbox.send_nowait((CALL, item.request, From(self.node.name, tag)))
        elif type(item) is Down:
            self.node.send(dst, item)
        else:
            if type(item) is Activity or type(item) is Catchup:
                slot.inbox.append(item)
            self.node.cast(dst, item)

    def run_transaction(self, txn: _Transaction) -> None:
        self.transactions.remove(txn)
        txn.result = self.apply(txn.op)
        txn.done.set()

    def _options(self, kind: str, sub: int) -> list[Any]:
        running = [s for s in self.slots if self.running(s) and not s.leaving]
        if kind == "deliver":
            return sorted(key for key, queue in self.links.items() if queue)
        if kind == "deliver-all":
            counts: dict[MemberId, int] = {}
            for (_src, dst), queue in self.links.items():
                counts[dst] = counts.get(dst, 0) + len(queue)
            return sorted(dst for dst, count in counts.items() if count >= 2)
        if kind == "transaction":
            return list(self.transactions)
        if kind == "broadcast":
            return [s for s in self.slots if self.ready(s)]
        if kind == "confirm":
            return [s for s in self.slots if self.ready(s) and not s.confirming]
        if kind in ("kill", "leave"):
            return running if len(running) >= 2 else []
        if kind == "join":
            return [None] if self.joins_left > 0 else []
        assert kind == "tick"
        if trio.lowlevel.current_statistics().seconds_to_next_deadline < math.inf:
            return [None]
        return []

    async def step(self, value: int) -> bool:
        """Decode and run one step; False if nothing at all can happen."""
        roll, sub = value % 100, value // 100
        start = 0
        for i, (_kind, share) in enumerate(KINDS):
            if roll < share:
                start = i
                break
            roll -= share
        for offset in range(len(KINDS)):
            kind = KINDS[(start + offset) % len(KINDS)][0]
            options = self._options(kind, sub)
            if options:
                await self._run_step(kind, options[sub % len(options)], sub)
                return True
        return False

    async def _run_step(self, kind: str, option: Any, sub: int) -> None:
        if kind == "deliver":
            src, dst = option
            item = self.links[(src, dst)][0]
            self._log(f"deliver {self.name(src)}->{self.name(dst)}: {self.describe(item)}")
            self.deliver(src, dst)
        elif kind == "deliver-all":
            dst = option
            keys = sorted(key for key in self.links if key[1] == dst)
            items = [
                f"{self.name(key[0])}: {self.describe(item)}"
                for key in keys
                for item in self.links[key]
            ]
            self._log(f"deliver all to {self.name(dst)} at once: {', '.join(items)}")
            for key in keys:
                while key in self.links:
                    self.deliver(*key)
        elif kind == "transaction":
            txn = option
            self._log(f"transaction of {self.name(txn.member)}: {_describe_op(txn.op, self)}")
            self.run_transaction(txn)
        elif kind == "broadcast":
            slot = option
            count = 1 + sub % 3
            first = slot.sent + 1
            self._log(f"broadcast {count} from {slot.label}: {first}..{first + count - 1}")
            for _ in range(count):
                slot.sent += 1
                slot.actor.offer((slot.index, slot.sent), 0)
        elif kind == "confirm":
            slot = option
            slot.sent += 1
            record = ConfirmRecord(slot, (slot.index, slot.sent))
            self.confirms.append(record)
            self._log(f"confirmed broadcast from {slot.label}: {slot.sent}")
            slot.confirming = True
            assert self._nursery is not None
            self._nursery.start_soon(self._confirm, record)
        elif kind == "kill":
            slot = option
            commit = bool(sub & 1)
            txn = next((t for t in self.transactions if t.member == slot.id), None)
            if commit and txn is not None:
                self._log(
                    f"kill {slot.label} after its transaction commits: {_describe_op(txn.op, self)}"
                )
                self.transactions.remove(txn)
                self.apply(txn.op)
            else:
                self._log(f"kill {slot.label}")
            slot.killed = True
            cell = self.node.cell(slot.id)
            assert cell is not None
            cell.kill()
        elif kind == "join":
            self.joins_left -= 1
            slot = await self.start_member()
            self._log(f"join {slot.label}")
        elif kind == "leave":
            slot = option
            slot.leaving = True
            self._log(f"leave {slot.label}")
            cell = self.node.cell(slot.id)
            assert cell is not None
            cell.request_stop("normal")
        else:
            self._log("tick")
            self.clock.jump(TICK)

    async def _confirm(self, record: ConfirmRecord) -> None:
        member = record.slot.id
        assert member is not None
        try:
            reply = await self.node.call(member, _ConfirmedBroadcast(record.msg), timeout=math.inf)
            raise_if_shutting_down(reply, member)
        except (MemberStopped, ActorError) as exc:
            record.outcome = f"member stopped: {exc}"
        else:
            record.outcome = "ok"
        record.slot.confirming = False

    async def drain(self, *, check: bool) -> bool:
        """Deliver everything, run every transaction, let timers fire: True once quiet."""
        for _ in range(DRAIN_LIMIT):
            if self.links:
                src, dst = min(self.links)
                if check:
                    item = self.links[(src, dst)][0]
                    self._log(
                        f"  deliver {self.name(src)}->{self.name(dst)}: {self.describe(item)}"
                    )
                self.deliver(src, dst)
            elif self.transactions:
                txn = self.transactions[0]
                if check:
                    self._log(
                        f"  transaction of {self.name(txn.member)}: {_describe_op(txn.op, self)}"
                    )
                self.run_transaction(txn)
            else:
                wait = trio.lowlevel.current_statistics().seconds_to_next_deadline
                if wait == math.inf:
                    return True
                if check:
                    self._log(f"  clock +{wait:.3f}")
                self.clock.jump(wait)
            await self.settle()
            if check:
                _checks.check_step(self)
                if self.stopped:
                    return True
        return False

    # -- the run ----------------------------------------------------------------------

    async def main(self, steps: Sequence[int], report: ScheduleReport) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(self.initial):
                await self.start_member()
                if not await self.drain(check=False):
                    self.violation("the initial members did not settle")
            self._log(
                "start: "
                + ", ".join(f"{s.label}={s.id}" for s in self.slots)
                + f"; ring {self._ring()}"
            )
            _checks.check_step(self)
            for value in steps:
                if self.stopped or not await self.step(value):
                    break
                report.used += 1
                await self.settle()
                _checks.check_step(self)
            if not self.stopped:
                self._log("drain")
                if not await self.drain(check=True):
                    self.violation(f"the group did not quiesce within {DRAIN_LIMIT} steps")
            if not self.stopped:
                # A final confirmed broadcast from every survivor carries the
                # newest view round the ring (views refresh only on traffic).
                finals = [s for s in self.slots if self.ready(s) and not s.confirming]
                self._log(f"final confirmed broadcasts from {', '.join(s.label for s in finals)}")
                for slot in finals:
                    await self._run_step("confirm", slot, 0)
                await self.settle()
                if not await self.drain(check=True):
                    self.violation(f"the group did not quiesce within {DRAIN_LIMIT} steps")
            if not self.stopped:
                _checks.check_end(self)
            self.closed = True
            nursery.cancel_scope.cancel()

    def _ring(self) -> str:
        if self.group is None:
            return "none"
        return " ".join(self.name(m.id) + ("(dead)" if m.dead else "") for m in self.group.members)


def _describe_op(op: StoreOp, harness: Harness) -> str:
    name = harness.name
    match op:
        case PruneOrCreate(self_id, _):
            return f"prune or create the group with {name(self_id)}"
        case RecordNewMember(left, new):
            return f"record {name(new)} right of {name(left)}"
        case RecordDead(self_id, member, _):
            return f"record {name(member)} dead (by {name(self_id)})"
        case EraseMembers(self_id, members):
            return f"erase {', '.join(map(name, members))} (by {name(self_id)})"
    raise AssertionError(op)  # pragma: no cover


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def run_schedule(
    steps: Sequence[int],
    *,
    members: int = 3,
    bug: str | None = None,
    joins: int = 2,
    trace: bool = True,
) -> ScheduleReport:
    """Run one schedule (a list of step values in ``0..STEP_MAX``) and check it.

    Deterministic: the same arguments give the same report. The global
    ``random`` module (a joiner's choice of left) is seeded for the run and
    restored after it.
    """
    report = ScheduleReport(list(steps), members, bug)
    harness = Harness(members=members, bug=bug, joins=joins, trace=trace)
    state = random.getstate()
    random.seed(0)
    try:
        trio.run(harness.main, steps, report, clock=harness.clock)
    finally:
        random.setstate(state)
    report.trace = harness.trace or []
    report.violations = harness.violations
    report.deliveries = harness.deliveries
    return report
