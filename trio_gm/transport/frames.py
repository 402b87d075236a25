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

Handshake (mutual challenge-response; the cookie itself is never sent)::

    dialer   -> Hello(name, nonce_d)
    acceptor -> Challenge(name, nonce_a, HMAC(cookie, "acceptor" nonce_d nonce_a names))
    dialer   -> Response(HMAC(cookie, "dialer" nonce_a nonce_d names))
    acceptor -> Welcome() or Reject(reason)
"""

from __future__ import annotations

from typing import Any

import attrs

from .._ids import ActorId
from ..actor import MonitorRef


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
