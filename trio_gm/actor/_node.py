"""The actor registry: ids to mailboxes, calls, monitors.

An ``ActorNode`` is the one place that turns an ``ActorId`` into a mailbox.
Actors never hold references to each other, only ids, and every message goes
through ``ActorNode.post``: today that is a dictionary lookup; a transport
added later routes ids of other nodes through the ``router`` hook, without
any actor changing.

The guarantees the ring protocol relies on (gm.erl relied on Erlang for
them) are made here:

* ``post`` never blocks and never fails: a message to an id that no longer
  exists is dropped, as Erlang drops a message to a dead pid;
* messages from one sender to one receiver arrive in the order sent (each
  ``post`` appends to the receiver's mailbox immediately);
* a ``Down`` is posted by the dying actor after everything it sent, so it
  arrives after them;
* a reply to a call that already gave up is counted and discarded.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from .._exceptions import ActorStopped, CallTimeout, NoSuchActor
from .._groups import raise_unwrapped
from .._ids import ActorId
from ._messages import Down, From, MonitorRef

if TYPE_CHECKING:
    from ._server import ActorCell, ActorHandle

# Envelope kinds. Envelopes are (kind, payload, from_) tuples: they never
# leave the process (a transport encodes its own frames) and this is the
# hottest allocation in the library.
CALL: Final = 1
CAST: Final = 2
INFO: Final = 3
SYSTEM: Final = 4

#: Default call timeout, as gen_server's.
DEFAULT_CALL_TIMEOUT: Final = 5.0

Envelope = tuple[int, Any, Any]

#: The pseudo-actor serial that stands for "the node itself" as a watcher
#: (of the target of a call to another node).
NODE_WATCHER: Final = 0


class Remote(Protocol):
    """What a transport provides for ids of other nodes."""

    def post(self, to: ActorId, envelope: Envelope) -> bool: ...

    def call(self, to: ActorId, request: Any, from_: From) -> None: ...

    def call_done(self, from_: From) -> None: ...

    def reply(self, from_: From, value: Any) -> None: ...

    def monitor(self, watcher: ActorId, target: ActorId, ref: MonitorRef) -> None: ...

    def demonitor(self, ref: MonitorRef, target: ActorId) -> None: ...


@attrs.define(eq=False)
class _CallWaiter:
    target: ActorId
    event: trio.Event = attrs.Factory(trio.Event)
    value: Any = None
    stopped_reason: Any = None
    done: bool = False


@attrs.frozen
class NodeStatistics:
    """A snapshot of a node's registry."""

    name: str
    actors: int
    pending_calls: int
    #: Messages posted to an id no actor answered to (dropped, as Erlang does).
    dropped: int
    #: Replies that arrived after their call had given up (discarded).
    late_replies: int


class ActorNode:
    """Hosts actors and routes messages between them by id.

    ``name`` identifies the node and its incarnation; it is part of every
    id the node hands out, so a restarted node never reuses an old id.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name: str = name if name is not None else f"local-{secrets.token_hex(4)}"
        self._cells: dict[ActorId, ActorCell] = {}
        self._serials = itertools.count(1)
        self._tags = itertools.count(1)
        self._waiters: dict[int, _CallWaiter] = {}
        self._dropped = 0
        self._late_replies = 0
        #: Carries messages, calls and monitors to ids of other nodes; None
        #: (a node of one process) treats those ids as dead. The transport
        #: installs itself here.
        self.remote: Remote | None = None

    # -- ids and registry -------------------------------------------------

    def new_id(self) -> ActorId:
        return ActorId(self.name, next(self._serials))

    def new_monitor_ref(self) -> MonitorRef:
        return MonitorRef(self.name, next(self._serials))

    def register(self, cell: ActorCell) -> None:
        if cell.id in self._cells:
            raise ValueError(f"actor id {cell.id} is already registered on node {self.name}")
        self._cells[cell.id] = cell

    def unregister(self, actor_id: ActorId) -> None:
        self._cells.pop(actor_id, None)

    def is_alive(self, actor_id: ActorId) -> bool:
        return actor_id in self._cells

    def cell(self, actor_id: ActorId) -> ActorCell | None:
        return self._cells.get(actor_id)

    # -- sending ----------------------------------------------------------

    def post(self, to: ActorId, envelope: Envelope) -> bool:
        """Deliver ``envelope`` to ``to``'s mailbox; return whether anyone took it."""
        cell = self._cells.get(to)
        if cell is not None and not cell.mailbox.closed:
            cell.mailbox.send_nowait(envelope)
            return True
        if to.node != self.name and self.remote is not None:
            return self.remote.post(to, envelope)
        self._dropped += 1
        return False

    def cast(self, to: ActorId, msg: Any) -> None:
        """Send ``msg`` to ``to``'s ``handle_cast``; never blocks, never fails."""
        self.post(to, (CAST, msg, None))

    def send(self, to: ActorId, msg: Any) -> None:
        """Send ``msg`` to ``to``'s ``handle_info`` (Erlang's ``!``)."""
        self.post(to, (INFO, msg, None))

    async def call(
        self, to: ActorId, request: Any, *, timeout: float = DEFAULT_CALL_TIMEOUT
    ) -> Any:
        """Send ``request`` to ``to``'s ``handle_call`` and wait for the reply.

        Raises ``NoSuchActor`` if no actor answers to ``to``, ``ActorStopped``
        if it stops before replying, ``CallTimeout`` after ``timeout``
        seconds (``math.inf`` waits for ever). A reply that arrives after
        the timeout is discarded.
        """
        if not (timeout > 0):
            raise ValueError(f"call timeout must be a positive number of seconds, got {timeout!r}")
        remote = self.remote if to.node != self.name else None
        cell = self._cells.get(to)
        if remote is None and (cell is None or cell.mailbox.closed):
            await trio.lowlevel.checkpoint()
            raise NoSuchActor(f"no actor {to} to call with {request!r}")
        tag = next(self._tags)
        from_ = From(self.name, tag)
        waiter = _CallWaiter(to)
        self._waiters[tag] = waiter
        try:
            if cell is not None:
                cell.callers.add(tag)
                cell.mailbox.send_nowait((CALL, request, from_))
            else:
                assert remote is not None
                remote.call(to, request, from_)
            if timeout == math.inf:
                await waiter.event.wait()
            else:
                with trio.move_on_after(timeout):
                    await waiter.event.wait()
        finally:
            self._waiters.pop(tag, None)
            if cell is not None:
                cell.callers.discard(tag)
            elif remote is not None:
                remote.call_done(from_)
        if not waiter.done:
            raise CallTimeout(f"call to {to} with {request!r} was not answered within {timeout}s")
        if waiter.stopped_reason is not None:
            raise ActorStopped(
                f"actor {to} stopped ({waiter.stopped_reason!r}) before replying to {request!r}"
            )
        return waiter.value

    def reply(self, from_: From, value: Any) -> None:
        """Answer a call; a reply to a call that gave up is discarded."""
        if from_.node != self.name:
            if self.remote is not None:
                self.remote.reply(from_, value)
            return
        waiter = self._waiters.get(from_.tag)
        if waiter is None or waiter.done:
            self._late_replies += 1
            return
        waiter.value = value
        waiter.done = True
        waiter.event.set()

    def fail_callers(self, tags: set[int], reason: Any) -> None:
        """The actor these calls went to stopped: wake each with ``ActorStopped``."""
        for tag in tags:
            waiter = self._waiters.get(tag)
            if waiter is not None and not waiter.done:
                waiter.stopped_reason = reason if reason is not None else "stopped"
                waiter.done = True
                waiter.event.set()

    # -- for a transport: what arrives from other nodes --------------------
    #
    # A transport calls these (and ``post``, ``reply``, ``fail_callers``,
    # ``new_monitor_ref``) for the frames it receives; it never touches an
    # actor's cell.

    def deliver(self, to: ActorId, envelope: Envelope) -> bool:
        """Put ``envelope`` (a cast or an info) in the mailbox of the local actor ``to``.

        Return whether an actor took it. Unlike :meth:`post` it never routes
        to another node: a message that arrived from one is for this node's
        actors only. A message to an actor that is gone is dropped (and
        counted), as ``post`` drops it.
        """
        cell = self._cells.get(to)
        if cell is not None and not cell.mailbox.closed:
            cell.mailbox.send_nowait(envelope)
            return True
        self._dropped += 1
        return False

    def deliver_call(self, to: ActorId, request: Any, from_: From) -> bool:
        """Put a call from another node (``from_`` names the caller's node) in ``to``'s mailbox.

        Return whether an actor took it. The caller is not one of the
        actor's callers here: its own node guards the call with a monitor,
        whose ``Down`` fails the call if the actor stops first (or is gone:
        then nothing is delivered, nor counted as dropped, and the monitor
        says ``"noproc"``).
        """
        cell = self._cells.get(to)
        if cell is not None and not cell.mailbox.closed:
            cell.mailbox.send_nowait((CALL, request, from_))
            return True
        return False

    def add_watcher(self, target: ActorId, ref: MonitorRef, watcher: ActorId) -> bool:
        """Record that ``watcher`` monitors the local actor ``target`` under ``ref``.

        ``watcher`` may be of another node: the ``Down`` is posted to it,
        so through the transport. Return ``False``, recording nothing, if
        ``target`` is not alive or already stopping; the caller then owes
        the watcher a ``Down`` with reason ``"noproc"``.
        """
        cell = self._cells.get(target)
        if cell is None or cell.stopping:
            return False
        cell.watchers[ref] = watcher
        return True

    def remove_watcher(self, target: ActorId, ref: MonitorRef) -> None:
        """Forget the monitor ``ref`` on the local actor ``target``, if there is one."""
        cell = self._cells.get(target)
        if cell is not None:
            cell.watchers.pop(ref, None)

    def remove_watchers_on(self, node: str) -> int:
        """Forget every monitor on a local actor held by an actor of ``node``.

        For a nodedown: no ``Down`` is posted to them. Return how many
        were forgotten.
        """
        removed = 0
        for cell in self._cells.values():
            watchers = cell.watchers
            gone = [ref for ref, watcher in watchers.items() if watcher.node == node]
            for ref in gone:
                del watchers[ref]
            removed += len(gone)
        return removed

    # -- monitors ---------------------------------------------------------

    def monitor(self, watcher: ActorId, target: ActorId) -> MonitorRef:
        """Ask for ``Down(ref, target, reason)`` at ``watcher`` when ``target`` stops.

        If ``target`` is not alive, the ``Down`` (reason ``"noproc"``) is
        posted at once.
        """
        ref = self.new_monitor_ref()
        if target.node != self.name and self.remote is not None:
            self.remote.monitor(watcher, target, ref)
            return ref
        if not self.add_watcher(target, ref, watcher):
            self.post(watcher, (INFO, Down(ref, target, "noproc"), None))
        return ref

    def demonitor(self, ref: MonitorRef, target: ActorId) -> None:
        if target.node != self.name and self.remote is not None:
            self.remote.demonitor(ref, target)
            return
        self.remove_watcher(target, ref)

    # -- lifetimes --------------------------------------------------------

    @asynccontextmanager
    async def open_actor(self, behaviour: Any) -> AsyncIterator[ActorHandle]:
        """Run ``behaviour`` as an actor for the duration of the block.

        The block's exit stops the actor (``terminate("normal")``) once it
        has handled the messages already sent to it, and waits for that; an
        exception in the block, or a cancellation of an enclosing scope,
        stops it with ``"shutdown"``. If the actor crashes, its
        exception propagates out of the block as a failed nursery child does,
        but as itself, not in an ExceptionGroup; so does an exception raised
        in the block (several at once come out in a group: see ``_groups``).
        """
        raised: BaseException | None = None
        try:
            async with trio.open_nursery(strict_exception_groups=True) as nursery:
                handle = await self.start_actor(nursery, behaviour)
                try:
                    yield handle
                except BaseException as exc:
                    raised = exc
                    raise
                finally:
                    handle.stop_nowait("normal")
        except BaseExceptionGroup as exc:
            raise_unwrapped(exc, f"open_actor({type(behaviour).__name__})", raised)

    async def start_actor(self, nursery: trio.Nursery, behaviour: Any) -> ActorHandle:
        """Start ``behaviour`` as an actor in ``nursery``; return once ``init`` has run."""
        from ._server import ActorCell

        cell = ActorCell(self, self.new_id(), behaviour)
        handle: ActorHandle = await nursery.start(cell.run)
        return handle

    def statistics(self) -> NodeStatistics:
        return NodeStatistics(
            name=self.name,
            actors=len(self._cells),
            pending_calls=len(self._waiters),
            dropped=self._dropped,
            late_replies=self._late_replies,
        )
