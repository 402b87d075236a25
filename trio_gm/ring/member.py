"""The member actor: drives the ring protocol for one member of one group.

This is gm.erl's gen_server: it receives ring messages, DOWNs of its
neighbours, and its owner's requests; it calls the pure functions of
``view`` and ``members`` to decide what they mean, and does the I/O they
imply through its :class:`~trio_gm.ring.io.RingIO` seam. Handlers read as
gm's do, with the fixes RabbitMQ made later (see ``GM_LATER.md`` of the
project); each fix is named where it is made.

Callbacks (``joined``, ``members_changed``, ``handle_msg``,
``handle_terminate``) run inside this actor's task, in order, and may be
plain or async. Their results: None to carry on, :class:`Stop` to stop (once
this member's own messages have gone round: RabbitMQ issue 224), or
:class:`Become` to carry on with other callbacks and args (for the rest of a
batch too). ``member.leave()`` awaited in a callback counts as its returning
``Stop("normal")`` (it can only be awaited inside a coroutine, so only the
results of coroutines are checked for it: the plain path costs nothing).
An exception a callback raises stops the member, noted with the callback's
name and the member's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections import deque
from types import CoroutineType
from typing import Any, Final

import attrs
import trio

from .._exceptions import ActorError, MemberStopped, StoreUnavailable
from .._ids import MemberId
from .._packed import PLAIN_BOUND, Packed
from ..actor import (
    Actor,
    ActorContext,
    Down,
    From,
    MonitorRef,
    NoReply,
    Reply,
    Timeout,
    TimerRef,
)
from ..actor import Stop as ActorStop
from ..store import Group, GroupStore, LostMembership
from .io import (
    ActorRingIO,
    EraseMembers,
    PruneOrCreate,
    RecordDead,
    RecordNewMember,
    RingIO,
)
from .members import (
    MembersState,
    build_members_state,
    calculate_activity,
    catchup_entries,
    erasable_aliases,
    has_pending,
    prepare_snapshot,
    remove_erased_members,
    split_entries,
    state_for,
)
from .messages import (
    Activity,
    ActivityEntry,
    AddOnRight,
    Catchup,
    CheckNeighbours,
    NotReady,
)
from .view import View, births_and_deaths, group_to_view

log = logging.getLogger("trio_gm.member")

#: Seconds a broadcast may wait in the buffer under constant load (gm's 25 ms).
BROADCAST_TIMER: Final = 0.025
#: Flush at once when the size hints of buffered messages pass this (gm's 100 MB).
MAX_BUFFER_SIZE: Final = 100_000_000
#: How often, at most, an activity triggers a check that this member is still
#: in the stored ring (RabbitMQ issue 714; gm checked on every activity, a
#: store read each time). A DOWN and a view refresh always check.
MEMBERSHIP_CHECK_INTERVAL = 0.25
#: Pause before asking again when the chosen left answers ``NotReady``.
JOIN_RETRY_DELAY: Final = 0.005


# -- callback results ----------------------------------------------------------


@attrs.frozen
class Stop:
    """A callback's result: stop this member with ``reason``."""

    reason: Any


@attrs.frozen
class Become:
    """A callback's result: carry on with ``callbacks`` called with ``args``."""

    callbacks: Any
    args: Any


@attrs.frozen
class GroupInfo:
    """What ``member.info()`` returns."""

    group_name: str
    callbacks: Any
    #: The alive members, as this member's view has them.
    members: list[MemberId]


@attrs.frozen
class MemberStatistics:
    """A snapshot of one member."""

    id: MemberId
    group_name: str
    view_version: int
    ring_size: int
    #: Unacknowledged publications this member holds, per publisher.
    pending_acks: dict[MemberId, int]
    published: int
    delivered: int
    buffered: int
    #: This member's own messages buffered or not yet acknowledged.
    in_flight: int


# -- requests from the owner (never leave the process) -------------------------


@attrs.frozen
class _ConfirmedBroadcast:
    msg: Any
    #: ``(msg, its bytes)``, encoded at the owner's call, on a node with a
    #: network side.
    packed: Packed | None = None


class _Request:
    """Requests without arguments."""

    INFO: Final = "info"
    GROUP_MEMBERS: Final = "group_members"
    AWAIT_READY: Final = "await_ready"
    STATISTICS: Final = "statistics"


@attrs.frozen
class _ValidateMembers:
    members: tuple[MemberId, ...]


@attrs.frozen
class _ShuttingDown:
    """Reply to a confirmed broadcast while a deferred stop is pending."""

    reason: Any


_FLUSH: Final = "flush"
_NOREPLY: Final = NoReply()
_NOREPLY_THEN_FLUSH: Final = NoReply(timeout=0)
#: Cast to self when the owner's first broadcast lands in an empty ``incoming``.
_BROADCASTS: Final = "broadcasts"
_CHECK_STOP: Final = "check-stop"
#: What ``member.leave()`` from a callback stands for.
_LEAVE: Final = Stop("normal")


@attrs.frozen
class _MembershipChecked:
    """The outcome of a membership check run beside the ring (see ``_on_activity``)."""

    outcome: Group | StoreUnavailable | None


class OrphanedJoin(Exception):
    """A joiner's left recorded it and died before handing over its state.

    The joiner has recorded itself dead; ``open_member`` joins again with a
    new member id. Never escapes ``open_member``.
    """


class _StopMember(Exception):
    """Unwinds a handler: the member stops with ``reason``."""

    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason


def _lost(result: Group | LostMembership) -> Group:
    """A store result, or stop with ``shutdown`` (RabbitMQ issues 714, 950, 953)."""
    if isinstance(result, LostMembership):
        log.info("member stops: %s", result.reason)
        raise _StopMember("shutdown")
    return result


class MemberActor(Actor):
    """One gm member: a ring position, its state, and its callbacks."""

    def __init__(
        self,
        group_name: str,
        callbacks: Any,
        args: Any,
        store: GroupStore,
        *,
        max_in_flight: int,
        max_batch_bytes: int | None = None,
        io_factory: Any = None,
    ) -> None:
        self.group_name = group_name
        self.callbacks = callbacks
        self.args = args
        self.store = store
        self.max_in_flight = max_in_flight
        #: Encoded bytes of messages one activity may carry. None means no
        #: network side: no bound, and messages travel as they are; else
        #: they travel as ``(value, bytes)`` pairs or plain values
        #: (``trio_gm._packed``).
        self.max_batch_bytes = max_batch_bytes
        self._io_factory = io_factory
        self.io: RingIO
        self.self_id: MemberId
        self.view: View
        self.left: tuple[MemberId, MonitorRef | None]
        self.right: tuple[MemberId, MonitorRef | None]
        self.members_state: MembersState | None = None
        self.pub_count = -1
        self.confirms: deque[tuple[int, From]] = deque()
        self.buffer: list[Any] = []
        #: Size hints of the buffered messages.
        self.buffer_size = 0
        #: Encoded bytes of the buffered messages (with ``max_batch_bytes``).
        self.buffer_bytes = 0
        self.broadcast_timer: TimerRef | None = None
        #: The reason of a deferred ``Stop`` (RabbitMQ issue 224).
        self.shutting_down: Any = None
        #: Why this member stopped, once it decided to.
        self.stop_reason: Any = None
        self.ready_waiters: list[From] = []
        #: The member that recorded our join: our first state comes from it.
        self.join_left: MemberId | None = None
        #: Ring messages that came before our first state, held until it.
        self.held: list[Activity | Catchup | CheckNeighbours] = []
        self.delivered = 0
        #: When an activity next checks the stored ring (join just read it).
        self._next_membership_check = math.inf
        #: A membership check is running beside the ring.
        self._checking_membership = False
        #: Broadcasts the owner handed over, not yet handled here. Handing
        #: them over through a list, with one wake-up message per batch,
        #: keeps a broadcast down to a list append.
        #: Each is ``(msg, wire, size_hint)``: ``wire`` is what the ring
        #: carries: on a node with a network side what ``Codec.pack`` made
        #: of ``msg`` (its :data:`~trio_gm._packed.Packed` pair, or ``msg``
        #: itself if plain), else ``msg`` itself.
        self.incoming: list[tuple[Any, Any, int]] = []
        #: Number of this member's last publication acknowledged (or dropped
        #: because it was left alone): everything after it is in flight.
        self.acked_through = -1
        #: Set (and replaced) whenever room appears under ``max_in_flight``.
        self.room = trio.Event()
        self.task: trio.lowlevel.Task | None = None
        #: ``member.leave()`` was awaited in the running callback.
        self.leave_requested = False

    # -- state the owner's handle reads ---------------------------------

    @property
    def in_flight(self) -> int:
        """Own messages handed over, buffered or not yet acknowledged."""
        return len(self.incoming) + self.pub_count - self.acked_through

    def offer(self, msg: Any, size_hint: int, packed: Packed | None = None) -> None:
        """Take a broadcast from the owner (same process, never blocks).

        ``packed`` is ``msg`` encoded for the wire: what the ring carries.
        """
        incoming = self.incoming
        incoming.append((msg, msg if packed is None else packed, size_hint))
        if len(incoming) == 1:
            self.ctx.cast(self.self_id, _BROADCASTS)

    def _all_acked(self) -> None:
        """Left alone: nothing of ours can be in flight any more."""
        self.acked_through = self.pub_count
        self._signal_room()

    def _signal_room(self) -> None:
        if self.in_flight < self.max_in_flight and not self.room.is_set():
            self.room.set()

    # -- callbacks --------------------------------------------------------

    async def _callback(self, name: str, *arguments: Any) -> Stop | None:
        try:
            result = getattr(self.callbacks, name)(self.args, *arguments)
            if type(result) is CoroutineType:
                result = await result
            return self._result(name, result)
        except Exception as exc:
            self._note(exc, name)
            raise

    def _note(self, exc: BaseException, name: str) -> None:
        """Name the callback ``exc`` came out of, and its member (it stops it)."""
        if type(exc) is not _StopMember:
            exc.add_note(
                f"raised by {type(self.callbacks).__name__}.{name}, a callback of member "
                f"{self.self_id} of group {self.group_name!r}"
            )

    def _result(self, name: str, result: Any) -> Stop | None:
        if self.leave_requested:
            # member.leave() from this callback: Stop("normal"), unless it
            # returned a Stop of its own.
            self.leave_requested = False
            return self._result(name, result) or _LEAVE
        if result is None:
            return None
        if type(result) is Become:
            self.callbacks, self.args = result.callbacks, result.args
            return None
        if type(result) is Stop:
            return result
        raise TypeError(
            f"callback {name} of {type(self.callbacks).__name__} returned {result!r}; "
            "expected None, trio_gm.Stop(reason) or trio_gm.Become(callbacks, args)"
        )

    def _check(self, result: Stop | None) -> None:
        """Act on a callback's Stop: at once, or once nothing is in flight."""
        if result is not None and self.shutting_down is None:
            self.shutting_down = result.reason
        if self.shutting_down is not None and not self._has_pending():
            raise _StopMember(self.shutting_down)

    def _has_pending(self) -> bool:
        return bool(self.buffer) or has_pending(self.members_state)

    # -- lifetime ---------------------------------------------------------

    async def init(self, ctx: ActorContext) -> None:
        self.ctx = ctx
        self.self_id = ctx.id
        self.task = trio.lowlevel.current_task()
        factory = self._io_factory or ActorRingIO
        self.io = factory(ctx, self.store, self.group_name)
        self.left = (self.self_id, None)
        self.right = (self.self_id, None)
        await self._join()
        self._next_membership_check = trio.current_time() + MEMBERSHIP_CHECK_INTERVAL

    async def _join(self) -> None:
        """Join the ring to the right of a random alive member (Lemma 2)."""
        io, me = self.io, self.self_id
        group = await io.read_group()
        # gm's make_member: never recreate the group below a version seen.
        min_version = group.version if group is not None else 0
        while True:
            if group is None or not group.alive:
                # Also when every recorded member is dead: prune and recreate
                # (the reference copy crashed here, RabbitMQ bug 26173).
                group = _lost(await io.transact(PruneOrCreate(me, min_version)))
            if group.is_alive(me):
                break
            alive = group.alive
            left = random.choice(alive)
            try:
                reply = await io.call(left, AddOnRight(me))
            except ActorError:
                # The chosen left is dead: record it and try again.
                result = await io.transact(RecordDead(me, left, verify=False))
                group = None if isinstance(result, LostMembership) else result
                if group is not None and group.is_alive(me):
                    # It recorded us and died before handing over its state
                    # (Lemma 2's window; the schedule explorer found it).
                    # Nobody else can give us that state, and a later left's
                    # is not it: leave as a dead member with nothing in
                    # flight and join again under a new id.
                    await io.transact(RecordDead(me, me, verify=False))
                    raise OrphanedJoin(
                        f"{me} was recorded in group {self.group_name!r} by {left}, "
                        "which died before handing over its state"
                    ) from None
                continue
            if isinstance(reply, NotReady):
                await trio.sleep(JOIN_RETRY_DELAY)
                group = await io.read_group()
                continue
            group = reply
            assert isinstance(group, Group)
            self.join_left = left
            break
        self.view = group_to_view(group)
        if self.view.alive == [me]:
            self._become_ready({})
        self._check_neighbours()
        joined = await self._callback("joined", sorted(self.view.all_known()))
        if joined is not None:
            self.shutting_down = joined.reason
            self.ctx.send(me, _CHECK_STOP)

    def _become_ready(self, members_state: MembersState) -> None:
        self.members_state = members_state
        for from_ in self.ready_waiters:
            self.ctx.reply(from_, True)
        self.ready_waiters.clear()

    async def terminate(self, reason: Any) -> None:
        if self.stop_reason is not None:
            gm_reason = self.stop_reason
        elif reason in ("normal", "shutdown"):
            # The owner left the block or was cancelled: that is a leave.
            gm_reason = "normal"
        else:
            gm_reason = reason
        if gm_reason == "normal" and self.members_state is not None:
            # Broadcasts accepted before the leave still go out.
            with contextlib.suppress(_StopMember):
                await self._take_broadcasts()
            self._flush()
        self.room.set()
        try:
            result = self.callbacks.handle_terminate(self.args, gm_reason)
            if type(result) is CoroutineType:
                await result
        except Exception as exc:
            if exc is not gm_reason:  # (a crash handle_terminate raises again is noted)
                self._note(exc, "handle_terminate")
            raise

    def _store_lost(self, exc: StoreUnavailable) -> ActorStop:
        log.info("member %s of group %r stops: %s", self.self_id, self.group_name, exc)
        return self._stop(exc)

    def _stop(self, reason: Any) -> ActorStop:
        self.stop_reason = reason
        for _pub, from_ in self.confirms:
            self.ctx.reply(from_, _ShuttingDown(reason))
        self.confirms.clear()
        return ActorStop(reason)

    # -- priorities (RabbitMQ bugs 24944 and the lost last activity) ------

    def prioritise_info(self, msg: Any) -> int:
        if msg is _FLUSH:
            return 1
        if type(msg) is Down:
            if self.members_state is None:
                return 0  # must not overtake the first catch-up
            if msg.target == self.left[0]:
                # Must not overtake the left's last activity. By target, not
                # by ref: in a ring of two the left is also the right, and
                # the right's DOWN would overtake it.
                return 0
            return 1  # do not keep sending into a dead right
        return 0

    # -- the mailbox ------------------------------------------------------

    async def handle_cast(self, msg: Any) -> Any:
        try:
            cls = type(msg)
            if cls is Activity or cls is Catchup or cls is CheckNeighbours:
                await self._on_ring_message(msg)
            elif msg is _BROADCASTS:
                await self._take_broadcasts()
            elif cls is _ValidateMembers:
                births, deaths = births_and_deaths(msg.members, self.view.all_known())
                if births or deaths:
                    self._check(await self._callback("members_changed", births, deaths))
            else:
                log.warning("member %s discards unexpected cast %r", self.self_id, msg)
            self._check(None)
        except _StopMember as stop:
            return self._stop(stop.reason)
        except StoreUnavailable as exc:
            return self._store_lost(exc)
        return self._noreply()

    async def handle_info(self, msg: Any) -> Any:
        try:
            if msg is _FLUSH:
                self.broadcast_timer = None
                self._flush()
            elif type(msg) is Timeout:
                self._flush()
            elif type(msg) is Down:
                await self._on_down(msg)
            elif type(msg) is _MembershipChecked:
                self._on_membership_checked(msg)
            elif msg is not _CHECK_STOP:
                # e.g. a late reply: discarded, never a crash (issue 922).
                log.debug("member %s discards unexpected message %r", self.self_id, msg)
            self._check(None)
        except _StopMember as stop:
            return self._stop(stop.reason)
        except StoreUnavailable as exc:
            return self._store_lost(exc)
        return self._noreply()

    async def handle_call(self, request: Any, from_: From) -> Any:
        try:
            cls = type(request)
            if from_.node != self.self_id.node and cls is not AddOnRight:
                # Only a join crosses nodes: the owner's requests come from
                # this process, and answering another node's "info" would
                # try to send the callbacks object (or crash on a typo).
                log.warning(
                    "member %s ignores a call %r from node %s", self.self_id, request, from_.node
                )
                return self._noreply()
            if cls is _ConfirmedBroadcast:
                return await self._on_confirmed_broadcast(request, from_)
            if cls is AddOnRight:
                return await self._on_add_on_right(request.new_member, from_)
            if request == _Request.AWAIT_READY:
                if self.members_state is not None:
                    return Reply(True)
                self.ready_waiters.append(from_)
                return NoReply()
            if request == _Request.INFO:
                return self._reply(GroupInfo(self.group_name, self.callbacks, self.view.alive))
            if request == _Request.GROUP_MEMBERS:
                return self._reply(self.view.alive)
            if request == _Request.STATISTICS:
                return self._reply(self._statistics())
            log.warning("member %s ignores an unknown call %r", self.self_id, request)
            return self._noreply()
        except _StopMember as stop:
            return self._stop(stop.reason)
        except StoreUnavailable as exc:
            return self._store_lost(exc)

    def _noreply(self) -> NoReply:
        # Timeout 0: flush once the mailbox is empty (gm's flush_timeout).
        if self.buffer:
            self._ensure_broadcast_timer()
            return _NOREPLY_THEN_FLUSH
        return _NOREPLY

    def _reply(self, value: Any) -> Reply:
        if self.buffer:
            self._ensure_broadcast_timer()
            return Reply(value, timeout=0)
        return Reply(value)

    # -- broadcasting -----------------------------------------------------

    async def _take_broadcasts(self) -> None:
        """Handle every broadcast handed over so far, in order.

        Each is delivered here (``handle_msg`` with this member as sender)
        and buffered for the next flush; alone, delivery is all there is.
        """
        me = self.self_id
        try:
            while self.incoming:
                batch, self.incoming = self.incoming, []
                handle_msg, args = self.callbacks.handle_msg, self.args
                buffer = self.buffer
                alone = self.right[0] == me
                budget = self.max_batch_bytes
                for index, (msg, wire, size_hint) in enumerate(batch):
                    if self.shutting_down is not None:
                        log.warning(
                            "member %s is shutting down (%r): %d broadcasts dropped",
                            me,
                            self.shutting_down,
                            len(batch) - index,
                        )
                        break
                    if not alone:
                        if budget is not None:
                            # Cut batches by encoded bytes: no activity may
                            # exceed the frame budget, whatever the size hints.
                            # (A plain message travels as itself: its bound.)
                            size = PLAIN_BOUND if wire is msg else len(wire[1])
                            if buffer and self.buffer_bytes + size > budget:
                                self._flush()
                                buffer = self.buffer
                                # Let the connections run (heartbeats among
                                # them) between two large frames; shielded, as
                                # a leave takes its broadcasts here too.
                                await trio.lowlevel.cancel_shielded_checkpoint()
                                alone = self.right[0] == me
                            self.buffer_bytes += size
                        self.pub_count += 1
                        buffer.append(wire)
                        if size_hint:
                            self.buffer_size += size_hint
                            if self.buffer_size > MAX_BUFFER_SIZE:
                                self._flush()
                                buffer = self.buffer
                    self.delivered += 1
                    result = handle_msg(args, me, msg)
                    if result is None:
                        continue
                    if type(result) is CoroutineType:
                        result = await result
                        # Other messages may have been handled meanwhile.
                        buffer, alone = self.buffer, self.right[0] == me
                    stop = self._result("handle_msg", result)
                    handle_msg, args = self.callbacks.handle_msg, self.args
                    if stop is not None:
                        # Deferred while our messages are in flight: the rest
                        # of the batch is dropped above.
                        self._check(stop)
        except Exception as exc:
            self._note(exc, "handle_msg")
            raise
        self._signal_room()

    async def _on_confirmed_broadcast(self, request: _ConfirmedBroadcast, from_: From) -> Any:
        msg = request.msg
        await self._take_broadcasts()  # they were handed over first
        if self.shutting_down is not None:
            return self._reply(_ShuttingDown(self.shutting_down))
        if self.right[0] == self.self_id:
            self.delivered += 1
            result = await self._callback("handle_msg", self.self_id, msg)
            self.ctx.reply(from_, True)
            self._check(result)
            return self._noreply()
        # Published as a broadcast is, then flushed at once: the reply waits
        # for its number to come back acknowledged.
        self.incoming.append((msg, msg if request.packed is None else request.packed, 0))
        await self._take_broadcasts()
        self.confirms.append((self.pub_count, from_))
        self._flush()
        return self._noreply()

    def _ensure_broadcast_timer(self) -> None:
        # Unlike gm, a timer is not cancelled when the buffer empties: under
        # load that would start and cancel one per flush. It fires at most
        # every 25 ms and flushes whatever is buffered then (maybe nothing).
        if self.broadcast_timer is None:
            self.broadcast_timer = self.ctx.send_after(BROADCAST_TIMER, _FLUSH)

    def _flush(self) -> None:
        """Send the buffered broadcasts right as one activity."""
        if not self.buffer:
            return
        assert self.members_state is not None
        pubs, self.buffer, self.buffer_size, self.buffer_bytes = self.buffer, [], 0, 0
        first = self.pub_count - len(pubs) + 1
        self._send_right(
            Activity(
                self.view.version,
                self.self_id,
                (ActivityEntry(self.self_id, first=first, pubs=tuple(pubs)),),
            )
        )
        state_for(self.members_state, self.self_id).join_pubs(first, pubs)

    def _send_right(self, msg: Activity | Catchup) -> None:
        right = self.right[0]
        if right != self.self_id:
            self.io.send(right, msg)

    def _confirm_through(self, last: int) -> None:
        confirms = self.confirms
        while confirms and confirms[0][0] <= last:
            self.ctx.reply(confirms.popleft()[1], True)

    # -- ring messages ------------------------------------------------------

    async def _on_ring_message(self, msg: Activity | Catchup | CheckNeighbours) -> None:
        if self.members_state is None:
            # Before our first state only the catch-up of the member that
            # recorded our join counts (Lemma 2: we start with exactly its
            # state), whatever the views say by then: it was sent before the
            # reply to our join, so it is on its way. Everything else is held
            # until then and handled after it, in order: the decision for
            # RabbitMQ bug 26171 (a CheckNeighbours) and PR 10356 (any other
            # message). Dropping them loses a later left's catch-up, and
            # acting on them first (refreshing the view) makes the first
            # catch-up look like a stray (both found by the explorer).
            if type(msg) is Catchup and msg.sender == self.join_left:
                self._send_right(Catchup(self.view.version, self.self_id, msg.state))
                self._become_ready(build_members_state(msg.state))
                held, self.held = self.held, []
                for early in held:
                    await self._on_ring_message(early)
            else:
                self.held.append(msg)
            return
        if msg.version > self.view.version:
            group = await self.io.read_group()
            if group is None or not group.is_alive(self.self_id):
                raise _StopMember("shutdown")
            view = group_to_view(group)
            if self.members_state is not None:
                self.members_state = remove_erased_members(self.members_state, view)
            self._check(await self._change_view(view))
        if type(msg) is Activity:
            await self._on_activity(msg)
        elif type(msg) is Catchup:
            await self._on_catchup(msg)

    async def _on_catchup(self, msg: Catchup) -> None:
        if msg.sender != self.left[0]:
            return  # not from our left (any more): a stray, discarded
        assert self.members_state is not None
        entries = catchup_entries(self.members_state, dict(msg.state), self.self_id, self.view)
        # What a catch-up brings can exceed one frame: it goes right in parts.
        await self._process_activity(entries, split=True)

    async def _on_activity(self, msg: Activity) -> None:
        assert self.members_state is not None
        if msg.sender != self.left[0]:
            return  # only the left's activity counts: anything else is a stray
        if not self._checking_membership:
            now = trio.current_time()
            if now >= self._next_membership_check:
                self._checking_membership = True
                self.ctx.nursery.start_soon(self._check_membership)
        await self._process_activity(msg.entries)

    async def _process_activity(self, entries: Any, *, split: bool = False) -> None:
        assert self.members_state is not None
        out, own_acked = calculate_activity(self.members_state, entries, self.self_id, self.view)
        if own_acked >= 0:
            self.acked_through = own_acked
            self._confirm_through(own_acked)
            self._signal_room()
        if out:
            if split and self.max_batch_bytes is not None:
                # (An activity from the left fits a frame, and what goes on
                # is no larger: only a catch-up's needs cutting.)
                for part in split_entries(out, self.max_batch_bytes):
                    self._send_right(Activity(self.view.version, self.self_id, tuple(part)))
            else:
                self._send_right(Activity(self.view.version, self.self_id, tuple(out)))
        # Deliver before erasing (gm erases first): an erasure can report a
        # publisher of this very batch dead, and nothing may be delivered
        # from a member after its death was reported (found by the explorer).
        try:
            delivered = await self._deliver(out)
        except Exception as exc:
            self._note(exc, "handle_msg")
            raise
        self._check(await self._maybe_erase_aliases(self.view))
        self._check(delivered)

    async def _deliver(self, entries: list[ActivityEntry]) -> Stop | None:
        """Call ``handle_msg`` for each publication; a Stop ends the batch.

        This loop is the per-message cost of a member: keep it to the call.
        """
        handle_msg, args = self.callbacks.handle_msg, self.args
        # With a network side publications are (value, bytes) pairs, or
        # plain values (never tuples: trio_gm._packed).
        packed = self.max_batch_bytes is not None
        for entry in entries:
            pubs = entry.pubs
            if not pubs:
                continue
            sender = entry.publisher
            for index, msg in enumerate(pubs):
                if packed and type(msg) is tuple:
                    msg = msg[0]
                result = handle_msg(args, sender, msg)
                if result is None:
                    continue
                if type(result) is CoroutineType:
                    result = await result
                    if result is None and not self.leave_requested:
                        continue
                stop = self._result("handle_msg", result)
                if stop is not None:
                    self.delivered += index + 1
                    return stop
                handle_msg, args = self.callbacks.handle_msg, self.args
            self.delivered += len(pubs)
        return None

    async def _check_membership(self) -> None:
        """Read the stored ring beside the ring's own work; post what was found.

        Delivery needs no store, so the ring never waits for this read: while
        the store is away the read retries (for up to the store's
        ``outage_timeout``) and activities go on being handled.
        """
        outcome: Group | StoreUnavailable | None
        try:
            outcome = await self.io.read_group()
        except StoreUnavailable as exc:
            outcome = exc
        self.ctx.send(self.self_id, _MembershipChecked(outcome))

    def _on_membership_checked(self, checked: _MembershipChecked) -> None:
        self._checking_membership = False
        self._next_membership_check = trio.current_time() + MEMBERSHIP_CHECK_INTERVAL
        outcome = checked.outcome
        if isinstance(outcome, StoreUnavailable):
            raise outcome
        if outcome is None or not outcome.is_alive(self.self_id):
            raise _StopMember("shutdown")

    # -- joins ----------------------------------------------------------------

    async def _on_add_on_right(self, new_member: MemberId, from_: From) -> Any:
        if self.members_state is None:
            return self._reply(NotReady())
        group = _lost(await self.io.transact(RecordNewMember(self.self_id, new_member)))
        if not group.is_alive(self.self_id):
            raise _StopMember("shutdown")
        view = group_to_view(group)
        self.members_state = remove_erased_members(self.members_state, view)
        # After the commit, never inside the transaction: a retried
        # transaction would send it twice.
        self.io.send(
            new_member,
            Catchup(view.version, self.self_id, prepare_snapshot(self.members_state)),
        )
        result = await self._change_view(view)
        try:
            self._check(result)
        except _StopMember:
            self.ctx.reply(from_, group)  # the joiner is in: answer before stopping
            raise
        return self._reply(group)

    # -- deaths, views, aliases ---------------------------------------------------

    async def _on_down(self, down: Down) -> None:
        if down.ref == self.left[1]:
            member = self.left[0]
        elif down.ref == self.right[1]:
            member = self.right[0]
        else:
            return  # a monitor we no longer care about
        # verify=True: lost membership (RabbitMQ issue 714) is found here.
        group = _lost(await self.io.transact(RecordDead(self.self_id, member, verify=True)))
        view = group_to_view(group)
        if view.alive == [self.self_id]:
            # Alone: nobody else can hold anything in flight. Blank the
            # state and answer confirms *before* erasing aliases, or the
            # erasure waits for ever (RabbitMQ bug 26119).
            self._alone()
            self._check(await self._maybe_erase_aliases(view))
        else:
            self._check(await self._change_view(view))

    async def _maybe_erase_aliases(self, view: View) -> Stop | None:
        assert self.members_state is not None
        if view[self.self_id].aliases:
            erasable = erasable_aliases(self.members_state, self.self_id, view)
            if erasable:
                for member in erasable:
                    self.members_state.pop(member, None)
                group = _lost(await self.io.transact(EraseMembers(self.self_id, tuple(erasable))))
                view = group_to_view(group)
        if view is self.view:
            return None
        return await self._change_view(view)

    async def _change_view(self, view: View) -> Stop | None:
        """Adopt ``view``: report births and deaths, then re-check neighbours.

        Every view change does both (RabbitMQ bug 26084).
        """
        births, deaths = births_and_deaths(self.view.all_known(), view.all_known())
        self.view = view
        result = None
        if births or deaths:
            result = await self._callback("members_changed", births, deaths)
        self._check_neighbours()
        if view.alive == [self.self_id] and (self.members_state or self.confirms):
            # Alone through a view change made by someone else (our DOWNs
            # for the dead were demonitored): nobody is left to acknowledge
            # anything, exactly as after our own DOWN (found by the explorer).
            self._alone()
            erased = await self._maybe_erase_aliases(view)
            result = result or erased
        return result

    def _alone(self) -> None:
        """Blank the state and answer confirms: nobody else can hold anything."""
        self.held.clear()  # from members that are gone: strays
        self.members_state = {}
        self._confirm_through(self.pub_count)
        if self.ready_waiters:
            self._become_ready({})
        self._all_acked()

    def _check_neighbours(self) -> None:
        me = self.view[self.self_id]
        version = self.view.version
        old_right = self.right
        self.left = self._ensure_neighbour(version, self.left, me.left)
        self.right = self._ensure_neighbour(version, self.right, me.right)
        if self.right[0] == self.self_id and self.buffer:
            # Alone: buffered messages were delivered here at broadcast.
            self.buffer, self.buffer_size, self.buffer_bytes = [], 0, 0
            self._all_acked()
        if (
            self.right[0] != old_right[0]
            and self.right[0] != self.self_id
            and self.members_state is not None
        ):
            self.io.send(
                self.right[0],
                Catchup(version, self.self_id, prepare_snapshot(self.members_state)),
            )

    def _ensure_neighbour(
        self,
        version: int,
        current: tuple[MemberId, MonitorRef | None],
        wanted: MemberId,
    ) -> tuple[MemberId, MonitorRef | None]:
        me = self.self_id
        current_id, ref = current
        if current_id == wanted:
            return current
        check = CheckNeighbours(version)
        if current_id != me:
            assert ref is not None
            self.io.demonitor(ref)
            self.io.send(current_id, check)
        if wanted == me:
            return (me, None)
        self.io.send(wanted, check)
        return (wanted, self.io.monitor(wanted))

    # -- introspection ------------------------------------------------------------

    def _statistics(self) -> MemberStatistics:
        state = self.members_state or {}
        return MemberStatistics(
            id=self.self_id,
            group_name=self.group_name,
            view_version=self.view.version,
            ring_size=len(self.view.members),
            pending_acks={m: len(s.pending) for m, s in state.items() if s.pending},
            published=self.pub_count + 1,
            delivered=self.delivered,
            buffered=len(self.buffer),
            in_flight=self.in_flight,
        )


def raise_if_shutting_down(reply: Any, member: MemberId) -> Any:
    if isinstance(reply, _ShuttingDown):
        raise MemberStopped(
            f"member {member} is shutting down ({reply.reason!r}): the confirmed "
            "broadcast was not sent"
        )
    return reply
