"""Nodes and members: the public face of trio_gm.

A :class:`Node` hosts members (and the actors under them) and routes their
messages; today every member of a node lives in this process. A
:class:`Member` is the owner's handle on one member, valid for the duration
of its ``node.open_member(...)`` block.
"""

from __future__ import annotations

import ipaddress
import math
import secrets
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from ._exceptions import ActorError, MemberStopped
from ._ids import MemberId
from .actor import ActorHandle, ActorNode
from .ring.member import (
    GroupInfo,
    MemberActor,
    MemberStatistics,
    OrphanedJoin,
    _ConfirmedBroadcast,
    _Request,
    _ValidateMembers,
    raise_if_shutting_down,
)
from .store import GroupStore
from .transport.codec import Codec
from .transport.tcp import (
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_FRAME,
    Transport,
    TransportStatistics,
    internal_classes,
    split_address,
)

#: Default bound on a member's own messages buffered or unacknowledged.
DEFAULT_MAX_IN_FLIGHT: Final = 2000

_CALLBACKS: Final = ("joined", "members_changed", "handle_msg", "handle_terminate")


class Member:
    """The owner's handle on one member of a group."""

    def __init__(self, actor: MemberActor, handle: ActorHandle, codec: Codec | None) -> None:
        self._actor = actor
        self._codec = codec
        self._handle = handle
        cell = handle.node.cell(handle.id)
        assert cell is not None
        self._mailbox = cell.mailbox
        self._done = cell.done
        self.id: MemberId = handle.id
        self.group_name: str = actor.group_name

    def __repr__(self) -> str:
        return f"<Member {self.id} of {self.group_name!r}>"

    def _check_alive(self) -> None:
        if self._mailbox.closed:
            raise MemberStopped(
                f"member {self.id} of group {self.group_name!r} has stopped"
                + (f" ({self._actor.stop_reason!r})" if self._actor.stop_reason else "")
            )

    async def _call(self, request: Any) -> Any:
        self._check_alive()
        try:
            return await self._handle.call(request, timeout=math.inf)
        except ActorError as exc:
            raise MemberStopped(
                f"member {self.id} of group {self.group_name!r} stopped before answering"
            ) from exc

    def _in_own_callback(self) -> bool:
        return trio.lowlevel.current_task() is self._actor.task

    async def _wait_for_room(self) -> None:
        """Wait until the member has room under ``max_in_flight``, or stops."""
        actor = self._actor
        while actor.in_flight >= actor.max_in_flight:
            self._check_alive()
            if actor.room.is_set():
                actor.room = trio.Event()  # shared by every waiting task
            async with trio.open_nursery() as nursery:
                # A killed member runs no terminate to wake us: its end does.
                for event in (actor.room, self._done):
                    nursery.start_soon(_set_then_cancel, event, nursery.cancel_scope)
        self._check_alive()

    async def broadcast(self, msg: Any, size_hint: int = 0) -> None:
        """Send ``msg`` to every member; returns once it is accepted.

        It waits only when ``max_in_flight`` of this member's messages are
        not yet acknowledged (flow control), and never when called from this
        member's own callbacks. It is a cancellation point, but it yields to
        other tasks only when it waits: a loop of broadcasts runs until flow
        control stops it (this keeps a broadcast down to a list append).
        ``size_hint`` is the size of anything large in ``msg``; buffered
        messages are flushed once their hints pass 100 MB.
        """
        if size_hint.__class__ is not int or size_hint < 0:
            raise ValueError(f"size_hint must be an int >= 0, got {size_hint!r}")
        if self._codec is not None:
            self._codec.check(msg)
        actor = self._actor
        if actor.in_flight >= actor.max_in_flight and not self._in_own_callback():
            await self._wait_for_room()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._mailbox.closed:
                self._check_alive()
        if actor.shutting_down is not None:
            raise MemberStopped(
                f"member {self.id} is shutting down ({actor.shutting_down!r}): "
                "the broadcast was not sent"
            )
        actor.offer(msg, size_hint)

    async def confirmed_broadcast(self, msg: Any) -> None:
        """Broadcast ``msg`` and return once every member of the group has it.

        Each member passes a batch on before it calls ``handle_msg`` for it
        (as gm does, so the ring stays pipelined): with plain callbacks every
        member's ``handle_msg`` has returned by then; an async ``handle_msg``
        that awaits may still be running.
        """
        if self._in_own_callback():
            raise RuntimeError(
                "confirmed_broadcast from the member's own callback would deadlock: "
                "the confirmation needs this member to handle more messages; use broadcast"
            )
        if self._codec is not None:
            self._codec.check(msg)
        await self._wait_for_room()
        raise_if_shutting_down(await self._call(_ConfirmedBroadcast(msg)), self.id)

    async def info(self) -> GroupInfo:
        """The group name, the current callbacks and the alive members."""
        result: GroupInfo = await self._call(_Request.INFO)
        return result

    async def group_members(self) -> list[MemberId]:
        """The alive members of the group, as this member's view has them."""
        result: list[MemberId] = await self._call(_Request.GROUP_MEMBERS)
        return result

    async def validate_members(self, known: list[MemberId] | tuple[MemberId, ...]) -> None:
        """Report, through ``members_changed``, any difference from ``known``."""
        members = tuple(known)
        for member in members:
            if not isinstance(member, MemberId):
                raise TypeError(f"validate_members takes MemberId values, got {member!r}")
        self._check_alive()
        await trio.lowlevel.checkpoint()
        self._handle.cast(_ValidateMembers(members))

    async def statistics(self) -> MemberStatistics:
        """A snapshot: view version, ring size, pending acks, counters."""
        result: MemberStatistics = await self._call(_Request.STATISTICS)
        return result

    async def leave(self) -> None:
        """Leave the group (``handle_terminate(args, "normal")``) and wait for it.

        Broadcasts accepted before ``leave`` are still sent.
        """
        await self._handle.stop("normal")

    def kill(self) -> None:
        """End the member abruptly: no ``handle_terminate``, no leave."""
        self._handle.kill()

    @property
    def alive(self) -> bool:
        return self._handle.alive


async def _set_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class Node:
    """Hosts members; made by :func:`open_node`."""

    def __init__(
        self, store: GroupStore, actors: ActorNode, transport: Transport | None = None
    ) -> None:
        self.store = store
        self.actors = actors
        self.transport = transport
        #: Encodes what crosses to other nodes; register your attrs message
        #: classes with ``node.codec.register(cls)`` (on every node).
        self.codec: Codec | None = transport.codec if transport is not None else None

    @property
    def name(self) -> str:
        return self.actors.name

    @property
    def address(self) -> str | None:
        """``host:port`` this node listens on, or None for a node of one process."""
        if self.transport is None:
            return None
        host, port = split_address(self.transport.name)
        return f"{host}:{port}"

    def statistics(self) -> TransportStatistics | None:
        """Peers, bytes and frames in and out, reconnects (None without ``listen``)."""
        return None if self.transport is None else self.transport.statistics()

    @asynccontextmanager
    async def open_member(
        self,
        group: str,
        callbacks: Any,
        args: Any = None,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        io_factory: Any = None,
    ) -> AsyncIterator[Member]:
        """Join ``group`` for the duration of the block.

        Returns once the member has joined and holds its starting state
        (after ``joined`` was called). Leaving the block for any reason,
        cancellation included, leaves the group. An exception raised by a
        callback stops the member and propagates out of the block, as a
        failed child propagates out of a nursery.
        """
        if not isinstance(group, str) or not group:
            raise ValueError(f"group must be a non-empty str, got {group!r}")
        missing = [name for name in _CALLBACKS if not callable(getattr(callbacks, name, None))]
        if missing:
            raise TypeError(
                f"callbacks {callbacks!r} lack {', '.join(missing)}: a member needs "
                f"{', '.join(_CALLBACKS)}"
            )
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")

        def new_actor() -> MemberActor:
            return MemberActor(
                group,
                callbacks,
                args,
                self.store,
                max_in_flight=max_in_flight,
                io_factory=io_factory,
            )

        actor = new_actor()
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    handle = await self.actors.start_actor(nursery, actor)
                except OrphanedJoin:
                    # Our left died between recording us and handing over its
                    # state; we left as a dead member: join again, new id.
                    actor = new_actor()
                    continue
                break
            member = Member(actor, handle, self.codec)
            try:
                await member._call(_Request.AWAIT_READY)
                yield member
            finally:
                handle.stop_nowait("normal")


@asynccontextmanager
async def open_node(
    store: GroupStore,
    *,
    name: str | None = None,
    listen: str | None = None,
    cookie: str | bytes | None = None,
    ssl_context: ssl.SSLContext | None = None,
    ssl_client_context: ssl.SSLContext | None = None,
    heartbeat_interval: float = DEFAULT_HEARTBEAT,
    max_frame_size: int = DEFAULT_MAX_FRAME,
) -> AsyncIterator[Node]:
    """A node for members of groups kept in ``store``, for the block's duration.

    Without ``listen`` every member lives in this process. With
    ``listen="host:port"`` (port 0 picks a free one; ``node.address`` says
    which) members of other nodes can reach this node's members over TCP.
    A peer must prove it knows ``cookie`` (HMAC challenge-response; the
    cookie is never sent) before anything it sends is accepted; without a
    cookie the node listens on loopback addresses only. With TLS,
    ``ssl_context`` (a server context holding this node's certificate)
    wraps the connections it accepts and ``ssl_client_context`` (one that
    trusts the peers' certificates) those it dials; give both. A peer
    silent for ``heartbeat_interval`` seconds is declared down; frames above
    ``max_frame_size`` bytes close their connection.
    """
    if not isinstance(store, GroupStore):
        raise TypeError(f"open_node needs a GroupStore (from open_store), got {store!r}")
    if listen is None:
        if cookie is not None or ssl_context is not None or ssl_client_context is not None:
            raise ValueError("cookie and TLS contexts only make sense with listen='host:port'")
        node = Node(store, ActorNode(name))
        await trio.lowlevel.checkpoint()
        yield node
        return
    if (ssl_context is None) != (ssl_client_context is None):
        raise ValueError("TLS needs both ssl_context (to accept) and ssl_client_context (to dial)")
    host, port = split_address(listen)
    if not (heartbeat_interval > 0):
        raise ValueError(f"heartbeat_interval must be > 0 seconds, got {heartbeat_interval!r}")
    if cookie is None:
        if not _is_loopback(host):
            raise ValueError(
                f"refusing to listen on {listen!r} without a cookie: anyone who can reach "
                "it could join; pass cookie=... or listen on a loopback address"
            )
        secret = b""
    else:
        secret = cookie.encode() if isinstance(cookie, str) else bytes(cookie)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    node_name = f"{host}:{bound[1]}#{secrets.token_hex(4)}"
    actors = ActorNode(node_name)
    transport = Transport(
        actors,
        Codec(internal_classes()),
        cookie=secret,
        heartbeat_interval=heartbeat_interval,
        max_frame_size=max_frame_size,
        ssl_context=ssl_context,
        ssl_client_context=ssl_client_context,
    )
    actors.remote = transport
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.serve, listeners)
        try:
            yield Node(store, actors, transport)
        finally:
            nursery.cancel_scope.cancel()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
