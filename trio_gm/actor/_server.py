"""One actor: a trio task draining one mailbox (a port of gen_server2).

The loop is deliberately thin: take the best message, call the callback,
apply what it returned. Everything it knows about priorities is in the
mailbox; everything about ids, calls and monitors is in the node.

Stopping, in every way an actor can stop:

=============================  =======================  ============================
how                            ``terminate`` called?    ``Down`` reason / owner sees
=============================  =======================  ============================
handler returns ``StopActor``  yes, with its reason     that reason; nothing raised
owner's block exits            yes, ``"normal"``        ``"normal"``
``handle.stop(reason)``        yes, with ``reason``     ``reason``
enclosing scope cancelled      yes, ``"shutdown"``      ``"shutdown"``; Cancelled
a handler raises               yes, with the exception  the exception; it propagates
``handle.kill()``              no                       ``"killed"``
=============================  =======================  ============================

``handle.kill()`` from the actor's own task (a handler killing its own
actor) does not return: it raises a private BaseException that unwinds the
handler (its ``finally`` blocks run) and ends the actor there, as an Erlang
process that kills itself; from any other task the actor ends at its next
checkpoint.

``terminate`` runs shielded from cancellation, bounded by
``TERMINATE_TIMEOUT`` seconds, so an actor stopped by a cancelled owner still
gets to clean up and never hangs its owner.
"""

from __future__ import annotations

import contextlib
import math
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .._exceptions import NoSuchActor
from .._ids import ActorId
from ._mailbox import EMPTY, Mailbox
from ._messages import (
    HIBERNATE,
    NO_REPLY,
    TIMEOUT,
    BecomeActor,
    Down,
    From,
    MonitorRef,
    NoReply,
    Reply,
    StopActor,
    TimeoutSpec,
    TimerRef,
)
from ._node import CALL, CAST, DEFAULT_CALL_TIMEOUT, INFO, SYSTEM, ActorNode

if TYPE_CHECKING:
    from collections.abc import Awaitable

#: Seconds ``terminate`` may take when the actor stops because its owner was
#: cancelled; after that it is abandoned.
TERMINATE_TIMEOUT: Final = 5.0

#: Messages handled back to back before the loop yields to other tasks.
_FAIRNESS_BUDGET: Final = 64

_STOP: Final = "stop"


class _Killed(BaseException):
    """Unwinds an actor's task from a ``kill()`` it made of itself."""


class Actor:
    """Base class of actor callbacks; every method is optional to override.

    Handlers may be plain or ``async def`` methods. A handler returns a
    result (``Reply``, ``NoReply``, ``StopActor``, ``BecomeActor``); ``handle_cast``
    and ``handle_info`` may return None, meaning ``NoReply()``.

    To prioritise messages, define ``prioritise_call(request, from_)``,
    ``prioritise_cast(msg)`` or ``prioritise_info(msg)`` returning an int
    (higher first, 0 the default). They are asked as each message leaves the
    inbound queue, so they see the actor's current state.
    """

    prioritise_call: Any = None
    prioritise_cast: Any = None
    prioritise_info: Any = None

    def init(self, ctx: ActorContext) -> Awaitable[None] | None:
        """Called once, in the actor's task, before any message."""
        self.ctx = ctx
        return None

    def handle_call(self, request: Any, from_: From) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not take calls (got {request!r})")

    def handle_cast(self, msg: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not take casts (got {msg!r})")

    def handle_info(self, msg: Any) -> Any:
        # gen_server discards unexpected info messages; so do we.
        return None

    def terminate(self, reason: Any) -> Awaitable[None] | None:
        return None

    def ended(self, reason: Any) -> None:
        """Called last, however the actor ended (a kill too): no awaiting here."""
        return None

    def idle(self) -> Awaitable[None] | None:
        """Called when a handler asked for ``HIBERNATE`` and the mailbox is empty."""
        return None


@attrs.frozen
class ActorStatistics:
    """A snapshot of one actor."""

    id: ActorId
    behaviour: str
    mailbox_length: int
    messages_handled: int
    monitors: int
    timers: int
    alive: bool


class ActorContext:
    """What an actor uses to act on the world: its id and the node's services."""

    __slots__ = ("_cell", "_node", "id")

    def __init__(self, cell: ActorCell) -> None:
        self._cell = cell
        self._node = cell.node
        self.id: ActorId = cell.id

    @property
    def node(self) -> ActorNode:
        return self._node

    @property
    def nursery(self) -> trio.Nursery:
        """A nursery that lives exactly as long as this actor."""
        nursery = self._cell.nursery
        assert nursery is not None
        return nursery

    def cast(self, to: ActorId, msg: Any) -> None:
        self._node.post(to, (CAST, msg, None))

    def send(self, to: ActorId, msg: Any) -> None:
        self._node.post(to, (INFO, msg, None))

    async def call(
        self, to: ActorId, request: Any, *, timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> Any:
        """Call another actor; this actor handles nothing else meanwhile."""
        return await self._node.call(to, request, timeout=timeout)

    def reply(self, from_: From, value: Any) -> None:
        self._node.reply(from_, value)

    def send_after(self, delay: float, msg: Any, *, to: ActorId | None = None) -> TimerRef:
        """Deliver ``msg`` as an info message (to self by default) after ``delay`` seconds."""
        return self._cell.send_after(delay, msg, self.id if to is None else to)

    def cancel_timer(self, ref: TimerRef) -> bool:
        """Cancel a timer; False if it already fired (its message may be queued)."""
        return self._cell.cancel_timer(ref)

    def monitor(self, target: ActorId) -> MonitorRef:
        ref = self._node.monitor(self.id, target)
        self._cell.monitors[ref] = target
        return ref

    def demonitor(self, ref: MonitorRef) -> None:
        """Stop monitoring; a ``Down`` for ``ref`` already queued is dropped too."""
        target = self._cell.monitors.pop(ref, None)
        if target is not None:
            self._node.demonitor(ref, target)

    def statistics(self) -> ActorStatistics:
        return self._cell.statistics()


@attrs.define(eq=False)
class ActorHandle:
    """The owner's handle on a running actor; messages go by its ``id``."""

    node: ActorNode
    id: ActorId

    def cast(self, msg: Any) -> None:
        self.node.cast(self.id, msg)

    def send(self, msg: Any) -> None:
        self.node.send(self.id, msg)

    async def call(self, request: Any, *, timeout: float = DEFAULT_CALL_TIMEOUT) -> Any:
        return await self.node.call(self.id, request, timeout=timeout)

    def stop_nowait(self, reason: Any = "normal") -> None:
        """Ask the actor to stop once it has handled what was sent before."""
        cell = self.node.cell(self.id)
        if cell is not None:
            cell.request_stop(reason)

    async def stop(self, reason: Any = "normal") -> None:
        """Stop the actor (``terminate(reason)``) and wait until it has."""
        cell = self.node.cell(self.id)
        if cell is None:
            await trio.lowlevel.checkpoint()
            return
        cell.request_stop(reason)
        await cell.done.wait()

    def kill(self) -> None:
        """End the actor at once: no ``terminate``, monitors see ``"killed"``."""
        cell = self.node.cell(self.id)
        if cell is not None:
            cell.kill()

    @property
    def alive(self) -> bool:
        return self.node.is_alive(self.id)

    def statistics(self) -> ActorStatistics:
        cell = self.node.cell(self.id)
        if cell is None:
            raise NoSuchActor(f"actor {self.id} has stopped")
        return cell.statistics()


class ActorCell:
    """The runtime side of one actor: mailbox, loop, timers, monitors."""

    def __init__(self, node: ActorNode, actor_id: ActorId, behaviour: Any) -> None:
        self.node = node
        self.id = actor_id
        self.mailbox = Mailbox()
        self.callers: set[int] = set()
        #: Monitors on this actor: ref -> watcher.
        self.watchers: dict[MonitorRef, ActorId] = {}
        #: Monitors this actor holds: ref -> target.
        self.monitors: dict[MonitorRef, ActorId] = {}
        self.timers: dict[TimerRef, trio.CancelScope] = {}
        self.nursery: trio.Nursery | None = None
        #: The task ``run`` runs in.
        self.task: trio.lowlevel.Task | None = None
        self.done = trio.Event()
        self.stopping = False
        self.handled = 0
        self._killed = False
        self._kill_scope = trio.CancelScope()
        self._timeout: TimeoutSpec = None
        self.ctx = ActorContext(self)
        self._set_behaviour(behaviour)

    # -- behaviour --------------------------------------------------------

    def _set_behaviour(self, behaviour: Any) -> None:
        self.behaviour = behaviour
        self._handle_call = getattr(behaviour, "handle_call", None)
        self._handle_cast = getattr(behaviour, "handle_cast", None)
        self._handle_info = getattr(behaviour, "handle_info", None)
        self._p_call = getattr(behaviour, "prioritise_call", None)
        self._p_cast = getattr(behaviour, "prioritise_cast", None)
        self._p_info = getattr(behaviour, "prioritise_info", None)
        if self._p_call is None and self._p_cast is None and self._p_info is None:
            self.mailbox.prioritise = None
        else:
            self.mailbox.prioritise = self._prioritise

    def _prioritise(self, envelope: tuple[int, Any, Any]) -> int:
        kind = envelope[0]
        if kind == CAST:
            return self._p_cast(envelope[1]) if self._p_cast is not None else 0
        if kind == INFO:
            return self._p_info(envelope[1]) if self._p_info is not None else 0
        if kind == CALL:
            return self._p_call(envelope[1], envelope[2]) if self._p_call is not None else 0
        # A stop request keeps its place: what was sent before it is handled.
        return 0

    # -- control from outside --------------------------------------------

    def request_stop(self, reason: Any) -> None:
        if not self.mailbox.closed:
            self.mailbox.send_nowait((SYSTEM, _STOP, reason))

    def kill(self) -> None:
        self._killed = True
        self._kill_scope.cancel()
        # The cancellation lands at the actor's next checkpoint, and it takes
        # queued messages without one: close the mailbox (after cancelling,
        # so that a parked actor wakes up cancelled, not with mail).
        self.mailbox.close()
        if self.task is not None and trio.lowlevel.current_task() is self.task:
            raise _Killed  # from a handler of its own: end right here

    # -- timers -----------------------------------------------------------

    def send_after(self, delay: float, msg: Any, to: ActorId) -> TimerRef:
        if not (delay >= 0) or delay == math.inf:
            raise ValueError(f"send_after delay must be a finite number >= 0, got {delay!r}")
        assert self.nursery is not None
        ref = TimerRef(self.node.name, next(self.node._serials))
        scope = trio.CancelScope()
        self.timers[ref] = scope
        self.nursery.start_soon(self._run_timer, ref, scope, trio.current_time() + delay, to, msg)
        return ref

    async def _run_timer(
        self, ref: TimerRef, scope: trio.CancelScope, deadline: float, to: ActorId, msg: Any
    ) -> None:
        with scope:
            await trio.sleep_until(deadline)
            if self.timers.pop(ref, None) is not None:
                self.node.post(to, (INFO, msg, None))

    def cancel_timer(self, ref: TimerRef) -> bool:
        scope = self.timers.pop(ref, None)
        if scope is None:
            return False
        scope.cancel()
        return True

    # -- the task ---------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[ActorHandle]) -> None:
        self.task = trio.lowlevel.current_task()
        self.node.register(self)
        reason: Any = "normal"
        # A crash is caught inside the helper nursery and re-raised outside
        # it, so it reaches the owner wrapped once (by the owner's nursery),
        # not twice.
        crash: BaseException | None = None
        started = False
        try:
            with self._kill_scope:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    try:
                        await _maybe_await(self.behaviour.init(self.ctx))
                        task_status.started(ActorHandle(self.node, self.id))
                        started = True
                        reason = await self._loop()
                    except trio.Cancelled:
                        if not self._killed:
                            reason = "shutdown"
                            await self._terminate_shielded(reason)
                        raise
                    except _Killed:
                        pass  # it killed itself: _die says "killed"
                    except BaseException as exc:
                        reason = crash = exc
                        if started:
                            await self._terminate_shielded(exc)
                    finally:
                        nursery.cancel_scope.cancel()
        finally:
            self._die("killed" if self._killed else reason)
        if crash is not None:
            raise crash

    async def _terminate_shielded(self, reason: Any) -> None:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + TERMINATE_TIMEOUT
            # (It may kill itself there: the end it was headed for stands.)
            with contextlib.suppress(_Killed):
                await _maybe_await(self.behaviour.terminate(reason))

    def _die(self, reason: Any) -> None:
        self.stopping = True
        self.mailbox.close()
        for scope in self.timers.values():
            scope.cancel()
        self.timers.clear()
        self.node.unregister(self.id)
        for ref, target in self.monitors.items():
            self.node.demonitor(ref, target)
        self.monitors.clear()
        self.node.fail_callers(self.callers, reason)
        self.callers.clear()
        watchers, self.watchers = self.watchers, {}
        for ref, watcher in watchers.items():
            self.node.post(watcher, (INFO, Down(ref, self.id, reason), None))
        self.done.set()
        ended = getattr(self.behaviour, "ended", None)
        if ended is not None:
            ended(reason)

    async def _next_envelope(self) -> tuple[int, Any, Any]:
        """Wait for a message, applying the timeout the last handler asked for."""
        mailbox = self.mailbox
        timeout, self._timeout = self._timeout, None
        if timeout is HIBERNATE:
            await _maybe_await(self.behaviour.idle())
            timeout = None
        elif timeout == 0:
            await trio.lowlevel.checkpoint()
            return (INFO, TIMEOUT, None)
        while True:
            envelope = mailbox.pop()
            if envelope is not EMPTY:
                return envelope  # type: ignore[no-any-return]
            if timeout is None:
                await mailbox.wait_nonempty()
            else:
                assert isinstance(timeout, int | float)
                with trio.move_on_after(timeout) as scope:
                    await mailbox.wait_nonempty()
                if scope.cancelled_caught:
                    return (INFO, TIMEOUT, None)

    async def _loop(self) -> Any:
        mailbox = self.mailbox
        budget = _FAIRNESS_BUDGET
        while True:
            envelope = mailbox.pop()
            if envelope is EMPTY:
                envelope = await self._next_envelope()
                budget = _FAIRNESS_BUDGET
            else:
                self._timeout = None
                budget -= 1
                if budget == 0:
                    budget = _FAIRNESS_BUDGET
                    await trio.lowlevel.checkpoint()
            self.handled += 1
            kind, payload, from_ = envelope
            if kind == CAST:
                result = self._handle_cast(payload)  # type: ignore[misc]
            elif kind == INFO:
                if type(payload) is Down and payload.ref not in self.monitors:
                    continue  # demonitored while its Down was queued
                if type(payload) is Down:
                    del self.monitors[payload.ref]
                result = self._handle_info(payload)  # type: ignore[misc]
            elif kind == CALL:
                result = self._handle_call(payload, from_)  # type: ignore[misc]
                if type(result) is CoroutineType:
                    result = await result
                if not isinstance(result, Reply | NoReply | StopActor | BecomeActor):
                    raise TypeError(
                        f"{type(self.behaviour).__name__}.handle_call must return Reply, "
                        f"NoReply, StopActor or BecomeActor, got {result!r} for {payload!r}"
                    )
            else:
                await _maybe_await(self.behaviour.terminate(from_))
                return from_
            if result is None:
                continue
            if type(result) is CoroutineType:
                result = await result
                if result is None:
                    continue
            outcome = self._apply(result, from_)
            if outcome is not _CONTINUE:
                await _maybe_await(self.behaviour.terminate(outcome))
                return outcome

    def _apply(self, result: Any, from_: From | None) -> Any:
        """Act on a handler's result; return a stop reason or ``_CONTINUE``."""
        cls = type(result)
        if cls is NoReply:
            self._timeout = result.timeout
        elif cls is Reply:
            if from_ is not None:
                self.node.reply(from_, result.value)
            self._timeout = result.timeout
        elif cls is StopActor:
            if from_ is not None and result.reply is not NO_REPLY:
                self.node.reply(from_, result.reply)
            self.stopping = True
            return result.reason
        elif cls is BecomeActor:
            if from_ is not None and result.reply is not NO_REPLY:
                self.node.reply(from_, result.reply)
            self._set_behaviour(result.behaviour)
            self._timeout = result.timeout
        else:
            raise TypeError(
                f"{type(self.behaviour).__name__} handler returned {result!r}; expected "
                "None, Reply, NoReply, StopActor or BecomeActor"
            )
        return _CONTINUE

    def statistics(self) -> ActorStatistics:
        return ActorStatistics(
            id=self.id,
            behaviour=type(self.behaviour).__name__,
            mailbox_length=len(self.mailbox),
            messages_handled=self.handled,
            monitors=len(self.monitors),
            timers=len(self.timers),
            alive=not self.done.is_set(),
        )


_CONTINUE: Final = object()


async def _maybe_await(value: Any) -> Any:
    if isinstance(value, CoroutineType):
        return await value
    return value
