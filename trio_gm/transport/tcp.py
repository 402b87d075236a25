"""Nodes talking over TCP: routing by id, authentication, remote monitors.

A :class:`Transport` plugs into an :class:`~trio_gm.actor.ActorNode` as its
``remote``: every message, call, reply and monitor for an id of another node
goes through it. Node names carry their address (``host:port#incarnation``),
so an id says where its actor lives; the first message to a node dials it,
and later ones reuse the connection.

What gm relies on from Erlang, and how it is kept here:

* **FIFO per pair of actors.** All traffic from this node to a peer goes on
  one connection, written in the order it was posted.
* **One connection per pair of nodes.** The node with the smaller name
  refuses a dial from a larger one while its own dial is under way or its
  connection is up; the larger accepts the smaller's dial at any time (it
  means the smaller lost the old connection). Nothing but the handshake is
  ever exchanged on a refused connection.
* **A DOWN after the dead actor's last message.** An actor's node sends its
  messages and then its DOWN on the same connection.
* **nodedown.** When a connection is lost (closed, reset, or silent for the
  heartbeat interval), every monitor on an actor of that node fires with
  reason ``"noconnection"``, calls to it fail, and every id of that node this
  node has seen is dead for good: a reconnect does not resurrect them.

Writes are coalesced: frames posted while the writer is busy go out in one
``send_all``. A frame that is malformed, oversized, or arrives before the
handshake is over closes its connection with a logged reason; the node and
its other connections carry on.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import ssl
import struct
from collections.abc import Iterable
from typing import Any, Final

import attrs
import trio

from .._ids import ActorId
from ..actor import ActorNode, Down, From, MonitorRef
from ..actor._node import CALL, CAST, INFO, NODE_WATCHER, Envelope
from .codec import Codec, CodecError
from .frames import (
    Call,
    CallReply,
    Challenge,
    Demonitor,
    DownFrame,
    Heartbeat,
    Hello,
    Monitor,
    Reject,
    Response,
    Send,
    Welcome,
)

log = logging.getLogger("trio_gm.transport")

_LENGTH: Final = struct.Struct(">I")
DEFAULT_MAX_FRAME: Final = 64 * 1024 * 1024
DEFAULT_HEARTBEAT: Final = 5.0
HANDSHAKE_TIMEOUT: Final = 5.0
CONNECT_TIMEOUT: Final = 5.0


class ConnectionLost(Exception):
    """Why a connection ended (logged; never escapes the transport)."""


@attrs.frozen
class TransportStatistics:
    """A snapshot of a node's network side."""

    address: str
    #: Names of the nodes this node has a live connection with.
    peers: tuple[str, ...]
    bytes_in: int
    bytes_out: int
    frames_in: int
    frames_out: int
    #: Connections established to a peer this node had been connected to before.
    reconnects: int
    #: Connections closed because of a bad, oversized or unauthenticated frame.
    refused: int


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or a node name ``"host:port#…"``) to ``(host, port)``."""
    hostport = address.split("#", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected an address 'host:port' with a port 0-65535, got {address!r}")
    return host.strip("[]"), int(port)


def _proof(cookie: bytes, role: bytes, *parts: bytes | str) -> bytes:
    mac = hmac.new(cookie, role, hashlib.sha256)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        mac.update(_LENGTH.pack(len(data)) + data)
    return mac.digest()


class _Connection:
    """One authenticated stream to a peer: a writer, a reader, heartbeats."""

    def __init__(
        self, transport: Transport, stream: trio.abc.Stream, peer: str, received: bytes
    ) -> None:
        self.transport = transport
        #: Bytes that arrived together with the last handshake frame.
        self.received = received
        self.stream = stream
        self.peer = peer
        self.out = bytearray()
        self.wake = trio.Event()
        self.closed = False
        self.scope = trio.CancelScope()

    def write(self, frame: bytes) -> None:
        self.out += _LENGTH.pack(len(frame))
        self.out += frame
        self.transport._frames_out += 1
        self.wake.set()

    async def run(self) -> None:
        self.reason = "closed"
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    for part in (self._writer, self._heartbeats, self._reader):
                        nursery.start_soon(self._guard, part, nursery.cancel_scope)
        finally:
            self.closed = True
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.stream.aclose()
            self.transport._lost(self, self.reason)

    async def _guard(self, part: Any, scope: trio.CancelScope) -> None:
        """Run one side of the connection; whichever ends first ends it all."""
        try:
            await part()
        except ConnectionLost as exc:
            self.reason = str(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.reason = f"{type(exc).__name__}: {exc}"
        scope.cancel()

    async def _writer(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            if not self.out:
                continue
            data = bytes(self.out)
            self.out.clear()
            await self.stream.send_all(data)
            self.transport._bytes_out += len(data)

    async def _heartbeats(self) -> None:
        beat = self.transport.codec.encode(Heartbeat())
        while True:
            await trio.sleep(self.transport.heartbeat_interval / 4)
            self.write(beat)

    async def _reader(self) -> None:
        transport = self.transport
        buffer = bytearray()
        limit = transport.max_frame_size
        data: bytes | bytearray = self.received
        while True:
            if not data:
                with trio.move_on_after(transport.heartbeat_interval) as scope:
                    data = await self.stream.receive_some(65536)
                if scope.cancelled_caught:
                    raise ConnectionLost(
                        f"no heartbeat from {self.peer} for {transport.heartbeat_interval}s"
                    )
                if not data:
                    raise ConnectionLost(f"{self.peer} closed the connection")
            transport._bytes_in += len(data)
            buffer += data
            data = b""
            while len(buffer) >= 4:
                (length,) = _LENGTH.unpack_from(buffer)
                if length > limit:
                    transport._refused += 1
                    raise ConnectionLost(
                        f"frame of {length} bytes from {self.peer} exceeds the "
                        f"limit of {limit} bytes"
                    )
                if len(buffer) < 4 + length:
                    break
                frame = bytes(buffer[4 : 4 + length])
                del buffer[: 4 + length]
                transport._frames_in += 1
                try:
                    value = transport.codec.decode(frame)
                except CodecError as exc:
                    transport._refused += 1
                    raise ConnectionLost(f"bad frame from {self.peer}: {exc}") from exc
                transport._dispatch(self.peer, value)


@attrs.define(eq=False)
class _Peer:
    name: str
    conn: _Connection | None = None
    #: Encoded frames waiting for a connection.
    pending: list[bytes] = attrs.Factory(list)
    dialing: bool = False
    ever_connected: bool = False
    #: Monitors held by our actors on actors there: ref -> (watcher, target).
    monitors: dict[MonitorRef, tuple[ActorId, ActorId]] = attrs.Factory(dict)
    #: Calls to actors there: tag -> (monitor ref guarding it, callee).
    calls: dict[int, tuple[MonitorRef, ActorId]] = attrs.Factory(dict)
    #: Ids of that node we have dealt with: dead for good once it is lost.
    seen: set[ActorId] = attrs.Factory(set)


class Transport:
    """The network side of one node."""

    def __init__(
        self,
        actors: ActorNode,
        codec: Codec,
        *,
        cookie: bytes,
        heartbeat_interval: float = DEFAULT_HEARTBEAT,
        max_frame_size: int = DEFAULT_MAX_FRAME,
        ssl_context: ssl.SSLContext | None = None,
        ssl_client_context: ssl.SSLContext | None = None,
    ) -> None:
        self.actors = actors
        self.codec = codec
        self.name = actors.name
        self.cookie = cookie
        self.heartbeat_interval = heartbeat_interval
        self.max_frame_size = max_frame_size
        self.ssl_context = ssl_context
        self.ssl_client_context = ssl_client_context
        self._peers: dict[str, _Peer] = {}
        self._dead: set[ActorId] = set()
        self._nursery: trio.Nursery | None = None
        self._bytes_in = self._bytes_out = self._frames_in = self._frames_out = 0
        self._reconnects = 0
        self._refused = 0
        self._node_watcher = ActorId(self.name, NODE_WATCHER)

    # -- lifetime ---------------------------------------------------------------

    async def serve(
        self, listeners: list[trio.SocketListener], *, task_status: trio.TaskStatus[None]
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener)
            task_status.started()
            await trio.sleep_forever()

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                stream = await listener.accept()
                assert self._nursery is not None
                self._nursery.start_soon(self._accepted, stream)

    def _wrap(self, stream: trio.abc.Stream, server_side: bool, host: str = "") -> trio.abc.Stream:
        context = self.ssl_context if server_side else self.ssl_client_context
        if context is None:
            return stream
        return trio.SSLStream(
            stream,
            context,
            server_side=server_side,
            server_hostname=None if server_side else host,
        )

    # -- handshake ------------------------------------------------------------

    async def _read_frame(self, stream: trio.abc.Stream, buffer: bytearray) -> Any:
        while True:
            if len(buffer) >= 4:
                (length,) = _LENGTH.unpack_from(buffer)
                if length > 4096:
                    raise ConnectionLost(f"handshake frame of {length} bytes")
                if len(buffer) >= 4 + length:
                    frame = bytes(buffer[4 : 4 + length])
                    del buffer[: 4 + length]
                    return self.codec.decode(frame)
            data = await stream.receive_some(4096)
            if not data:
                raise ConnectionLost("closed during the handshake")
            buffer += data

    async def _send_frame(self, stream: trio.abc.Stream, value: Any) -> None:
        frame = self.codec.encode(value)
        await stream.send_all(_LENGTH.pack(len(frame)) + frame)

    async def _accepted(self, raw: trio.SocketStream) -> None:
        stream = self._wrap(raw, server_side=True)
        adopted = False
        try:
            adopted = await self._accept_handshake(stream)
        except (ConnectionLost, CodecError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            self._refused += 1
            log.warning("%s refused an incoming connection: %s", self.name, exc)
        finally:
            if not adopted:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.aclose()

    async def _accept_handshake(self, stream: trio.abc.Stream) -> bool:
        """Authenticate a dialer; return whether its connection was adopted."""
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            buffer = bytearray()
            hello = await self._read_frame(stream, buffer)
            if type(hello) is not Hello:
                raise ConnectionLost(f"expected Hello, got {type(hello).__name__}")
            nonce = secrets.token_bytes(16)
            proof = _proof(self.cookie, b"acceptor", hello.nonce, nonce, hello.name, self.name)
            await self._send_frame(stream, Challenge(self.name, nonce, proof))
            response = await self._read_frame(stream, buffer)
            if type(response) is not Response:
                raise ConnectionLost(f"expected Response, got {type(response).__name__}")
            expected = _proof(self.cookie, b"dialer", nonce, hello.nonce, hello.name, self.name)
            if not hmac.compare_digest(response.proof, expected):
                raise ConnectionLost(f"{hello.name} does not know the cookie")
            peer = self._peer(hello.name)
            live = peer.conn is not None and not peer.conn.closed
            if self.name < hello.name and (peer.dialing or live):
                # One connection per pair: the one dialed by the smaller name
                # wins. A larger peer's dial is refused while ours is under
                # way or up (if the peer lost ours, it retries until our
                # heartbeat check notices).
                await self._send_frame(
                    stream, Reject("the connection dialed by the smaller name wins")
                )
                return False
        # Adopt at once, Welcome first in the new connection's output: with
        # an await between the check above and the adoption, this node could
        # start a dial of its own meanwhile, and the peer would take that
        # second connection for a reconnect and declare this node down.
        self._adopt(peer, stream, buffer, first=self.codec.encode(Welcome()))
        return True

    async def _dial(self, peer: _Peer) -> None:
        try:
            outcome = await self._dial_once(peer)
        except (
            OSError,
            ConnectionLost,
            CodecError,
            trio.TooSlowError,
            trio.BrokenResourceError,
        ) as exc:
            peer.dialing = False
            if peer.conn is None:
                self._peer_down(peer, f"cannot connect to {peer.name}: {exc}")
            return
        peer.dialing = False
        if outcome == "rejected":
            # The peer's own dial wins; its connection brings the link up.
            # Should that dial fail, ours tries again.
            await trio.sleep(HANDSHAKE_TIMEOUT)
            if peer.conn is None and peer.pending and not peer.dialing:
                peer.dialing = True
                await self._dial(peer)

    async def _dial_once(self, peer: _Peer) -> str:
        host, port = split_address(peer.name)
        with trio.fail_after(CONNECT_TIMEOUT + HANDSHAKE_TIMEOUT):
            raw = await trio.open_tcp_stream(host, port)
        stream = self._wrap(raw, server_side=False, host=host)
        adopted = False
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                nonce = secrets.token_bytes(16)
                await self._send_frame(stream, Hello(self.name, nonce))
                buffer = bytearray()
                challenge = await self._read_frame(stream, buffer)
                if type(challenge) is not Challenge:
                    raise ConnectionLost(f"expected Challenge, got {type(challenge).__name__}")
                if challenge.name != peer.name:
                    raise ConnectionLost(f"dialed {peer.name} but {challenge.name} answered")
                expected = _proof(
                    self.cookie, b"acceptor", nonce, challenge.nonce, self.name, peer.name
                )
                if not hmac.compare_digest(challenge.proof, expected):
                    raise ConnectionLost(f"{peer.name} does not know the cookie")
                proof = _proof(self.cookie, b"dialer", challenge.nonce, nonce, self.name, peer.name)
                await self._send_frame(stream, Response(proof))
                verdict = await self._read_frame(stream, buffer)
            if type(verdict) is Reject:
                return "rejected"
            if type(verdict) is not Welcome:
                raise ConnectionLost(f"unexpected handshake answer {verdict!r}")
            peer.dialing = False
            self._adopt(peer, stream, buffer)
            adopted = True
            return "adopted"
        finally:
            if not adopted:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.aclose()

    def _adopt(
        self, peer: _Peer, stream: trio.abc.Stream, leftover: bytearray, first: bytes = b""
    ) -> None:
        old = peer.conn
        if old is not None and not old.closed:
            # The peer dialed again: it lost the old connection.
            old.scope.cancel()
            self._peer_down(peer, "the peer reconnected")
        if peer.ever_connected:
            self._reconnects += 1
        peer.ever_connected = True
        conn = _Connection(self, stream, peer.name, bytes(leftover))
        peer.conn = conn
        if first:
            conn.write(first)
        for frame in peer.pending:
            conn.write(frame)
        peer.pending.clear()
        assert self._nursery is not None
        self._nursery.start_soon(conn.run)

    # -- losing a peer ----------------------------------------------------------

    def _lost(self, conn: _Connection, reason: str) -> None:
        peer = self._peers.get(conn.peer)
        if peer is None or peer.conn is not conn:
            return
        log.info("%s lost %s: %s", self.name, conn.peer, reason)
        self._peer_down(peer, reason)

    def _peer_down(self, peer: _Peer, reason: str) -> None:
        """Treat every actor of ``peer`` as dead (Erlang's nodedown)."""
        peer.conn = None
        peer.pending.clear()
        self._dead |= peer.seen
        monitors, peer.monitors = peer.monitors, {}
        for ref, (watcher, target) in monitors.items():
            self.actors.post(watcher, (INFO, Down(ref, target, "noconnection"), None))
        calls, peer.calls = peer.calls, {}
        self.actors.fail_callers(set(calls), "noconnection")
        # (a call's guard monitor goes with it)
        for cell in list(self.actors._cells.values()):
            for ref, watcher in list(cell.watchers.items()):
                if watcher.node == peer.name:
                    del cell.watchers[ref]
        if reason:
            log.info("%s: node %s is down (%s)", self.name, peer.name, reason)

    # -- sending --------------------------------------------------------------

    def _peer(self, name: str) -> _Peer:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = _Peer(name)
        return peer

    def _send(self, node: str, value: Any) -> bool:
        try:
            frame = self.codec.encode(value)
        except TypeError as exc:
            log.error("%s cannot send %r to %s: %s", self.name, type(value).__name__, node, exc)
            return False
        peer = self._peer(node)
        if peer.conn is not None:
            peer.conn.write(frame)
            return True
        peer.pending.append(frame)
        if not peer.dialing and self._nursery is not None:
            peer.dialing = True
            self._nursery.start_soon(self._dial, peer)
        return True

    def post(self, to: ActorId, envelope: Envelope) -> bool:
        if to in self._dead:
            return False
        kind, payload, _ = envelope
        self._peer(to.node).seen.add(to)
        if kind == INFO and type(payload) is Down:
            reason = payload.reason if isinstance(payload.reason, str) else repr(payload.reason)
            return self._send(to.node, DownFrame(payload.ref, to, payload.target, reason))
        if kind in (CAST, INFO):
            return self._send(to.node, Send(to, kind == INFO, payload))
        raise ValueError(f"cannot post envelope kind {kind} to another node")

    def call(self, to: ActorId, request: Any, from_: From) -> None:
        if to in self._dead:
            self.actors.fail_callers({from_.tag}, "noconnection")
            return
        peer = self._peer(to.node)
        peer.seen.add(to)
        ref = self.actors.new_monitor_ref()
        peer.calls[from_.tag] = (ref, to)
        self._send(to.node, Monitor(ref, self._node_watcher, to))
        self._send(to.node, Call(to, request, from_.tag))

    def call_done(self, from_: From) -> None:
        for peer in self._peers.values():
            guard = peer.calls.pop(from_.tag, None)
            if guard is not None:
                if peer.conn is not None:
                    self._send(peer.name, Demonitor(*guard))
                return

    def reply(self, from_: From, value: Any) -> None:
        self._send(from_.node, CallReply(from_.tag, value))

    def monitor(self, watcher: ActorId, target: ActorId, ref: MonitorRef) -> None:
        peer = self._peer(target.node)
        if target in self._dead:
            self.actors.post(watcher, (INFO, Down(ref, target, "noconnection"), None))
            return
        peer.seen.add(target)
        peer.monitors[ref] = (watcher, target)
        self._send(target.node, Monitor(ref, watcher, target))

    def demonitor(self, ref: MonitorRef, target: ActorId) -> None:
        peer = self._peers.get(target.node)
        if peer is not None and peer.monitors.pop(ref, None) is not None:
            self._send(target.node, Demonitor(ref, target))

    # -- receiving --------------------------------------------------------------

    def _dispatch(self, node: str, frame: Any) -> None:
        cls = type(frame)
        actors = self.actors
        if cls is Send:
            if frame.to.node == self.name:
                actors.post(frame.to, (INFO if frame.info else CAST, frame.msg, None))
        elif cls is Heartbeat:
            pass
        elif cls is Call:
            cell = actors.cell(frame.to)
            if cell is not None and not cell.mailbox.closed:
                cell.mailbox.send_nowait((CALL, frame.request, From(node, frame.tag)))
        elif cls is CallReply:
            actors.reply(From(self.name, frame.tag), frame.value)
        elif cls is Monitor:
            self._peer(node).seen.add(frame.watcher)
            cell = actors.cell(frame.target)
            if cell is None or cell.stopping or frame.target.node != self.name:
                self._send(node, DownFrame(frame.ref, frame.watcher, frame.target, "noproc"))
            else:
                cell.watchers[frame.ref] = frame.watcher
        elif cls is Demonitor:
            cell = actors.cell(frame.target)
            if cell is not None:
                cell.watchers.pop(frame.ref, None)
        elif cls is DownFrame:
            peer = self._peer(node)
            if frame.watcher == self._node_watcher:
                for tag, (ref, _callee) in list(peer.calls.items()):
                    if ref == frame.ref:
                        del peer.calls[tag]
                        actors.fail_callers({tag}, frame.reason)
                return
            if peer.monitors.pop(frame.ref, None) is not None:
                actors.post(
                    frame.watcher, (INFO, Down(frame.ref, frame.target, frame.reason), None)
                )
        else:
            raise ConnectionLost(f"unexpected {cls.__name__} frame from {node}")

    # -- introspection ----------------------------------------------------------

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            address=self.name,
            peers=tuple(sorted(p.name for p in self._peers.values() if p.conn is not None)),
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            frames_in=self._frames_in,
            frames_out=self._frames_out,
            reconnects=self._reconnects,
            refused=self._refused,
        )


def internal_classes() -> Iterable[type]:
    """Every trio_gm class that crosses the wire, in a fixed order (the tags)."""
    from ..actor import MonitorRef as _MonitorRef
    from ..ring import messages
    from ..store import Group, GroupMember
    from . import frames

    return (
        _MonitorRef,
        *frames.FRAMES,
        messages.Activity,
        messages.ActivityEntry,
        messages.Catchup,
        messages.CheckNeighbours,
        messages.MemberSnapshot,
        messages.AddOnRight,
        messages.NotReady,
        Group,
        GroupMember,
    )
