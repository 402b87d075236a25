"""Ids on the wire: one extension each, kept by both sides, checked as any field.

An :class:`~trio_gm.ActorId` is encoded as the extension ``EXT_ID`` holding
``[node, serial]``; the decoder checks the first decoding of some bytes as
it checks any internal value's fields, and keeps at most a bounded number of
ids (hostile bytes cannot make it hold more). The general internal-class
form of an id is still accepted.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from trio_gm import ActorId
from trio_gm.ring.messages import Activity, ActivityEntry
from trio_gm.transport import codec as codec_module
from trio_gm.transport.codec import EXT_ID, Codec, CodecError
from trio_gm.transport.frames import Send
from trio_gm.transport.tcp import internal_classes

from .rawpeer import raw_internal


def _codec() -> Codec:
    return Codec(internal_classes())


def _id_ext(payload: bytes) -> bytes:
    return msgpack.packb(msgpack.ExtType(EXT_ID, payload))


def test_an_id_is_one_extension_and_round_trips() -> None:
    codec = _codec()
    actor = ActorId("127.0.0.1:4000#abc", 7)
    data = codec.encode(actor)
    assert data == _id_ext(msgpack.packb(["127.0.0.1:4000#abc", 7]))
    for _ in range(2):  # the second decoding is the kept one
        decoded = codec.decode(data)
        assert decoded == actor
        assert type(decoded) is ActorId


def test_ids_in_a_frame_round_trip() -> None:
    codec = _codec()
    here, there = ActorId("127.0.0.1:1#a", 1), ActorId("127.0.0.1:2#b", 2)
    entry = ActivityEntry(here, first=3, pubs=(1, 2), acks=1, ack_last=0)
    frame = Send(there, False, Activity(4, here, (entry, entry)))
    for _ in range(3):
        assert codec.decode(codec.encode(frame)) == frame
    # Another codec (another node) decodes it too.
    assert _codec().decode(codec.encode(frame)) == frame


def test_the_general_form_of_an_id_is_still_accepted() -> None:
    codec = _codec()
    general = raw_internal(codec, ActorId, ["h:1#a", 5])
    # (A hand-made instance, not hashable: encoded in the general form.)
    assert msgpack.unpackb(general, ext_hook=lambda code, data: code)[0] != EXT_ID
    assert codec.decode(general) == ActorId("h:1#a", 5)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (msgpack.packb(["h:1#a"]), "an id must be [node, serial]"),
        (msgpack.packb(["h:1#a", 1, 2]), "an id must be [node, serial]"),
        (msgpack.packb({"node": "h:1#a", "serial": 1}), "an id must be [node, serial]"),
        (msgpack.packb(7), "an id must be [node, serial]"),
        (msgpack.packb([1, 1]), "ActorId.node: expected "),
        (msgpack.packb([b"h:1#a", 1]), "ActorId.node: expected "),
        (msgpack.packb(["h:1#a", "1"]), "ActorId.serial: expected "),
        (msgpack.packb(["h:1#a", True]), "ActorId.serial: expected "),
        (msgpack.packb(["h:1#a", 1.0]), "ActorId.serial: expected "),
        (msgpack.packb(["h:1#a", 1]) + b"\x00", "undecodable frame"),
        (b"", "undecodable frame"),
        (b"\xc1", "undecodable frame"),
        (msgpack.packb([msgpack.ExtType(EXT_ID, msgpack.packb(["h", 1])), 1]), "ActorId.node"),
    ],
)
def test_a_malformed_id_is_a_codec_error(payload: bytes, message: str) -> None:
    codec = _codec()
    for _ in range(2):  # not kept: refused again
        with pytest.raises(CodecError) as caught:
            codec.decode(_id_ext(payload))
        assert message in str(caught.value)


def test_a_malformed_id_inside_a_frame_is_a_codec_error() -> None:
    codec = _codec()
    good = codec.encode(Send(ActorId("h:1#a", 1), False, "x"))
    # (Same length: the extension's header stays right.)
    bad = good.replace(msgpack.packb(["h:1#a", 1]), msgpack.packb(["h:1#a", None]))
    assert bad != good
    with pytest.raises(CodecError, match=r"ActorId\.serial: expected "):
        codec.decode(bad)


def test_the_ids_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec_module, "_ID_CACHE", 8)
    codec = _codec()
    kept: Any = codec._ids
    for serial in range(100):
        actor = ActorId("h:1#a", serial)
        assert codec.decode(codec.encode(actor)) == actor
        assert len(kept) <= 8
        assert len(codec._id_exts) <= 8
    # A long id is decoded and not kept.
    long_node = "h" * 400
    assert codec.decode(_id_ext(msgpack.packb([long_node, 1]))) == ActorId(long_node, 1)
    assert all(len(data) <= codec_module._ID_CACHE_BYTES for data in kept)


def test_an_unencodable_id_is_refused_when_encoded() -> None:
    codec = _codec()
    with pytest.raises((OverflowError, TypeError, ValueError)):
        codec.encode(ActorId("h:1#a", 2**70))
    with pytest.raises((TypeError, ValueError)):
        codec.encode(ActorId("h:1#a\udc80", 1))
    # The codec still works afterwards.
    assert codec.decode(codec.encode(ActorId("h:1#a", 1))) == ActorId("h:1#a", 1)
