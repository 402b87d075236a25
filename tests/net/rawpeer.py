"""A peer made by hand: the handshake done frame by frame, then raw records.

For tests of what a node does with a peer that misbehaves after it proved
it knows the cookie (one that stops reading, sends chunks above the limit,
...). The records after the handshake are built with ``tcp.wire_frame`` or
``tcp._HEADER``.
"""

from __future__ import annotations

import secrets
from typing import Any

import attrs
import trio

import trio_gm
from trio_gm.transport.codec import Codec
from trio_gm.transport.frames import Challenge, Hello, Response, Welcome
from trio_gm.transport.tcp import _BEAT_RECORD, _LENGTH, _proof, internal_classes


def handshake_frame(codec: Codec, value: Any) -> bytes:
    """``value`` in handshake framing: a 4-byte length, then its encoding."""
    data = codec.encode(value)
    return _LENGTH.pack(len(data)) + data


async def read_handshake_frame(stream: trio.abc.Stream, buffer: bytearray, codec: Codec) -> Any:
    while True:
        if len(buffer) >= 4:
            (length,) = _LENGTH.unpack_from(buffer)
            if len(buffer) >= 4 + length:
                frame = bytes(buffer[4 : 4 + length])
                del buffer[: 4 + length]
                return codec.decode(frame)
        data = await stream.receive_some(4096)
        if not data:
            raise EOFError("the node closed the connection during the handshake")
        buffer += data


class RawPeer:
    """An authenticated connection to a node, driven by the test."""

    def __init__(self, stream: trio.SocketStream, name: str, node_name: str) -> None:
        self.stream = stream
        self.name = name
        self.node_name = node_name
        self.codec = Codec(internal_classes())

    @classmethod
    async def connect(cls, node: trio_gm.Node, name: str, cookie: str | bytes) -> RawPeer:
        """Dial ``node`` as the node ``name`` and prove we know ``cookie``."""
        assert node.address is not None
        return await cls.dial(node.address, name, cookie)

    @classmethod
    async def dial(cls, address: str, name: str, cookie: str | bytes) -> RawPeer:
        """Dial the node at ``address`` (``host:port``, in this process or
        another) as the node ``name`` and prove we know ``cookie``."""
        secret = cookie.encode() if isinstance(cookie, str) else cookie
        host, port = address.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        try:
            codec = Codec(internal_classes())
            nonce = secrets.token_bytes(16)
            await stream.send_all(handshake_frame(codec, Hello(name, nonce)))
            buffer = bytearray()
            challenge = await read_handshake_frame(stream, buffer, codec)
            assert type(challenge) is Challenge, challenge
            proof = _proof(secret, b"dialer", challenge.nonce, nonce, name, challenge.name)
            await stream.send_all(handshake_frame(codec, Response(proof)))
            welcome = await read_handshake_frame(stream, buffer, codec)
            assert type(welcome) is Welcome, welcome
        except BaseException:
            await stream.aclose()
            raise
        return cls(stream, name, challenge.name)

    async def beat_forever(self, every: float) -> None:
        """Send a heartbeat record every ``every`` seconds (and never read)."""
        while True:
            await self.stream.send_all(_BEAT_RECORD)
            await trio.sleep(every)

    async def wait_closed(self) -> None:
        """Read (and drop) whatever the node sends until it hangs up."""
        try:
            while await self.stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass


def raw_internal(codec: Codec, cls: type, fields: list[Any]) -> bytes:
    """An encoded ``cls`` with exactly these field values, which its constructor
    might refuse: the instance is made without it, and encoded as any other."""
    value = object.__new__(cls)
    for field, item in zip(attrs.fields(cls), fields, strict=True):
        object.__setattr__(value, field.name, item)
    return codec.encode(value)
