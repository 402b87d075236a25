"""Nodes and members: the public face of trio_gm.

A :class:`Node` hosts members (and the actors under them) and routes their
messages; today every member of a node lives in this process. A
:class:`Member` is the owner's handle on one member, valid for the duration
of its ``node.open_member(...)`` block.
"""

from __future__ import annotations

import math
import secrets
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from ._address import format_address, is_wildcard, parse_advertise
from ._cookie import load_cookie
from ._exceptions import ActorError, CookieError, MemberStopped, WouldDeadlock
from ._groups import raise_unwrapped
from ._ids import MemberId
from .actor import ActorHandle, ActorNode
from .ring.member import (
    ConfirmRequest,
    GroupInfo,
    InfoRequest,
    MemberActor,
    MembersRequest,
    MemberStatistics,
    OrphanedJoin,
    ReadyRequest,
    StatisticsRequest,
    ValidateMembers,
    raise_if_shutting_down,
)
from .store import GroupStore, check_group_name
from .transport.codec import Codec
from .transport.tcp import (
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_HANDSHAKES,
    Transport,
    TransportStatistics,
    default_send_queue,
    internal_classes,
    split_address,
)

#: Default bound on a member's own messages buffered or unacknowledged.
DEFAULT_MAX_IN_FLIGHT: Final = 2000

#: Default bound on one encoded message (``open_node(max_message_size=...)``).
DEFAULT_MAX_MESSAGE: Final = 48 * 1024 * 1024
#: Room left in a frame, beyond the messages of a batch, for the rest of the
#: activity (ids, numbers, acknowledgements of each publisher).
FRAME_HEADROOM: Final = 64 * 1024
#: Encoded bytes of messages after which a batch is sent: larger batches
#: gain nothing, and each hop handles a frame in one go (a larger message
#: goes alone).
MAX_BATCH_BYTES: Final = 1024 * 1024


def frame_budget(max_frame_size: int) -> int:
    """Encoded message bytes one activity may carry under ``max_frame_size``."""
    if max_frame_size > 2 * FRAME_HEADROOM:
        return max_frame_size - FRAME_HEADROOM
    return max_frame_size // 2


_CALLBACKS: Final = ("joined", "members_changed", "handle_msg", "handle_terminate")


class Member:
    """The owner's handle on one member of a group."""

    def __init__(
        self,
        actor: MemberActor,
        handle: ActorHandle,
        codec: Codec | None,
        max_message_size: int | None = None,
    ) -> None:
        self._actor = actor
        self._codec = codec
        self._max_message_size = max_message_size
        self._handle = handle
        cell = handle.node.cell(handle.id)
        assert cell is not None
        self._mailbox = cell.mailbox
        self.id: MemberId = handle.id
        self.group_name: str = actor.group_name

    def __repr__(self) -> str:
        return f"<Member {self.id} of {self.group_name!r}>"

    def _stopped(self, how: str, cause: BaseException | None = None) -> MemberStopped:
        """``MemberStopped`` saying ``how``, caused by the stop reason when it is an error."""
        reason = self._actor.stop_reason
        stopped = MemberStopped(
            f"member {self.id} of group {self.group_name!r} {how}"
            + (f" ({reason!r})" if reason else "")
        )
        # As ``raise stopped from ...`` would: the cause shown, not the context.
        stopped.__cause__ = reason if isinstance(reason, BaseException) else cause
        stopped.__suppress_context__ = True
        return stopped

    def _check_alive(self) -> None:
        if self._mailbox.closed:
            raise self._stopped("has stopped")

    async def _call(self, request: Any) -> Any:
        if self._in_own_callback():
            raise WouldDeadlock(
                f"member {self.id} of group {self.group_name!r} was called ({request!r}) "
                "from its own callback: it answers only once that callback returns"
            )
        self._check_alive()
        try:
            return await self._handle.call(request, timeout=math.inf)
        except ActorError as exc:
            raise self._stopped("stopped before answering", exc)  # noqa: B904 - cause set there

    def _in_own_callback(self) -> bool:
        return trio.lowlevel.current_task() is self._actor.task

    async def _wait_for_room(self) -> None:
        """Wait until the member has room under ``max_in_flight``, or stops."""
        actor = self._actor
        while actor.in_flight >= actor.max_in_flight:
            self._check_alive()
            # Woken when room appears and when the member ends (a kill too).
            actor.room_waiters += 1
            try:
                await actor.room.park()
            finally:
                actor.room_waiters -= 1
        self._check_alive()

    def _pack(self, msg: Any) -> Any:
        if self._codec is None:
            return None
        return self._codec.pack(msg, max_size=self._max_message_size)

    def _refuse_if_shutting_down(self) -> None:
        reason = self._actor.shutting_down
        if reason is not None:
            raise MemberStopped(
                f"member {self.id} is shutting down ({reason!r}): the broadcast was not sent"
            )

    def broadcast_nowait(self, msg: Any, size_hint: int = 0) -> None:
        """:meth:`broadcast` without waiting: ``trio.WouldBlock`` when it would wait.

        It would wait only when ``max_in_flight`` of this member's messages
        are in flight (flow control); from the member's own callbacks it
        never does. ``msg`` is checked and encoded as by :meth:`broadcast`.
        """
        _check_size_hint(size_hint)
        packed = self._pack(msg)
        actor = self._actor
        self._check_alive()
        if actor.in_flight >= actor.max_in_flight and not self._in_own_callback():
            raise trio.WouldBlock
        self._refuse_if_shutting_down()
        actor.offer(msg, size_hint, packed)

    async def broadcast(self, msg: Any, size_hint: int = 0) -> None:
        """Send ``msg`` to every member; returns once it is accepted.

        It waits only when ``max_in_flight`` of this member's messages are
        not yet acknowledged (flow control), and never when called from this
        member's own callbacks. It is a cancellation point, but it yields to
        other tasks only when it waits: a loop of broadcasts runs until flow
        control stops it (this keeps a broadcast down to a list append).
        ``size_hint`` is the size of anything large in ``msg``; buffered
        messages are flushed once their hints pass 100 MB.

        On a node with a network side ``msg`` is encoded here, once: a
        message that cannot cross the wire, or that encodes to more than the
        node's ``max_message_size``, raises ``TypeError`` or ``ValueError``
        naming the part (``msg[1]``, ``msg['key']``) and why, and nobody
        receives it. What is accepted travels as these bytes (a ``bytearray``
        arrives as ``bytes``), and buffered messages also go once they pass
        1 MiB encoded, whatever the hints say.
        """
        # The hot path of a sender: kept to the checks and a list append.
        if size_hint.__class__ is not int or size_hint < 0:
            _check_size_hint(size_hint)
        wire = (
            msg if self._codec is None else self._codec.pack(msg, max_size=self._max_message_size)
        )
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._mailbox.closed:
            self._check_alive()
        actor = self._actor
        core = actor.core
        if core.shutting_down is not None:
            self._refuse_if_shutting_down()
        taken = core.offer_within(actor.max_in_flight, msg, wire, size_hint)
        if taken < 0:  # no room under max_in_flight
            if not self._in_own_callback():
                await self._wait_for_room()
                if core.shutting_down is not None:
                    self._refuse_if_shutting_down()
            taken = core.offer(msg, wire, size_hint)
        if taken:
            actor.wake()

    async def confirmed_broadcast(self, msg: Any) -> None:
        """Broadcast ``msg`` and return once every member of the group has it.

        Each member passes a batch on before it calls ``handle_msg`` for it
        (as gm does, so the ring stays pipelined): with plain callbacks every
        member's ``handle_msg`` has returned by then; an async ``handle_msg``
        that awaits may still be running.

        From the member's own callbacks it raises
        :class:`~trio_gm.WouldDeadlock` (a RuntimeError).
        """
        if self._in_own_callback():
            raise WouldDeadlock(
                f"confirmed_broadcast from a callback of member {self.id} of group "
                f"{self.group_name!r} would deadlock: the confirmation needs this member "
                "to handle more messages, which it does once the callback returns; "
                "use broadcast"
            )
        packed = self._pack(msg)
        await self._wait_for_room()
        raise_if_shutting_down(await self._call(ConfirmRequest(msg, packed)), self.id)

    async def info(self) -> GroupInfo:
        """The group name, the current callbacks and the alive members.

        Like ``group_members()`` and ``statistics()``, it answers at once
        from the member's state when called from its own callbacks.
        """
        if self._in_own_callback():
            await trio.lowlevel.checkpoint()
            return self._actor.info()
        result: GroupInfo = await self._call(InfoRequest())
        return result

    async def group_members(self) -> list[MemberId]:
        """The alive members of the group, as this member's view has them."""
        if self._in_own_callback():
            await trio.lowlevel.checkpoint()
            return self._actor.alive_members
        result: list[MemberId] = await self._call(MembersRequest())
        return result

    async def validate_members(self, known: list[MemberId] | tuple[MemberId, ...]) -> None:
        """Report, through ``members_changed``, any difference from ``known``."""
        members = tuple(known)
        for member in members:
            if not isinstance(member, MemberId):
                raise TypeError(f"validate_members takes MemberId values, got {member!r}")
        self._check_alive()
        await trio.lowlevel.checkpoint()
        self._handle.cast(ValidateMembers(members))

    async def statistics(self) -> MemberStatistics:
        """A snapshot: view version, ring size, pending acks, counters."""
        if self._in_own_callback():
            await trio.lowlevel.checkpoint()
            return self._actor.statistics()
        result: MemberStatistics = await self._call(StatisticsRequest())
        return result

    async def leave(self) -> None:
        """Leave the group (``handle_terminate(args, "normal")``) and wait for it.

        Broadcasts accepted before ``leave`` are still sent.

        From the member's own callbacks it cannot wait for that: it returns
        at once, and when the callback returns the member stops as if the
        callback had returned ``Stop("normal")`` (a ``Stop`` it does return
        gives its reason instead): once its own messages have gone round,
        and the rest of a batch of messages is not delivered. From
        ``handle_terminate`` the member is already stopping: it does nothing.
        """
        if self._in_own_callback():
            await trio.lowlevel.checkpoint()
            self._actor.leave_requested = True
            return
        await self._handle.stop("normal")

    def kill(self) -> None:
        """End the member abruptly: no ``handle_terminate``, no leave.

        From the member's own callback ``kill()`` does not return: the
        member ends there (the callback's ``finally`` blocks run; nothing
        else of the member does), as an Erlang process that kills itself.
        """
        self._handle.kill()

    @property
    def alive(self) -> bool:
        return self._handle.alive


class Node:
    """Hosts members; made by :func:`open_node`."""

    def __init__(
        self,
        store: GroupStore,
        actors: ActorNode,
        transport: Transport | None = None,
        *,
        max_message_size: int | None = None,
        listen_address: str | None = None,
    ) -> None:
        self._listen_address = listen_address
        self.store = store
        self.actors = actors
        self.transport = transport
        #: The largest encoded message ``broadcast`` accepts (None without ``listen``).
        self.max_message_size = max_message_size if transport is not None else None
        #: Encodes what crosses to other nodes; register your attrs message
        #: classes with ``node.codec.register(cls)`` (on every node).
        self.codec: Codec | None = transport.codec if transport is not None else None

    @property
    def name(self) -> str:
        return self.actors.name

    @property
    def address(self) -> str | None:
        """``host:port`` peers dial to reach this node (the advertised address).

        None for a node of one process. IPv6 hosts come in brackets.
        """
        if self.transport is None:
            return None
        host, port = split_address(self.transport.name)
        return format_address(host, port)

    @property
    def listen_address(self) -> str | None:
        """``host:port`` this node's socket is bound to (None for a node of one process)."""
        return self._listen_address

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
    ) -> AsyncIterator[Member]:
        """Join ``group`` for the duration of the block.

        Returns once the member has joined and holds its starting state
        (after ``joined`` was called). Leaving the block for any reason,
        cancellation included, leaves the group. An exception raised by a
        callback stops the member and propagates out of the block as itself
        (not in an ExceptionGroup), with a note naming the callback and the
        member; so does an exception raised in the block. Only several at
        once (the block's and the member's) come out together, in a group.
        """
        check_group_name(group)
        missing = [name for name in _CALLBACKS if not callable(getattr(callbacks, name, None))]
        if missing:
            raise TypeError(
                f"callbacks {callbacks!r} lack {', '.join(missing)}: a member needs "
                f"{', '.join(_CALLBACKS)}"
            )
        _check_int("max_in_flight", max_in_flight, 1)

        def new_actor() -> MemberActor:
            return MemberActor(
                group,
                callbacks,
                args,
                self.store,
                max_in_flight=max_in_flight,
                max_batch_bytes=(
                    None
                    if self.transport is None
                    else min(MAX_BATCH_BYTES, frame_budget(self.transport.max_frame_size))
                ),
            )

        actor = new_actor()
        raised: BaseException | None = None
        try:
            # Strict: whatever leaves it is a group made for it (see _groups).
            async with trio.open_nursery(strict_exception_groups=True) as nursery:
                while True:
                    try:
                        handle = await self.actors.start_actor(nursery, actor)
                    except OrphanedJoin:
                        # Our left died between recording us and handing over
                        # its state; we left as a dead member: join again, new id.
                        actor = new_actor()
                        continue
                    break
                member = Member(actor, handle, self.codec, self.max_message_size)
                try:
                    await member._call(ReadyRequest())
                    yield member
                except BaseException as exc:
                    raised = exc
                    raise
                finally:
                    handle.stop_nowait("normal")
        except BaseExceptionGroup as exc:
            raise_unwrapped(exc, f"open_member({group!r})", raised)


def _check_size_hint(size_hint: object) -> None:
    if size_hint.__class__ is not int or size_hint < 0:  # type: ignore[operator,unused-ignore]
        raise ValueError(f"size_hint must be an int >= 0, got {size_hint!r}")


def _check_int(name: str, value: object, least: int, unit: str = "") -> int:
    """``value`` if it is an int (not a bool) of at least ``least``, else why not."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {least}{unit}, got {value!r}")
    if value < least:
        raise ValueError(f"{name} must be an int >= {least}{unit}, got {value!r}")
    return value


@asynccontextmanager
async def open_node(
    store: GroupStore,
    *,
    name: str | None = None,
    listen: str | None = None,
    advertise: str | None = None,
    cookie: str | bytes | None = None,
    ssl_context: ssl.SSLContext | None = None,
    ssl_client_context: ssl.SSLContext | None = None,
    heartbeat_interval: float = DEFAULT_HEARTBEAT,
    max_frame_size: int = DEFAULT_MAX_FRAME,
    max_message_size: int | None = None,
    max_send_queue: int | None = None,
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    store_outage_timeout: float | None = None,
) -> AsyncIterator[Node]:
    """A node for members of groups kept in ``store``, for the block's duration.

    Without ``listen`` every member lives in this process. With
    ``listen="host:port"`` (port 0 picks a free one; ``[::1]:0`` for IPv6)
    members of other nodes can reach this node's members over TCP.
    ``advertise="HOST"`` or ``"HOST:PORT"`` is the address peers dial: it
    goes into the node's name, and so into every member id on it and into
    the store; its port defaults to the bound one (``node.address`` says
    what peers dial, ``node.listen_address`` what was bound). Without it the
    listen host is advertised, so a wildcard ``listen`` (``0.0.0.0``,
    ``::``), which names no address, needs ``advertise`` and is a
    ``ValueError`` without it. A peer may dial any address that reaches
    the node: the handshake checks the cookie, not the address.
    A peer must prove it knows the node's cookie (HMAC challenge-response;
    the cookie is never sent) before anything it sends is accepted. A node
    always has a cookie: without ``cookie`` it reads the per-user cookie
    file, as Erlang's ``~/.erlang.cookie`` (``$TRIO_GM_COOKIE_FILE``, else
    ``$XDG_CONFIG_HOME/trio-gm/cookie``, else ``~/.config/trio-gm/cookie``),
    creating it with a random cookie (mode 0600) if it is missing; so nodes
    of one user on one host need no configuration and other users' nodes
    are refused. A cookie file that group or others can access, another
    user owns, or that is empty raises :class:`~trio_gm.CookieError` (a
    ValueError), as does ``cookie=""``. With TLS,
    ``ssl_context`` (a server context holding this node's certificate)
    wraps the connections it accepts and ``ssl_client_context`` (one that
    trusts the peers' certificates) those it dials; give both. A peer
    silent for ``heartbeat_interval`` seconds is declared down; frames above
    ``max_frame_size`` bytes (default 64 MiB) close their connection.

    ``max_message_size`` bounds one message as encoded: ``broadcast``
    refuses a larger one, naming both sizes. It defaults to 48 MiB (or less,
    to fit a smaller ``max_frame_size``: it must leave room for the rest of a
    frame, 64 KiB). Batches of messages are cut by encoded bytes, so no
    frame exceeds ``max_frame_size`` whatever the size hints say.

    What a peer can cost this node is bounded. ``max_send_queue`` (bytes,
    default four times ``max_frame_size`` and at least 256 MiB, so a burst
    of broadcasts does not trip it; no less than ``max_frame_size``) bounds
    what waits to be sent to one peer;
    a peer whose queue outgrows it, or whose socket takes nothing of it for
    ``heartbeat_interval`` seconds (it stopped reading), is declared down,
    as Erlang's net_ticktime does: sends never block the ring.
    ``max_handshakes`` (default 256) bounds the accepted connections still
    proving they know the cookie, each for at most 5 s; beyond it new
    connections are closed at once. Running out of file descriptors makes
    the node pause accepting (logged once), not fail.

    ``store_outage_timeout`` (seconds; default the store's ``outage_timeout``,
    30 s unless ``open_store`` was told otherwise) is how long this node's
    members outlive a store that is unreachable or locked. Delivery needs
    no store, so broadcasts and confirmed broadcasts among live members go
    on; a change of membership (a join, recording a death) waits for the
    store and then goes through. A member that still needs the store after
    that long stops, with the :class:`~trio_gm.StoreUnavailable` as its
    reason (``handle_terminate`` gets it; calls raise ``MemberStopped`` from
    it). See docs/store.md.
    """
    if not isinstance(store, GroupStore):
        raise TypeError(f"open_node needs a GroupStore (from open_store), got {store!r}")
    if store_outage_timeout is not None:
        store = store.with_outage_timeout(store_outage_timeout, name="store_outage_timeout")
    if listen is None:
        if (
            cookie is not None
            or ssl_context is not None
            or ssl_client_context is not None
            or advertise is not None
        ):
            raise ValueError(
                "cookie, advertise and TLS contexts only make sense with listen='host:port'"
            )
        node = Node(store, ActorNode(name))
        await trio.lowlevel.checkpoint()
        yield node
        return
    if (ssl_context is None) != (ssl_client_context is None):
        raise ValueError("TLS needs both ssl_context (to accept) and ssl_client_context (to dial)")
    host, port = split_address(listen)
    if advertise is not None:
        advertised_host, advertised_port = parse_advertise(advertise)
    elif is_wildcard(host):
        raise ValueError(
            f"listen={listen!r} binds every interface, so it names no address peers can "
            "dial, and this node's name (which every member id on it carries) must be one: "
            "also pass advertise='HOST' (or 'HOST:PORT'), this host's address as the other "
            "hosts reach it; from the command line, --advertise HOST"
        )
    else:
        advertised_host, advertised_port = host, None
    if not (heartbeat_interval > 0):
        raise ValueError(f"heartbeat_interval must be > 0 seconds, got {heartbeat_interval!r}")
    _check_int("max_frame_size", max_frame_size, 1024, " bytes")
    budget = frame_budget(max_frame_size)
    if max_message_size is None:
        max_message_size = min(DEFAULT_MAX_MESSAGE, budget)
    elif _check_int("max_message_size", max_message_size, 1, " bytes") > budget:
        raise ValueError(
            f"max_message_size must be between 1 and {budget} bytes with "
            f"max_frame_size={max_frame_size} (a frame needs room beyond its messages), "
            f"got {max_message_size}"
        )
    if max_send_queue is None:
        max_send_queue = default_send_queue(max_frame_size)
    else:
        _check_int(
            "max_send_queue", max_send_queue, max_frame_size, " bytes (a queue holds a frame)"
        )
    _check_int("max_handshakes", max_handshakes, 1)
    if cookie is not None and not isinstance(cookie, str | bytes):
        raise TypeError(f"cookie must be a str or bytes, got {type(cookie).__name__}")
    if cookie is None:
        secret = await load_cookie()
    else:
        secret = cookie.encode() if isinstance(cookie, str) else bytes(cookie)
        if not secret:
            raise CookieError(
                "cookie must not be empty: pass a secret, or leave cookie out to use "
                "the per-user cookie file"
            )
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    node_name = (
        f"{format_address(advertised_host, advertised_port or bound[1])}#{secrets.token_hex(4)}"
    )
    actors = ActorNode(node_name)
    transport = Transport(
        actors,
        Codec(internal_classes()),
        cookie=secret,
        heartbeat_interval=heartbeat_interval,
        max_frame_size=max_frame_size,
        ssl_context=ssl_context,
        ssl_client_context=ssl_client_context,
        max_send_queue=max_send_queue,
        max_handshakes=max_handshakes,
    )
    actors.remote = transport
    raised: BaseException | None = None
    try:
        async with trio.open_nursery(strict_exception_groups=True) as nursery:
            await nursery.start(transport.serve, listeners)
            try:
                yield Node(
                    store,
                    actors,
                    transport,
                    max_message_size=max_message_size,
                    listen_address=format_address(str(bound[0]), int(bound[1])),
                )
            except BaseException as exc:
                raised = exc
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as exc:
        raise_unwrapped(exc, f"open_node(listen={listen!r})", raised)
