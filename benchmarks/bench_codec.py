"""The codec's cost per message, beside raw msgpack.

Run: ``pytest benchmarks/bench_codec.py --benchmark-enable``.

For each kind of message (a small int, a short str, 1 kB of bytes, a tuple,
a dict, a registered attrs class), in one group:

* ``pack``: ``Codec.pack`` of 100 messages, what ``broadcast`` pays for each
  (checking it, and encoding it unless it is plain);
* ``hop``: what every member pays for the messages it passes on: one
  activity frame (a ``Send`` of an ``Activity`` of 3 publishers x 100
  messages, as under load) encoded and decoded, validation included;
* ``msgpack``: ``msgpack.packb`` then ``unpackb`` of the same 300 messages as
  one list, with no types of ours and no checks: the floor.

Each reports ``extra_info["messages"]``: divide the mean by it for the
cost of one message.

And in the group ``codec, one small frame``, what an idle hop pays (one
confirmed broadcast at a time): one activity frame carrying one small int
encoded and decoded, beside raw msgpack of the same shape (the ids as
``[node, serial]`` lists).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import msgpack
import pytest

from trio_gm import ActorId
from trio_gm.ring.messages import Activity, ActivityEntry
from trio_gm.transport.codec import Codec
from trio_gm.transport.frames import Send
from trio_gm.transport.tcp import internal_classes

PER_ENTRY = 100
ENTRIES = 3


@attrs.frozen
class Order:
    item: str
    quantity: int


KINDS: dict[str, Callable[[int], Any]] = {
    "int": lambda i: 1000 + i,
    "str": lambda i: f"message {i}",
    "bytes 1k": lambda i: i.to_bytes(4, "big") * 256,
    "tuple": lambda i: ("key", i, b"x" * 10),
    "dict": lambda i: {"id": i, "name": "n", "tags": [1, 2]},
    "attrs": lambda i: Order("widget", i),
}


def _codec() -> Codec:
    codec = Codec(internal_classes())
    codec.register(Order, name="Order")
    return codec


def _frame(codec: Codec, kind: str) -> Send:
    node = "127.0.0.1:5000#bench"
    entries = tuple(
        ActivityEntry(
            ActorId(f"127.0.0.1:{5001 + j}#bench", 7),
            first=1000,
            pubs=tuple(codec.pack(KINDS[kind](j * PER_ENTRY + i)) for i in range(PER_ENTRY)),
            acks=PER_ENTRY,
            ack_last=999,
        )
        for j in range(ENTRIES)
    )
    return Send(ActorId(node, 3), False, Activity(5, ActorId(node, 7), entries))


@pytest.mark.parametrize("kind", list(KINDS))
def test_bench_codec_pack(benchmark: Any, kind: str) -> None:
    benchmark.group = f"codec, {kind}"
    codec = _codec()
    msgs = [KINDS[kind](i) for i in range(PER_ENTRY)]
    pack = codec.pack
    benchmark.extra_info["messages"] = len(msgs)
    benchmark(lambda: [pack(msg) for msg in msgs])


@pytest.mark.parametrize("kind", list(KINDS))
def test_bench_codec_hop(benchmark: Any, kind: str) -> None:
    benchmark.group = f"codec, {kind}"
    codec = _codec()
    frame = _frame(codec, kind)
    encode, decode = codec.encode, codec.decode
    assert type(decode(encode(frame))) is Send
    benchmark.extra_info["messages"] = ENTRIES * PER_ENTRY
    benchmark(lambda: decode(encode(frame)))


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind != "attrs"])
def test_bench_raw_msgpack(benchmark: Any, kind: str) -> None:
    benchmark.group = f"codec, {kind}"
    msgs = [KINDS[kind](i) for i in range(ENTRIES * PER_ENTRY)]
    benchmark.extra_info["messages"] = len(msgs)
    benchmark(lambda: msgpack.unpackb(msgpack.packb(msgs)))


def _small_frame() -> Send:
    here, there = ActorId("127.0.0.1:38877#a590208c", 1), ActorId("127.0.0.1:34311#9f00b433", 1)
    entry = ActivityEntry(here, first=113712, pubs=(1262,), acks=0, ack_last=-1)
    return Send(here, False, Activity(2, there, (entry,)))


def test_bench_codec_small_frame(benchmark: Any) -> None:
    benchmark.group = "codec, one small frame"
    codec = _codec()
    frame = _small_frame()
    encode, decode = codec.encode, codec.decode
    assert decode(encode(frame)) == frame
    benchmark.extra_info["bytes"] = len(encode(frame))
    benchmark(lambda: decode(encode(frame)))


def test_bench_raw_msgpack_small_frame(benchmark: Any) -> None:
    benchmark.group = "codec, one small frame"
    frame = _small_frame()
    here, there = [frame.to.node, 1], [frame.msg.sender.node, 1]
    shape = [here, False, [2, there, [[here, 113712, [1262], 0, -1]]]]
    benchmark.extra_info["bytes"] = len(msgpack.packb(shape))
    benchmark(lambda: msgpack.unpackb(msgpack.packb(shape)))
