"""The frames nodes exchange: handshake, messages, calls, monitors.

Each frame is one value encoded by the ``codec``. A handshake frame goes on
the wire as a 4-byte big-endian length then the encoded value (at most 4096
bytes); until the handshake is over only the handshake frames are accepted.
After the acceptor's ``Welcome`` every frame goes in records: a 5-byte
header (1-byte kind, 4-byte big-endian length) then the body. Kind 0 is a
whole frame; a frame above 256 KiB goes in chunks, kind 1 (more follow)
then kind 2 (the last); kind 3, with no body, is a heartbeat and is the
only record allowed between the chunks of a frame. ``tcp.wire_frame``
makes the records of an encoded frame; the module docstring of ``tcp``
says what the limits are. (``Heartbeat`` below is no longer sent, as
heartbeats are records; it keeps its place so the tags stay the same.)

Handshake (mutual challenge-response; the cookie itself is never sent;
:mod:`.handshake` plays either side)::

    dialer   -> Hello(name, nonce_d)
    acceptor -> Challenge(name, nonce_a, HMAC(cookie, "acceptor" nonce_d nonce_a names))
    dialer   -> Response(HMAC(cookie, "dialer" nonce_a nonce_d names))
    acceptor -> Welcome() or Reject(reason)

:class:`FrameDecoder` splits the bytes a peer sends into encoded frames, in
either framing, with no I/O: it is the one parser of lengths and headers.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import attrs

from .._ids import ActorId
from ..actor import MonitorRef

#: The length prefix of a handshake frame (and of each part of a proof).
_LENGTH: Final = struct.Struct(">I")
#: The header of a record after the handshake: kind, body length.
_HEADER: Final = struct.Struct(">BI")
WHOLE: Final = 0
MORE: Final = 1
LAST: Final = 2
BEAT: Final = 3
_BEAT_RECORD: Final = _HEADER.pack(BEAT, 0)
#: A handshake frame longer than this is refused on its length prefix.
MAX_HANDSHAKE_FRAME: Final = 4096
DEFAULT_MAX_FRAME: Final = 64 * 1024 * 1024
_unpack_length: Final = _LENGTH.unpack_from
_unpack_header: Final = _HEADER.unpack_from


class FrameError(ValueError):
    """Bytes from a peer that break the framing: ``str()`` says how.

    ``oversize`` is true for a frame refused on its header for its size,
    before its body was read.
    """

    def __init__(self, what: str, *, oversize: bool = False) -> None:
        super().__init__(what)
        self.oversize = oversize


class FrameDecoder:
    """The encoded frames in the bytes a peer sends, with no I/O.

    :meth:`feed` it bytes as they arrive, then call :meth:`next_frame`
    until it returns ``None`` (it needs more bytes): each call returns the
    next whole encoded frame, for the codec to decode. A frame may arrive
    in any number of pieces, several frames in one.

    ``handshake=True`` reads handshake framing (a 4-byte length, then at
    most :data:`MAX_HANDSHAKE_FRAME` bytes); otherwise records (the module
    docstring of ``tcp``): heartbeats are skipped and the chunks of a large
    frame come out joined, as one frame. A frame above the limit
    (``max_frame_size``, or the handshake's) is refused as soon as its
    header (for chunks: the chunks so far plus the next one's header) says
    so, before its body is read: a peer cannot make the decoder hold more
    than the limit and a header.

    Bytes that break the framing raise :class:`FrameError`; the decoder is
    then broken for good and every later call raises the same error.
    """

    __slots__ = (
        "_buffer",
        "_chunked",
        "_chunks",
        "_error",
        "_handshake",
        "_in_chunks",
        "_pos",
        "_view",
        "max_frame_size",
    )

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME, *, handshake: bool = False) -> None:
        #: The largest frame accepted after the handshake, in bytes.
        self.max_frame_size = max_frame_size
        self._handshake = handshake
        self._buffer = bytearray()
        #: Where the bytes not yet parsed start in ``_buffer``.
        self._pos = 0
        #: A view of ``_buffer`` while frames are parsed out of it (one per
        #: feed, not per frame); released before ``_buffer`` changes size.
        self._view: memoryview | None = None
        #: The chunks so far of a large frame, in one buffer (a list of the
        #: chunks let a peer's empty or tiny chunks cost far more memory than
        #: their bytes), their total size, and whether a chunked frame is
        #: under way (it may be, with no bytes yet).
        self._chunks = bytearray()
        self._chunked = 0
        self._in_chunks = False
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes fed and not yet returned in a frame (a partial frame's, say)."""
        return len(self._buffer) - self._pos + self._chunked

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data``, the next bytes from the peer."""
        buffer = self._buffer
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._pos:
            # Once per feed, not per frame: the frames parsed since the last.
            del buffer[: self._pos]
            self._pos = 0
        buffer += data

    def take_unparsed(self) -> bytes:
        """Remove and return the bytes after the last frame returned.

        For the end of the handshake: what follows its last frame is in
        the other framing.
        """
        if self._in_chunks:
            raise RuntimeError("a chunked frame is under way: its chunks cannot be handed over")
        rest = bytes(self._buffer[self._pos :])
        if self._view is not None:
            self._view.release()
            self._view = None
        self._buffer = bytearray()
        self._pos = 0
        return rest

    def _fail(self, what: str, *, oversize: bool = False) -> FrameError:
        self._error = FrameError(what, oversize=oversize)
        return self._error

    def next_frame(self) -> bytes | None:
        """The next whole encoded frame, or ``None`` until more bytes are fed.

        Raises :class:`FrameError` for bytes that break the framing: a
        frame above the limit, a record of an unknown kind, a heartbeat
        with a body, a whole frame between the chunks of another.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        pos = self._pos
        end = len(buffer)
        while True:
            # The one parser of headers, in either framing.
            if self._handshake:
                if end - pos < 4:
                    return None
                (length,) = _unpack_length(buffer, pos)
                if length > MAX_HANDSHAKE_FRAME:
                    raise self._fail(
                        f"a handshake frame of {length} bytes (at most {MAX_HANDSHAKE_FRAME})",
                        oversize=True,
                    )
                kind = WHOLE
                start = pos + 4
            else:
                if end - pos < 5:
                    return None
                kind, length = _unpack_header(buffer, pos)
                if kind == WHOLE:
                    if self._in_chunks:
                        raise self._fail("a whole frame between the chunks of another")
                    if length > self.max_frame_size:
                        raise self._fail(
                            f"a frame of {length} bytes, above the limit of "
                            f"{self.max_frame_size} bytes",
                            oversize=True,
                        )
                elif kind in (MORE, LAST):
                    if self._chunked + length > self.max_frame_size:
                        raise self._fail(
                            f"a chunked frame of over {self._chunked + length} bytes, above "
                            f"the limit of {self.max_frame_size} bytes",
                            oversize=True,
                        )
                elif kind == BEAT:
                    if length:
                        raise self._fail(f"a heartbeat with a body of {length} bytes")
                    pos += 5
                    self._pos = pos
                    continue
                else:
                    raise self._fail(f"a record of unknown kind {kind}")
                start = pos + 5
            if end - start < length:
                return None
            pos = start + length
            self._pos = pos
            view = self._view
            if view is None:
                view = self._view = memoryview(buffer)
            if kind == WHOLE:
                return bytes(view[start:pos])
            self._chunks += view[start:pos]
            self._chunked += length
            self._in_chunks = True
            if kind == LAST:
                body = bytes(self._chunks)
                self._chunks = bytearray()
                self._chunked = 0
                self._in_chunks = False
                return body


@attrs.frozen
class Hello:
    name: str
    nonce: bytes


@attrs.frozen
class Challenge:
    name: str
    nonce: bytes
    proof: bytes


@attrs.frozen
class Response:
    proof: bytes


@attrs.frozen
class Welcome:
    pass


@attrs.frozen
class Reject:
    reason: str


@attrs.frozen
class Heartbeat:
    pass


@attrs.frozen
class Send:
    """A cast (``info=False``) or an info message for actor ``to``."""

    to: ActorId
    info: bool
    msg: Any


@attrs.frozen
class Call:
    to: ActorId
    request: Any
    tag: int


@attrs.frozen
class CallReply:
    tag: int
    value: Any


@attrs.frozen
class Monitor:
    """``watcher`` (on the sending node) monitors ``target`` (on the receiving node)."""

    ref: MonitorRef
    watcher: ActorId
    target: ActorId


@attrs.frozen
class Demonitor:
    ref: MonitorRef
    target: ActorId


@attrs.frozen
class DownFrame:
    """``target`` stopped; the reason as text (exceptions do not cross nodes)."""

    ref: MonitorRef
    watcher: ActorId
    target: ActorId
    reason: str


HANDSHAKE = (Hello, Challenge, Response, Welcome, Reject)
FRAMES = (*HANDSHAKE, Heartbeat, Send, Call, CallReply, Monitor, Demonitor, DownFrame)
