"""The member actor: a thin driver of one :class:`~trio_gm.ring.core.RingCore`.

Every rule of the protocol is in :mod:`trio_gm.ring.core`. This actor (a
gen_server2 with a priority mailbox) feeds it what arrives, performs the
effects it decides on and answers those that need an answer:

* ring messages and sends go through the actor node (:class:`Send`);
  monitors are the core's tags mapped to the node's refs;
* store reads and transactions are awaited here, so the mailbox waits
  meanwhile, as gm's member does; a membership check runs beside it;
* callbacks (``joined``, ``members_changed``, ``handle_msg``,
  ``handle_terminate``) run in this actor's task, plain or async, through
  :meth:`MemberActor._invoke` (``handle_msg`` in one loop, :meth:`_deliver`,
  its per-message cost);
* the one timer the core asks for (:meth:`RingCore.next_deadline`) is a
  priority message sent after its delay.

Effects are carried out without a coroutine (:meth:`MemberActor._perform`)
up to the first that must be awaited: a store op, a call, a wait, a cut
send, a callback, or an async ``handle_msg``; the rest then runs as a
coroutine (:meth:`MemberActor._perform_later`). An activity handed to plain
callbacks, the hot path, thus costs no coroutine at all.

Callback results: None to carry on, :class:`Stop` to stop (once this
member's own messages have gone round: RabbitMQ issue 224), or
:class:`Become` to carry on with other callbacks and args (for the rest of
a batch too). ``member.leave()`` awaited in a callback counts as its
returning ``Stop("normal")`` (it can only be awaited inside a coroutine, so
only the results of coroutines are checked for it: the plain path costs
nothing). An exception a callback raises stops the member, noted with the
callback's name and the member's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from types import CoroutineType
from typing import Any, Final

import attrs
import trio

from .._exceptions import ActorError, MemberStopped, StoreUnavailable
from .._ids import MemberId
from .._packed import Packed
from ..actor import (
    Actor,
    ActorContext,
    Down,
    From,
    MonitorRef,
    NoReply,
    Reply,
    StopActor,
    Timeout,
)
from ..store import GroupStore
from .core import (
    BROADCAST_TIMER,
    JOIN_RETRY_DELAY,
    MAX_BUFFER_SIZE,
    MEMBERSHIP_CHECK_INTERVAL,
    AwaitReady,
    Become,
    Callback,
    CallbackDone,
    CallFailed,
    CallLeft,
    CallResult,
    CheckMembership,
    CheckStop,
    ConfirmedBroadcast,
    Deliver,
    Demonitor,
    Idle,
    JoinRequest,
    Leave,
    MembershipChecked,
    Monitor,
    NeighbourDown,
    OrphanedJoin,
    Read,
    Rejoin,
    RingCore,
    Send,
    ShuttingDown,
    Start,
    Stop,
    StopMember,
    StoreFailed,
    StoreResult,
    TakeBroadcasts,
    Tick,
    Transact,
    ValidateMembers,
    Wait,
    down_priority,
)
from .core import (
    Reply as ReplyTo,
)
from .messages import Activity, AddOnRight, Catchup, CheckNeighbours

__all__ = [
    "BROADCAST_TIMER",
    "JOIN_RETRY_DELAY",
    "MAX_BUFFER_SIZE",
    "MEMBERSHIP_CHECK_INTERVAL",
    "Become",
    "ConfirmRequest",
    "GroupInfo",
    "InfoRequest",
    "MemberActor",
    "MemberStatistics",
    "MembersRequest",
    "OrphanedJoin",
    "ReadyRequest",
    "StatisticsRequest",
    "Stop",
    "ValidateMembers",
    "raise_if_shutting_down",
]

log = logging.getLogger("trio_gm.member")


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


# -- the owner's requests (never leave the process) ------------------------------


@attrs.frozen
class ConfirmRequest:
    """``member.confirmed_broadcast(msg)``."""

    msg: Any
    #: ``(msg, its bytes)``, encoded at the owner's call, on a node with a
    #: network side.
    packed: Packed | None = None


@attrs.frozen
class InfoRequest:
    """``member.info()``."""


@attrs.frozen
class MembersRequest:
    """``member.group_members()``."""


@attrs.frozen
class ReadyRequest:
    """Answered once the member holds its first state (``open_member`` waits for it)."""


@attrs.frozen
class StatisticsRequest:
    """``member.statistics()``."""


_NOREPLY: Final = NoReply()
#: Timeout 0: the mailbox going idle flushes the buffer (gm's flush_timeout).
_NOREPLY_THEN_IDLE: Final = NoReply(timeout=0)
_TAKE: Final = TakeBroadcasts()
_TICK: Final = Tick()
_IDLE: Final = Idle()
_LEAVE: Final = Stop("normal")
_RING_MESSAGES: Final = (Activity, Catchup, CheckNeighbours)
#: Effects carried out with no await (besides a ``Send`` that is not cut and
#: a ``Deliver`` to plain callbacks).
_PLAIN_EFFECTS: Final = frozenset(
    {ReplyTo, Monitor, Demonitor, CheckMembership, StopMember, Rejoin}
)


class MemberActor(Actor):
    """One gm member: a :class:`RingCore`, its callbacks, and the I/O it asks for."""

    def __init__(
        self,
        group_name: str,
        callbacks: Any,
        args: Any,
        store: GroupStore,
        *,
        max_in_flight: int,
        max_batch_bytes: int | None = None,
    ) -> None:
        self.group_name = group_name
        self.callbacks = callbacks
        self.args = args
        self.store = store
        self.max_in_flight = max_in_flight
        #: Encoded bytes of messages one activity may carry (None: no network side).
        self.max_batch_bytes = max_batch_bytes
        self.core: RingCore
        self.self_id: MemberId
        self._now: Callable[[], float]
        #: Tasks waiting for room under ``max_in_flight``; woken on room and
        #: when the member ends.
        self.room = trio.lowlevel.ParkingLot()
        #: Tasks parked on ``room`` (kept by them: cheaper to test than the lot).
        self.room_waiters = 0
        self.task: trio.lowlevel.Task | None = None
        #: ``member.leave()`` was awaited in the running callback.
        self.leave_requested = False
        self._refs: dict[int, MonitorRef] = {}
        self._tags: dict[MonitorRef, int] = {}
        #: When the armed timer fires (math.inf: none armed).
        self._timer_due = math.inf

    # -- what the owner's handle reads and does ----------------------------------

    @property
    def in_flight(self) -> int:
        """Own messages handed over, buffered or not yet acknowledged."""
        return self.core.in_flight

    @property
    def shutting_down(self) -> Any:
        """The reason of a deferred stop, or None."""
        return self.core.shutting_down

    @property
    def stop_reason(self) -> Any:
        """Why this member stopped, once it decided to (None otherwise)."""
        return self.core.stop_reason

    @property
    def alive_members(self) -> list[MemberId]:
        return self.core.view.alive

    def offer(self, msg: Any, size_hint: int, packed: Packed | None = None) -> None:
        """Take a broadcast from the owner (same process, never blocks).

        ``packed`` is ``msg`` encoded for the wire: what the ring carries.
        """
        if self.core.offer(msg, msg if packed is None else packed, size_hint):
            self.wake()

    def wake(self) -> None:
        """Tell the member broadcasts were handed to its core (see :meth:`RingCore.offer`)."""
        self.ctx.cast(self.self_id, _TAKE)

    def info(self) -> GroupInfo:
        return GroupInfo(self.group_name, self.callbacks, self.core.view.alive)

    def statistics(self) -> MemberStatistics:
        core = self.core
        state = core.members_state or {}
        return MemberStatistics(
            id=self.self_id,
            group_name=self.group_name,
            view_version=core.view.version,
            ring_size=len(core.view.members),
            pending_acks={m: len(s.pending) for m, s in state.items() if s.pending},
            published=core.pub_count + 1,
            delivered=core.delivered,
            buffered=len(core.buffer),
            in_flight=core.in_flight,
        )

    def ended(self, reason: Any) -> None:
        """The runtime's last word (also after a kill): wake every waiting owner."""
        self.room.unpark_all()

    # -- lifetime ---------------------------------------------------------

    async def init(self, ctx: ActorContext) -> None:
        self.ctx = ctx
        self.self_id = ctx.id
        self.task = trio.lowlevel.current_task()
        # trio.current_time() without its wrappers: read once per event.
        self._now = trio.lowlevel.current_clock().current_time
        core = self.core = RingCore(ctx.id, self.group_name, max_batch_bytes=self.max_batch_bytes)
        stop = await self._drive(Start())
        if stop is not None:
            reason = stop.reason
            if isinstance(reason, BaseException):
                raise reason
            raise MemberStopped(
                f"member {self.self_id} could not join group {self.group_name!r} ({reason!r})"
            )
        if core.shutting_down is not None:
            ctx.send(self.self_id, CheckStop())

    async def terminate(self, reason: Any) -> None:
        core = self.core
        if core.stop_reason is not None:
            gm_reason = core.stop_reason
        elif reason in ("normal", "shutdown"):
            # The owner left the block or was cancelled: that is a leave.
            gm_reason = "normal"
        else:
            gm_reason = reason
        if gm_reason == "normal" and core.waiting is None:
            await self._drive(Leave())
        self.room.unpark_all()
        try:
            result = self.callbacks.handle_terminate(self.args, gm_reason)
            if type(result) is CoroutineType:
                await result
        except Exception as exc:
            if exc is not gm_reason:  # (a crash handle_terminate raises again is noted)
                self._note(exc, "handle_terminate")
            raise

    # -- the mailbox ------------------------------------------------------

    def prioritise_info(self, msg: Any) -> int:
        cls = type(msg)
        if cls is MembershipChecked:
            return 2
        if cls is Tick:
            return 1
        if cls is Down:
            return down_priority(self.core, msg.target)
        return 0

    def handle_cast(self, msg: Any) -> Any:
        cls = type(msg)
        if cls in _RING_MESSAGES or cls is TakeBroadcasts or cls is ValidateMembers:
            return self._after_now(self._drive_now(msg))
        log.warning("member %s discards unexpected cast %r", self.self_id, msg)
        return self._noreply()

    def _after_now(self, stop: StopMember | Coroutine[Any, Any, StopMember | None] | None) -> Any:
        """:meth:`_after`, as a coroutine only if the effects must be awaited."""
        if type(stop) is CoroutineType:
            return self._after_awaiting(stop)
        return self._after(stop)  # type: ignore[arg-type]

    async def _after_awaiting(self, stop: Coroutine[Any, Any, StopMember | None]) -> Any:
        return self._after(await stop)

    def handle_info(self, msg: Any) -> Any:
        cls = type(msg)
        if cls is Tick:
            self._timer_due = math.inf
            return self._after_now(self._drive_now(msg))
        if cls is Timeout:
            return self._after_now(self._drive_now(_IDLE))
        if cls is Down:
            tag = self._tags.get(msg.ref)
            if tag is None:
                return self._noreply()  # a monitor we no longer care about
            return self._after_now(self._drive_now(NeighbourDown(tag, msg.target)))
        if cls is MembershipChecked or cls is CheckStop:
            return self._after_now(self._drive_now(msg))
        # e.g. a late reply: discarded, never a crash (issue 922).
        log.debug("member %s discards unexpected message %r", self.self_id, msg)
        return self._noreply()

    def handle_call(self, request: Any, from_: From) -> Any:
        cls = type(request)
        if from_.node != self.self_id.node and cls is not AddOnRight:
            # Only a join crosses nodes: the owner's requests come from
            # this process, and answering another node's "info" would
            # try to send the callbacks object (or crash on a typo).
            log.warning(
                "member %s ignores a call %r from node %s", self.self_id, request, from_.node
            )
            return self._noreply()
        if cls is ConfirmRequest:
            wire = request.msg if request.packed is None else request.packed
            return self._after_now(self._drive_now(ConfirmedBroadcast(request.msg, wire, from_)))
        if cls is AddOnRight:
            return self._after_now(self._drive_now(JoinRequest(request.new_member, from_)))
        if cls is ReadyRequest:
            return self._after_now(self._drive_now(AwaitReady(from_)))
        if cls is InfoRequest:
            return self._reply(self.info())
        if cls is MembersRequest:
            return self._reply(self.core.view.alive)
        if cls is StatisticsRequest:
            return self._reply(self.statistics())
        log.warning("member %s ignores an unknown call %r", self.self_id, request)
        return self._noreply()

    def _after(self, stop: StopMember | None) -> Any:
        """A handler's result once the core's effects are carried out."""
        if stop is not None:
            return StopActor(stop.reason)
        if self.core.buffer:
            self._arm_timer()
            return _NOREPLY_THEN_IDLE
        return _NOREPLY

    def _noreply(self) -> NoReply:
        if self.core.buffer:
            self._arm_timer()
            return _NOREPLY_THEN_IDLE
        return _NOREPLY

    def _reply(self, value: Any) -> Reply:
        if self.core.buffer:
            self._arm_timer()
            return Reply(value, timeout=0)
        return Reply(value)

    def _arm_timer(self) -> None:
        due = self.core.next_deadline()
        if due < self._timer_due:
            self._timer_due = due
            self.ctx.send_after(max(0.0, due - trio.current_time()), _TICK)

    # -- effects -------------------------------------------------------------

    async def _drive(self, event: Any) -> StopMember | None:
        """Hand ``event`` to the core, then carry out its effects, answering
        those that need it, until none are left (:meth:`_drive_now`, awaited)."""
        result = self._drive_now(event)
        if type(result) is CoroutineType:
            return await result  # type: ignore[no-any-return]
        return result  # type: ignore[return-value]

    def _drive_now(self, event: Any) -> StopMember | Coroutine[Any, Any, StopMember | None] | None:
        """:meth:`_drive` without a coroutine while nothing must be awaited.

        The hot path (an activity: sends, then a delivery to plain
        callbacks) runs here to the end. At the first effect that must be
        awaited, the rest is returned as a coroutine for the caller to await.
        """
        core = self.core
        now = self._now()
        core.handle(event, now)
        return self._perform(core.effects(), now)

    def _perform(
        self, effects: list[Any], now: float
    ) -> StopMember | Coroutine[Any, Any, StopMember | None] | None:
        """Carry out ``effects`` and what their answers bring, up to the
        first that must be awaited (then: a coroutine doing the rest).

        Answers that come at once (deliveries, callbacks) take the time of
        the event; those that waited (the store, calls, timers) read the clock.
        """
        core, ctx = self.core, self.ctx
        stop: StopMember | None = None
        effect: Any  # dispatched on its exact class, the cheapest test
        while effects:
            # Only an answer fed back (always to the last effect) makes more.
            answered = False
            for i, effect in enumerate(effects):
                cls = type(effect)
                if cls is Send and not effect.cut:
                    ctx.cast(effect.to, effect.msg)
                elif cls is Deliver:
                    delivered = self._deliver(effect)
                    if not isinstance(delivered, tuple):
                        return self._perform_later(effects[i:], stop, now, delivered)
                    core.handle_delivered(delivered[0], delivered[1], now)
                    answered = True
                elif cls is ReplyTo:
                    ctx.reply(effect.to, effect.value)
                elif cls is Monitor:
                    ref = ctx.monitor(effect.target)
                    self._refs[effect.tag] = ref
                    self._tags[ref] = effect.tag
                elif cls is Demonitor:
                    ref = self._refs.pop(effect.tag)
                    del self._tags[ref]
                    ctx.demonitor(ref)
                elif cls is CheckMembership:
                    ctx.nursery.start_soon(self._check_membership)
                elif cls is StopMember:
                    stop = effect
                elif cls is Rejoin:
                    raise effect.error
                else:
                    return self._perform_later(effects[i:], stop, now, None)
            effects = core.effects() if answered else []
        if self.room_waiters and core.in_flight < self.max_in_flight:
            self.room.unpark_all()
        return stop

    async def _perform_later(
        self,
        effects: list[Any],
        stop: StopMember | None,
        now: float,
        delivering: Coroutine[Any, Any, tuple[int, Stop | None]] | None,
    ) -> StopMember | None:
        """:meth:`_perform` from ``effects[0]``, which must be awaited: a
        delivery under way (``delivering``: what is left of it) or another."""
        core, ctx = self.core, self.ctx
        effect: Any
        for effect in effects:
            cls = type(effect)
            if cls is Deliver:
                if delivering is None:
                    delivered = self._deliver(effect)
                    if isinstance(delivered, tuple):
                        core.handle_delivered(delivered[0], delivered[1], now)
                        continue
                    delivering = delivered
                count, stopped = await delivering
                core.handle_delivered(count, stopped, now)
            elif cls is Send:
                ctx.cast(effect.to, effect.msg)
                if effect.cut:
                    # Let the connections run (heartbeats among them)
                    # between two large frames; shielded, as a leave
                    # takes its broadcasts here too.
                    await trio.lowlevel.cancel_shielded_checkpoint()
            elif cls is Transact or cls is Read:
                core.handle(await self._store_op(effect), trio.current_time())
            elif cls is Callback:
                result = await self._invoke(
                    effect.name, getattr(self.callbacks, effect.name), *effect.arguments
                )
                core.handle(CallbackDone(result), now)
            elif cls is CallLeft:
                try:
                    reply = await ctx.call(effect.to, effect.request, timeout=math.inf)
                except ActorError as exc:
                    core.handle(CallFailed(exc), trio.current_time())
                else:
                    core.handle(CallResult(reply), trio.current_time())
            elif cls is Wait:
                await trio.sleep_until(effect.deadline)
                core.handle(_TICK, trio.current_time())
            elif cls is StopMember:
                stop = effect
            elif cls in _PLAIN_EFFECTS:  # one that needs no await: as _perform does it
                self._perform([effect], now)
            else:  # pragma: no cover - every effect is listed above
                raise AssertionError(f"unknown effect {effect!r}")
        # What the answers brought (an answer is always to the last effect).
        more = self._perform(core.effects(), now)
        if type(more) is CoroutineType:
            more = await more
        return stop if more is None else more  # type: ignore[return-value]

    async def _store_op(self, effect: Transact | Read) -> StoreResult | StoreFailed:
        op = effect.op if type(effect) is Transact else effect
        try:
            if type(effect) is Transact:
                return StoreResult(op, await self.store.transact(self.group_name, effect.op))
            return StoreResult(op, await self.store.read_group(self.group_name))
        except StoreUnavailable as exc:
            return StoreFailed(op, exc)

    async def _check_membership(self) -> None:
        """Read the stored ring beside the ring's own work; post what was found.

        Delivery needs no store, so the ring never waits for this read: while
        the store is away the read retries (for up to the store's
        ``outage_timeout``) and activities go on being handled.
        """
        outcome: Any
        try:
            outcome = await self.store.read_group(self.group_name)
        except StoreUnavailable as exc:
            outcome = exc
        self.ctx.send(self.self_id, MembershipChecked(outcome))

    # -- callbacks --------------------------------------------------------

    def _deliver(
        self, effect: Deliver
    ) -> tuple[int, Stop | None] | Coroutine[Any, Any, tuple[int, Stop | None]]:
        """Call ``handle_msg`` for each publication; a Stop ends the batch.

        Returns how many were delivered, and the Stop; or, once an async
        ``handle_msg`` returns a coroutine, a coroutine that awaits it and
        delivers the rest (:meth:`_deliver_rest`).

        This loop is the per-message cost of a member: keep it to the call.
        """
        handle_msg, args = self.callbacks.handle_msg, self.args
        # With a network side publications are (value, bytes) pairs, or
        # plain values (never tuples: trio_gm._packed).
        unwrap = effect.unwrap
        count = 0
        try:
            for at, entry in enumerate(effect.entries):
                pubs = entry.pubs
                sender = entry.publisher
                for index, msg in enumerate(pubs):
                    if unwrap and type(msg) is tuple:
                        msg = msg[0]
                    result = handle_msg(args, sender, msg)
                    if result is None:
                        continue
                    if type(result) is CoroutineType:
                        return self._deliver_rest(effect, count, at, index, result)
                    stop = self._result("handle_msg", result)
                    if stop is not None:
                        return count + index + 1, stop
                    handle_msg, args = self.callbacks.handle_msg, self.args
                count += len(pubs)
        except Exception as exc:
            self._note(exc, "handle_msg")
            raise
        return count, None

    async def _deliver_rest(
        self,
        effect: Deliver,
        count: int,
        at: int,
        index: int,
        pending: Coroutine[Any, Any, Any],
    ) -> tuple[int, Stop | None]:
        """:meth:`_deliver` on from publication ``index`` of entry ``at``,
        whose ``handle_msg`` returned ``pending`` (``count``: the
        publications of the entries before it)."""
        entries, unwrap = effect.entries, effect.unwrap
        try:
            result = await pending
            while True:
                # ``result``: what publication ``index`` of entry ``at`` returned.
                if result is not None or self.leave_requested:
                    stop = self._result("handle_msg", result)
                    if stop is not None:
                        return count + index + 1, stop
                index += 1
                while index >= len(entries[at].pubs):
                    count += len(entries[at].pubs)
                    at, index = at + 1, 0
                    if at == len(entries):
                        return count, None
                msg = entries[at].pubs[index]
                if unwrap and type(msg) is tuple:
                    msg = msg[0]
                result = self.callbacks.handle_msg(self.args, entries[at].publisher, msg)
                if type(result) is CoroutineType:
                    result = await result
        except Exception as exc:
            self._note(exc, "handle_msg")
            raise

    async def _invoke(self, name: str, function: Any, *arguments: Any) -> Stop | None:
        """Call a callback, plain or async, and read its result."""
        try:
            result = function(self.args, *arguments)
            if type(result) is CoroutineType:
                result = await result
            return self._result(name, result)
        except Exception as exc:
            self._note(exc, name)
            raise

    def _note(self, exc: BaseException, name: str) -> None:
        """Name the callback ``exc`` came out of, and its member (it stops it)."""
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


def raise_if_shutting_down(reply: Any, member: MemberId) -> Any:
    if isinstance(reply, ShuttingDown):
        raise MemberStopped(
            f"member {member} is shutting down ({reply.reason!r}): the confirmed "
            "broadcast was not sent"
        )
    return reply
