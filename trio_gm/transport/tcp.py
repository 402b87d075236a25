"""Nodes talking over TCP: routing by id, authentication, remote monitors.

To build raw frames in tests (a hostile peer, a hand-made handshake), use
:func:`wire_frame` for the frames after the handshake and a 4-byte length
prefix (``_LENGTH``) for the handshake frames; the wire format is below.

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
``send_all`` (up to a chunk's worth). A frame that is malformed, oversized,
or arrives before the handshake is over closes its connection with a logged
reason; the node and its other connections carry on.

What a peer may send
--------------------

No frame a peer sends may crash this node: whatever one connection does
ends that connection alone. Every decoded value has the field types its
class declares (:mod:`.validate`), or its frame is malformed.

* **Before the proof checks out** a peer may send a ``Hello`` and then a
  ``Response``, nothing else. The ``Hello`` carries a 16-byte nonce and a
  node name that is not empty, at most 255 printable characters, parsed by
  :func:`split_address`, and not this node's own; the ``Response`` a
  32-byte proof (the dialer checks the ``Challenge`` alike). Any other
  frame, a field of the wrong type or size, bytes that do not decode, a
  wrong cookie, a timeout, or any exception at all fails the handshake: the
  connection is closed, counted in ``rejected_handshakes`` and logged once
  at WARNING with the peer's address (the traceback too, for an exception
  of a kind not expected).
* **After it**, a frame must also make sense where it arrives. A handshake
  frame, a value that is not a frame, or a frame naming the wrong node
  closes the connection (a nodedown, as any lost connection): a ``Send``,
  ``Call``, ``Monitor`` or ``Demonitor`` for an actor not on this node, a
  ``Monitor`` whose watcher or ref is not the sender's, a ``Demonitor``
  whose ref is not the sender's, a ``DownFrame`` whose watcher or ref is
  not this node's or whose target is not the sender's. A correct peer
  never sends these, so they are a broken peer, not a message to ignore:
  ignoring would hide the bug, and acting on them would let a peer drop
  this node's own monitors or make it dial an address of the peer's
  choosing. (A ``CallReply`` may come from any node, as ``gen_server:reply``
  from whichever process the callee handed ``From`` to; it only ever
  completes a call of this node.) An exception raised while handling a
  frame closes its connection too, logged with its traceback.

``malformed_frames`` counts the frames that failed to decode, to validate,
or to make sense where they arrived, in either phase; ``refused`` counts
every connection closed for cause (the rejected handshakes included).

The wire format
---------------

The handshake (:mod:`.frames`) is a few frames of at most 4096 bytes, each a
4-byte big-endian length then one encoded value. The acceptor's ``Welcome``
is the last frame in that framing; everything after it, both ways, is a
sequence of *records*, each a 5-byte header (1-byte kind, 4-byte big-endian
length) then ``length`` bytes:

====== ========= ==========================================================
kind   name      body
====== ========= ==========================================================
0      ``WHOLE`` one whole encoded frame
1      ``MORE``  a chunk of an encoded frame; more chunks follow
2      ``LAST``  the last chunk of that frame (the chunks, joined, are it)
3      ``BEAT``  none (length 0): a heartbeat
====== ========= ==========================================================

A frame up to :data:`CHUNK_SIZE` (256 KiB) goes as one ``WHOLE`` record;
a larger one as ``MORE`` records and a ``LAST``, each at most a chunk. Only
``BEAT`` records may come between the chunks of one frame, so frames keep
their order and a 40 MB frame holds a heartbeat back by one chunk at most.
:func:`wire_frame` turns an encoded frame into its records.

What a peer can make this node hold, and for how long:

* **Frames in.** A frame (whole, or its chunks so far plus the next chunk's
  announced length) above ``max_frame_size`` closes the connection as soon
  as its header says so, before its body is read. Any bytes received count
  as liveness; none for ``heartbeat_interval`` seconds is a nodedown.
* **Frames out.** ``write`` never blocks (a ring send must not): frames
  queue per connection, and per peer while it is dialed. A queue above
  ``max_send_queue`` bytes (default four frame budgets, at least 256 MiB), or a
  socket that has not taken the piece being written (at most a chunk) for
  ``heartbeat_interval`` seconds (the peer stopped reading: Erlang's
  net_ticktime on a busy port), is a nodedown; the queue is dropped with
  the connection. So a peer must read at least a chunk per interval (51
  KB/s with the defaults).
* **Handshakes.** At most ``max_handshakes`` (default 256) accepted
  connections may be in their handshake at once, each for at most
  ``handshake_timeout`` seconds; a connection beyond that is closed at
  once. When ``accept`` fails for want of file descriptors or memory
  (EMFILE, ENFILE, ENOBUFS, ENOMEM) the node logs once per burst and tries
  again every 0.1 s, as :func:`trio.serve_listeners` does.
"""

from __future__ import annotations

import errno
import logging
import os
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import attrs
import trio

from .._ids import ActorId
from ..actor import ActorNode, Down, From, MonitorRef
from ..actor._node import CAST, INFO, NODE_WATCHER, Envelope
from .codec import Codec, CodecError

# (Several of these are here for tests and tools that build raw frames.)
from .frames import _BEAT_RECORD as _BEAT_RECORD
from .frames import _HEADER as _HEADER
from .frames import _LENGTH as _LENGTH
from .frames import BEAT as BEAT
from .frames import DEFAULT_MAX_FRAME as DEFAULT_MAX_FRAME
from .frames import LAST as LAST
from .frames import MAX_HANDSHAKE_FRAME as MAX_HANDSHAKE_FRAME
from .frames import MORE as MORE
from .frames import WHOLE as WHOLE
from .frames import (
    Call,
    CallReply,
    Demonitor,
    DownFrame,
    FrameDecoder,
    FrameError,
    Heartbeat,
    Monitor,
    Send,
)
from .handshake import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from .handshake import NONCE_SIZE as NONCE_SIZE
from .handshake import PROOF_SIZE as PROOF_SIZE
from .handshake import Handshake, HandshakeFailed, Phase
from .handshake import _proof as _proof
from .handshake import split_address as split_address

log = logging.getLogger("trio_gm.transport")
#: Frames above this go in chunks of this, with heartbeats free to pass
#: between them; it also caps what one ``send_all`` carries. 256 KiB: a
#: chunk costs one system call per 256 KiB (nothing, beside the copy) and
#: holds a heartbeat back by well under a millisecond on a LAN.
CHUNK_SIZE: Final = 256 * 1024
DEFAULT_HEARTBEAT: Final = 5.0
HANDSHAKE_TIMEOUT: Final = 5.0
CONNECT_TIMEOUT: Final = 5.0
#: Accepted connections that may be in their handshake at once.
DEFAULT_MAX_HANDSHAKES: Final = 256
#: ``max_send_queue`` is this many frame budgets unless given (and at least
#: :data:`MIN_DEFAULT_SEND_QUEUE`): room for a frame at the budget and a few
#: more behind it while it drains.
SEND_QUEUE_FRAMES: Final = 4
#: The smallest default ``max_send_queue``: a burst of broadcasts (flow
#: control counts messages, not bytes) must not trip it with small frames.
MIN_DEFAULT_SEND_QUEUE: Final = 256 * 1024 * 1024


def default_send_queue(max_frame_size: int) -> int:
    """``max_send_queue`` unless given: four frame budgets, at least 256 MiB."""
    return max(MIN_DEFAULT_SEND_QUEUE, SEND_QUEUE_FRAMES * max_frame_size)


#: ``accept`` errors that mean "out of descriptors or memory, for now".
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
)
_ACCEPT_PAUSE: Final = 0.1


class ConnectionLost(Exception):
    """Why a connection ended (logged; never escapes the transport)."""


class UnsendableFrame(RuntimeError):
    """A frame this node was asked to send cannot be encoded or is too large.

    Raised in the sending actor, which stops: a bug (or a catch-up larger
    than ``max_frame_size``), never a silent drop.
    """


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
    #: Connections closed for cause: every rejected handshake, and every
    #: authenticated connection closed for a bad, oversized or unexpected frame.
    refused: int
    #: Frames that failed to decode, to validate, or to make sense where they
    #: arrived (a non-handshake frame in the handshake, a handshake frame
    #: after it, a frame naming the wrong node), before or after the handshake.
    malformed_frames: int
    #: Handshakes that failed for any reason, either way: wrong cookie, bad or
    #: unexpected frame, timeout, over the cap of concurrent handshakes.
    rejected_handshakes: int
    #: Bytes queued for peers and not yet taken by their sockets (connections
    #: and dials): what slow peers cost this node now.
    send_queue_bytes: int = 0


#: How a handshake with a bad, slow or vanishing peer ends; anything else is
#: unexpected and logged with its traceback.
_HANDSHAKE_FAILURES: Final = (
    ConnectionLost,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
)


def peer_address(stream: trio.abc.Stream) -> str:
    """``host:port`` of the other end of ``stream`` (through TLS), for the logs."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    try:
        address = stream.socket.getpeername()  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return "an unknown address"
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def wire_frame(data: bytes, *, chunk_size: int = CHUNK_SIZE) -> bytes:
    """The records that carry the encoded frame ``data`` after the handshake.

    One ``WHOLE`` record if ``data`` fits in ``chunk_size`` bytes, else
    ``MORE`` records and a ``LAST`` of at most ``chunk_size`` bytes each: what
    a connection writes for it, less the heartbeats it may put between the
    chunks.
    """
    if len(data) <= chunk_size:
        return _HEADER.pack(WHOLE, len(data)) + data
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for start in range(0, len(data), chunk_size):
        end = min(start + chunk_size, len(data))
        parts += (_HEADER.pack(LAST if end == len(data) else MORE, end - start), view[start:end])
    return b"".join(parts)


class _Connection:
    """One authenticated stream to a peer: a writer, a reader, heartbeats.

    :meth:`write` queues an encoded frame and returns at once. The writer
    task sends the queue in pieces of at most a chunk (several whole small
    frames, or one chunk of a large frame), with a heartbeat record in front
    of a piece whenever one is due. The queue is bounded in bytes and must
    keep draining (see the module docstring); a connection that breaks
    either rule ends, and its nodedown follows.
    """

    def __init__(
        self,
        transport: Transport,
        stream: trio.abc.Stream,
        peer: str,
        received: bytes,
        preamble: bytes = b"",
    ) -> None:
        self.transport = transport
        #: Bytes that arrived together with the last handshake frame.
        self.received = received
        #: Bytes sent before any record (the acceptor's Welcome, in handshake framing).
        self.preamble = preamble
        self.stream = stream
        self.peer = peer
        #: Encoded frames not yet sent in full, oldest first.
        self.frames: deque[bytes] = deque()
        #: How much of ``frames[0]`` has been sent (a large frame under way).
        self.offset = 0
        #: Bytes of frames the socket has not taken yet (the piece being sent included).
        self.queued = 0
        self.beat_due = False
        #: Whether the writer is in ``send_all``, and since when.
        self.sending = False
        self.sending_since = 0.0
        self.wake = trio.Event()
        self.closed = False
        self.reason = "closed"
        self.scope = trio.CancelScope()

    def write(self, frame: bytes) -> None:
        """Queue ``frame``; never blocks (a full queue ends the connection)."""
        if self.closed:
            return
        transport = self.transport
        self.frames.append(frame)
        self.queued += len(frame)
        if self.queued > transport.max_send_queue:
            self.abort(
                f"{self.queued} bytes queued for {self.peer}, more than "
                f"max_send_queue={transport.max_send_queue}: it is not keeping up"
            )
            return
        if self.queued > transport._send_queue_peak:
            transport._send_queue_peak = self.queued
        transport._frames_out += 1
        self.wake.set()

    def abort(self, reason: str) -> None:
        """End the connection now, dropping what it holds (a nodedown follows)."""
        if self.closed:
            return
        log.warning("%s drops its connection to %s: %s", self.transport.name, self.peer, reason)
        self.reason = reason
        self.closed = True
        self.frames.clear()
        self.offset = self.queued = 0
        self.scope.cancel()

    async def run(self) -> None:
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    for part in (self._writer, self._heartbeats, self._reader):
                        nursery.start_soon(self._guard, part, nursery.cancel_scope)
        finally:
            self.closed = True
            self.frames.clear()
            self.offset = self.queued = 0
            try:
                # The nodedown first: it must not wait for a close that may
                # take a while (TLS sends close_notify to a peer not reading).
                self.transport._lost(self, self.reason)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await self.stream.aclose()

    async def _guard(self, part: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        """Run one side of the connection; whichever ends first ends it all."""
        try:
            await part()
        except ConnectionLost as exc:
            reason = str(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:  # pragma: no cover - every part loops until it fails or is cancelled
            reason = "closed"
        if not self.closed:
            self.reason = reason
        scope.cancel()

    async def _writer(self) -> None:
        transport = self.transport
        stream = self.stream
        frames = self.frames
        pack = _HEADER.pack
        if self.preamble:
            await stream.send_all(self.preamble)
            transport._bytes_out += len(self.preamble)
            self.preamble = b""
        while True:
            if not frames and not self.beat_due:
                await self.wake.wait()
                self.wake = trio.Event()
                continue
            chunk = transport.chunk_size
            parts: list[bytes | memoryview] = []
            if self.beat_due:
                self.beat_due = False
                parts.append(_BEAT_RECORD)
                if self.offset:
                    transport._beats_between_chunks += 1
            size = 0
            if frames:
                head = frames[0]
                if len(head) > chunk:
                    # One chunk of a large frame, alone: a heartbeat may
                    # follow it, a frame posted after this one may not.
                    start = self.offset
                    end = min(start + chunk, len(head))
                    if end == len(head):
                        frames.popleft()
                        self.offset = 0
                        kind = LAST
                    else:
                        self.offset = end
                        kind = MORE
                    parts += (pack(kind, end - start), memoryview(head)[start:end])
                    size = end - start
                else:
                    while True:
                        frames.popleft()
                        parts += (pack(WHOLE, len(head)), head)
                        size += len(head)
                        if not frames:
                            break
                        head = frames[0]
                        if size + len(head) > chunk:
                            break
            data = b"".join(parts)
            self.sending_since = trio.current_time()
            self.sending = True
            await stream.send_all(data)
            self.sending = False
            self.queued -= size
            transport._bytes_out += len(data)

    async def _heartbeats(self) -> None:
        transport = self.transport
        while True:
            interval = transport.heartbeat_interval
            await trio.sleep(interval / 4)
            since = self.sending_since
            if self.sending and trio.current_time() - since > interval:
                # Our own loop may have been too busy to run the writer: give
                # it a turn before blaming the peer.
                await trio.lowlevel.checkpoint()
                if self.sending and self.sending_since == since:
                    raise ConnectionLost(
                        f"{self.peer} took no piece of the {self.queued} bytes queued for "
                        f"it for {interval}s: it stopped reading"
                    )
            self.beat_due = True
            self.wake.set()

    async def _receive_or_silence(self) -> bytes | bytearray:
        """The next bytes from the peer; ``ConnectionLost`` after ``heartbeat_interval`` of silence.

        Silence is judged by a check that runs every quarter interval and
        counts only when it ran on time: if this process's own loop was
        stalled (a large frame decoded, a busy machine), the peer's bytes
        may be waiting unread, or a peer in this very process may not have
        had its turn to beat. A stalled loop delays the verdict by a quarter
        interval at a time; it never makes one.
        """
        interval = self.transport.heartbeat_interval
        tick = interval / 4
        heard = trio.current_time()
        due = heard + tick
        while True:
            with trio.move_on_at(due) as scope:
                data = await self.stream.receive_some(65536)
            if not scope.cancelled_caught:
                return data
            now = trio.current_time()
            if now - due > tick:
                # Woke late: our own loop stalled, which says nothing of the
                # peer. Give it half an interval (two beats) from now.
                heard = max(heard, now - interval / 2)
            elif now - heard >= interval:
                raise ConnectionLost(f"no heartbeat from {self.peer} for {interval}s")
            due = now + tick

    def _refuse(self, what: str) -> ConnectionLost:
        transport = self.transport
        transport._refused += 1
        transport._malformed_frames += 1
        return ConnectionLost(f"{what} from {self.peer}")

    async def _reader(self) -> None:
        transport = self.transport
        decode = transport.codec.decode
        decoder = FrameDecoder(transport.max_frame_size)
        decoder.feed(self.received)
        self.received = b""
        next_frame = decoder.next_frame
        feed = decoder.feed
        while True:
            try:
                body = next_frame()
            except FrameError as exc:
                # An oversized frame is refused on its header: a hostile
                # peer cannot make us hold more than the limit.
                raise self._refuse(f"{exc}," if exc.oversize else str(exc)) from None
            if body is None:
                data = await self._receive_or_silence()
                if not data:
                    raise ConnectionLost(f"{self.peer} closed the connection")
                transport._bytes_in += len(data)
                feed(data)
                continue
            transport._frames_in += 1
            try:
                value = decode(body)
            except CodecError as exc:
                raise self._refuse(f"bad frame ({exc})") from exc
            transport._dispatch(self.peer, value)
            if self.closed:  # aborted meanwhile: nothing more from it
                return


@attrs.define(eq=False)
class _Peer:
    name: str
    conn: _Connection | None = None
    #: Encoded frames waiting for a connection, and their size (bounded as
    #: a connection's queue is: ``max_send_queue``).
    pending: list[bytes] = attrs.Factory(list)
    pending_bytes: int = 0
    dialing: bool = False
    ever_connected: bool = False
    #: Monitors held by our actors on actors there: ref -> (watcher, target).
    monitors: dict[MonitorRef, tuple[ActorId, ActorId]] = attrs.Factory(dict)
    #: Calls to actors there: tag -> (monitor ref guarding it, callee).
    calls: dict[int, tuple[MonitorRef, ActorId]] = attrs.Factory(dict)
    #: Ids of that node we have dealt with: dead for good once it is lost.
    seen: set[ActorId] = attrs.Factory(set)


class Transport:
    """The network side of one node.

    The limits (module docstring): ``max_send_queue`` (bytes per peer;
    default :func:`default_send_queue`),
    ``max_handshakes`` (accepted connections in their handshake at once),
    ``handshake_timeout`` (seconds, either way) and ``chunk_size`` (bytes
    per chunk of a large frame, and per ``send_all``). The last two are
    attributes a test may lower; :func:`~trio_gm.open_node` exposes the
    first two.
    """

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
        max_send_queue: int | None = None,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.actors = actors
        self.codec = codec
        self.name = actors.name
        self.cookie = cookie
        self.heartbeat_interval = heartbeat_interval
        self.max_frame_size = max_frame_size
        self.ssl_context = ssl_context
        self.ssl_client_context = ssl_client_context
        #: Bytes queued for one peer (connection or dial) beyond which it is down.
        self.max_send_queue = (
            default_send_queue(max_frame_size) if max_send_queue is None else max_send_queue
        )
        self.max_handshakes = max_handshakes
        self.handshake_timeout = handshake_timeout
        self.chunk_size = chunk_size
        #: Accepted connections in their handshake now.
        self._handshakes = 0
        self._capped = False
        #: The most bytes one connection has held queued.
        self._send_queue_peak = 0
        #: Heartbeats sent between the chunks of a large frame.
        self._beats_between_chunks = 0
        self._peers: dict[str, _Peer] = {}
        self._dead: set[ActorId] = set()
        self._nursery: trio.Nursery | None = None
        self._bytes_in = self._bytes_out = self._frames_in = self._frames_out = 0
        self._reconnects = 0
        #: Authenticated connections closed for cause; ``statistics().refused``
        #: adds ``_rejected_handshakes`` (so count a handshake in that alone).
        self._refused = 0
        self._malformed_frames = 0
        self._rejected_handshakes = 0
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
        # Not trio.serve_listeners: it logs every failed attempt, and it
        # would start a handler for every connection, where we cap those in
        # their handshake and adopt the others into our own nursery.
        async with listener:
            failures = 0  # attempts failed in the current burst
            since = 0.0
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    if not failures:
                        since = trio.current_time()
                        log.error(
                            "%s cannot accept connections: %s (%s); trying again every %ss",
                            self.name,
                            errno.errorcode.get(exc.errno, exc.errno),
                            os.strerror(exc.errno),
                            _ACCEPT_PAUSE,
                        )
                    failures += 1
                    await trio.sleep(_ACCEPT_PAUSE)
                    continue
                if failures:
                    log.warning(
                        "%s accepts connections again, after %d failed attempts in %.1fs",
                        self.name,
                        failures,
                        trio.current_time() - since,
                    )
                    failures = 0
                if self._handshakes >= self.max_handshakes:
                    self._rejected_handshakes += 1
                    if not self._capped:
                        self._capped = True
                        log.warning(
                            "%s has %d connections in their handshake: closing new ones "
                            "until one is done",
                            self.name,
                            self._handshakes,
                        )
                    await stream.aclose()
                    continue
                self._capped = False
                self._handshakes += 1
                assert self._nursery is not None
                self._nursery.start_soon(self._handshake, stream)

    async def _handshake(self, stream: trio.SocketStream) -> None:
        try:
            await self._accepted(stream)
        finally:
            self._handshakes -= 1

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

    async def _shake(self, stream: trio.abc.Stream, handshake: Handshake) -> None:
        """Drive ``handshake`` over ``stream`` until no frame from the peer is due.

        Raises ``ConnectionLost`` for a peer that fails it (counting a
        malformed frame if a frame was at fault) or closes the connection.
        The caller bounds the time it takes.
        """
        try:
            data = handshake.data_to_send()
            if data:
                await stream.send_all(data)
            while handshake.expecting:
                if not handshake.step():
                    received = await stream.receive_some(MAX_HANDSHAKE_FRAME)
                    if not received:
                        raise ConnectionLost("closed during the handshake")
                    handshake.receive_data(received)
                    continue
                data = handshake.data_to_send()
                if data:
                    await stream.send_all(data)
        except HandshakeFailed as exc:
            if exc.malformed:
                self._malformed_frames += 1
            raise ConnectionLost(str(exc)) from None

    def _handshake_failed(self, what: str, exc: Exception) -> None:
        """Count and log (once, at WARNING) a handshake that failed with ``exc``."""
        self._rejected_handshakes += 1
        if isinstance(exc, trio.TooSlowError):
            log.warning("%s: no handshake within %ss", what, self.handshake_timeout)
        elif isinstance(exc, _HANDSHAKE_FAILURES):
            log.warning("%s: %s", what, exc or type(exc).__name__)
        else:
            log.warning("%s: unexpected %s: %s", what, type(exc).__name__, exc, exc_info=exc)

    async def _accepted(self, raw: trio.SocketStream) -> None:
        address = peer_address(raw)
        stream: trio.abc.Stream = raw
        adopted = False
        try:
            stream = self._wrap(raw, server_side=True)
            adopted = await self._accept_handshake(stream)
        except Exception as exc:
            # Whatever one dialer does ends its own connection, nothing else
            # (trio.Cancelled is not an Exception: it passes).
            self._handshake_failed(f"{self.name} rejected a connection from {address}", exc)
        finally:
            if not adopted:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.aclose()

    async def _accept_handshake(self, stream: trio.abc.Stream) -> bool:
        """Authenticate a dialer; return whether its connection was adopted."""
        handshake = Handshake.acceptor(self.codec, name=self.name, cookie=self.cookie)
        with trio.fail_after(self.handshake_timeout):
            await self._shake(stream, handshake)
            assert handshake.phase is Phase.AUTHENTICATED
            assert handshake.peer is not None
            peer = self._peer(handshake.peer)
            live = peer.conn is not None and not peer.conn.closed
            if self.name < peer.name and (peer.dialing or live):
                # One connection per pair: the one dialed by the smaller name
                # wins. A larger peer's dial is refused while ours is under
                # way or up (if the peer lost ours, it retries until our
                # heartbeat check notices).
                handshake.reject("the connection dialed by the smaller name wins")
                await stream.send_all(handshake.data_to_send())
                return False
        # Adopt at once, Welcome first in the new connection's output: with
        # an await between the check above and the adoption, this node could
        # start a dial of its own meanwhile, and the peer would take that
        # second connection for a reconnect and declare this node down.
        handshake.accept()
        self._adopt(peer, stream, handshake.take_unparsed(), preamble=handshake.data_to_send())
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
            await trio.sleep(self.handshake_timeout)
            if peer.conn is None and peer.pending and not peer.dialing:
                peer.dialing = True
                await self._dial(peer)

    async def _dial_once(self, peer: _Peer) -> str:
        """Dial ``peer`` and shake hands: ``"adopted"`` or ``"rejected"`` (the peer's wins).

        Fails with ``OSError`` or ``trio.TooSlowError`` when the peer cannot
        be reached, and with ``ConnectionLost`` or ``trio.BrokenResourceError``
        when the handshake fails (counted and logged here), nothing else.
        """
        try:
            host, port = split_address(peer.name)
        except ValueError as exc:
            raise ConnectionLost(str(exc)) from None
        with trio.fail_after(CONNECT_TIMEOUT + self.handshake_timeout):
            try:
                raw = await trio.open_tcp_stream(host, port)
            except OSError:
                raise
            except Exception as exc:  # a host name that is no host name, say
                raise ConnectionLost(f"cannot dial {peer.name!r}: {exc!r}") from exc
        address = peer_address(raw)
        stream: trio.abc.Stream = raw
        adopted = False
        try:
            stream = self._wrap(raw, server_side=False, host=host)
            handshake = Handshake.dialer(
                self.codec, name=self.name, cookie=self.cookie, peer=peer.name
            )
            with trio.fail_after(self.handshake_timeout):
                await self._shake(stream, handshake)
            if handshake.phase is Phase.REJECTED:
                return "rejected"
            peer.dialing = False
            self._adopt(peer, stream, handshake.take_unparsed())
            adopted = True
            return "adopted"
        except Exception as exc:
            self._handshake_failed(
                f"{self.name}: the handshake with {peer.name} at {address} failed", exc
            )
            if isinstance(exc, ConnectionLost | trio.TooSlowError | trio.BrokenResourceError):
                raise
            raise ConnectionLost(f"the handshake with {peer.name} failed: {exc!r}") from exc
        finally:
            if not adopted:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.aclose()

    def _adopt(
        self, peer: _Peer, stream: trio.abc.Stream, received: bytes, preamble: bytes = b""
    ) -> None:
        """Make ``stream``, through its handshake, ``peer``'s connection.

        ``received`` is what arrived after the last handshake frame (the
        first records); ``preamble`` goes out before any record (the
        acceptor's Welcome).
        """
        old = peer.conn
        if old is not None:
            # The peer dialed again: it lost the old connection. (One that
            # is closed but still peer.conn has not had its nodedown yet.)
            old.scope.cancel()
            self._peer_down(peer, old.reason if old.closed else "the peer reconnected")
        if peer.ever_connected:
            self._reconnects += 1
        peer.ever_connected = True
        conn = _Connection(self, stream, peer.name, received, preamble)
        peer.conn = conn
        for frame in peer.pending:
            conn.write(frame)
        peer.pending.clear()
        peer.pending_bytes = 0
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
        peer.pending_bytes = 0
        self._dead |= peer.seen
        monitors, peer.monitors = peer.monitors, {}
        for ref, (watcher, target) in monitors.items():
            self.actors.post(watcher, (INFO, Down(ref, target, "noconnection"), None))
        calls, peer.calls = peer.calls, {}
        self.actors.fail_callers(set(calls), "noconnection")
        # (a call's guard monitor goes with it)
        self.actors.remove_watchers_on(peer.name)
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
        except Exception as exc:
            # What crosses the wire was checked when it was accepted (user
            # messages are encoded once, at broadcast): dropping this frame
            # would lose messages silently, so the sender stops, loudly.
            raise UnsendableFrame(
                f"{self.name} cannot encode a {type(value).__name__} for {node}: {exc}"
            ) from exc
        if len(frame) > self.max_frame_size:
            raise UnsendableFrame(
                f"{self.name} cannot send a {type(value).__name__} of {len(frame)} bytes to "
                f"{node}: more than max_frame_size={self.max_frame_size} bytes"
            )
        peer = self._peer(node)
        if peer.conn is not None:
            peer.conn.write(frame)
            return True
        self._hold(peer, frame)
        if not peer.dialing and self._nursery is not None:
            peer.dialing = True
            self._nursery.start_soon(self._dial, peer)
        return True

    def _hold(self, peer: _Peer, frame: bytes) -> None:
        """Keep ``frame`` for the connection being dialed, within ``max_send_queue``."""
        peer.pending.append(frame)
        peer.pending_bytes += len(frame)
        if peer.pending_bytes > self.max_send_queue:
            reason = (
                f"{peer.pending_bytes} bytes queued for {peer.name} while dialing it, more "
                f"than max_send_queue={self.max_send_queue}"
            )
            log.warning("%s: %s", self.name, reason)
            self._peer_down(peer, reason)

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
        """Act on one decoded frame from the authenticated peer ``node``.

        Raises ``ConnectionLost`` (and nothing else) for a frame that makes
        no sense here (see the module docstring): the reader then closes
        this connection alone.
        """
        cls = type(frame)
        actors = self.actors
        here = self.name
        try:
            if cls is Send:
                to = frame.to
                if to.node != here:
                    raise ConnectionLost(f"a Send for {to}, not an actor of this node")
                actors.deliver(to, (INFO if frame.info else CAST, frame.msg, None))
            elif cls is Heartbeat:
                pass
            elif cls is Call:
                if frame.to.node != here:
                    raise ConnectionLost(f"a Call to {frame.to}, not an actor of this node")
                actors.deliver_call(frame.to, frame.request, From(node, frame.tag))
            elif cls is CallReply:
                actors.reply(From(here, frame.tag), frame.value)
            elif cls is Monitor:
                ref, watcher, target = frame.ref, frame.watcher, frame.target
                if target.node != here or watcher.node != node or ref.node != node:
                    raise ConnectionLost(
                        f"a Monitor of {target} for {watcher} (ref {ref.node}.{ref.serial}): "
                        "the target must be of this node, the watcher and ref of the sender"
                    )
                self._peer(node).seen.add(watcher)
                if not actors.add_watcher(target, ref, watcher):
                    self._send(node, DownFrame(ref, watcher, target, "noproc"))
            elif cls is Demonitor:
                if frame.target.node != here or frame.ref.node != node:
                    raise ConnectionLost(
                        f"a Demonitor of {frame.target} (ref {frame.ref.node}."
                        f"{frame.ref.serial}): the target must be of this node, the ref "
                        "of the sender"
                    )
                actors.remove_watcher(frame.target, frame.ref)
            elif cls is DownFrame:
                if (
                    frame.watcher.node != here
                    or frame.ref.node != here
                    or frame.target.node != node
                ):
                    raise ConnectionLost(
                        f"a DownFrame of {frame.target} for {frame.watcher} (ref "
                        f"{frame.ref.node}.{frame.ref.serial}): the watcher and ref must be of "
                        "this node, the target of the sender"
                    )
                peer = self._peer(node)
                if frame.watcher == self._node_watcher:
                    for tag, (ref, _callee) in list(peer.calls.items()):
                        if ref == frame.ref:
                            del peer.calls[tag]
                            actors.fail_callers({tag}, frame.reason)
                    return
                held = peer.monitors.pop(frame.ref, None)
                if held is not None:
                    # The watcher and target recorded at monitor time, not the
                    # frame's: they are the same for a correct peer.
                    watcher, target = held
                    actors.post(watcher, (INFO, Down(frame.ref, target, frame.reason), None))
            else:
                raise ConnectionLost(f"an unexpected {cls.__name__}")
        except ConnectionLost as exc:
            self._malformed_frames += 1
            self._refused += 1
            raise ConnectionLost(f"{exc} from {node}") from None
        except Exception as exc:
            # A bug, here or in the runtime: this connection ends, the node carries on.
            self._refused += 1
            log.warning(
                "%s: handling a %s frame from %s raised", here, cls.__name__, node, exc_info=exc
            )
            raise ConnectionLost(
                f"handling a {cls.__name__} from {node} raised {type(exc).__name__}: {exc}"
            ) from exc

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
            refused=self._refused + self._rejected_handshakes,
            malformed_frames=self._malformed_frames,
            rejected_handshakes=self._rejected_handshakes,
            send_queue_bytes=sum(
                p.pending_bytes + (p.conn.queued if p.conn is not None else 0)
                for p in self._peers.values()
            ),
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
