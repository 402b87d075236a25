"""What ``broadcast`` accepts on a networked node: encoded once, never dropped.

Each scenario of issue 10's "Messages" part: a message that cannot cross
the wire is refused at ``broadcast`` naming its part, a message too large is
refused naming both sizes, batches are cut by encoded bytes, and large
messages travel between nodes in order while heartbeats keep the link up.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import msgpack
import pytest
import trio

import trio_gm
from tests.gm_helpers import Events, Reporter
from trio_gm._packed import PLAIN_BOUND, PLAIN_LEN, Packed
from trio_gm.actor import Actor, ActorContext
from trio_gm.ring.members_state import calculate_activity, split_entries
from trio_gm.ring.messages import ActivityEntry
from trio_gm.ring.view import group_to_view
from trio_gm.store import Group, GroupMember
from trio_gm.transport.codec import EXT_PACKED_RUN, Codec, CodecError
from trio_gm.transport.frames import Call, Send
from trio_gm.transport.tcp import UnsendableFrame, internal_classes, wire_frame

from .rawpeer import RawPeer

COOKIE = "wire-cookie"


class Color(enum.IntEnum):
    RED = 1


class Collector(Reporter):
    """A reporter that also wakes a waiter once ``count`` messages from ``sender`` arrived."""

    def __init__(self, events: Events) -> None:
        super().__init__(events)
        self.got: dict[Any, list[Any]] = {}
        self.changed = trio.Event()

    def handle_msg(self, args: Any, sender: trio_gm.MemberId, msg: Any) -> None:
        self.got.setdefault((args, sender), []).append(msg)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, key: Any, count: int, timeout: float = 30) -> list[Any]:
        with trio.fail_after(timeout):
            while len(self.got.get(key, [])) < count:
                await self.changed.wait()
        return self.got[key]


@asynccontextmanager
async def _two_members(
    store: trio_gm.GroupStore, callbacks: Any, **node_kwargs: Any
) -> AsyncIterator[tuple[trio_gm.Node, trio_gm.Node, trio_gm.Member, trio_gm.Member]]:
    async with (
        trio_gm.open_node(store, listen="127.0.0.1:0", cookie=COOKIE, **node_kwargs) as n1,
        trio_gm.open_node(store, listen="127.0.0.1:0", cookie=COOKIE, **node_kwargs) as n2,
        n1.open_member("g", callbacks, "a") as a,
        n2.open_member("g", callbacks, "b") as b,
    ):
        yield n1, n2, a, b


@pytest.mark.parametrize(
    ("msg", "error", "match"),
    [
        (2**64, ValueError, r"^msg: the int 18446744073709551616 is outside"),
        ([1, 2**64], ValueError, r"^msg\[1\]: the int"),
        (-(2**63) - 1, ValueError, r"^msg: the int -9223372036854775809"),
        ("\ud800", ValueError, r"^msg: the str has a lone surrogate '\\ud800' at index 0"),
        ({"k": ("ok", "x\udfff")}, ValueError, r"^msg\['k'\]\[1\]: the str has a lone surrogate"),
        ({("t",): {1, 2}}, TypeError, r"^msg\[\('t',\)\]: a value of type builtins\.set"),
        (
            [Color.RED],
            TypeError,
            r"^msg\[0\]: a value of type tests\.net\.test_wire_messages\.Color",
        ),
    ],
)
async def test_unencodable_broadcast_is_refused_naming_the_part(
    sqlite_store: trio_gm.GroupStore, events: Events, msg: Any, error: type, match: str
) -> None:
    """Refused before anyone delivers it; the sender's later messages arrive with no gap."""
    async with _two_members(sqlite_store, Reporter(events)) as (_n1, _n2, a, b):
        await events.expect("members_changed", "a", [b.id], [])
        await a.broadcast(1)
        with pytest.raises(error, match=match):
            await a.broadcast(msg)
        with pytest.raises(error, match=match):
            await a.confirmed_broadcast(msg)
        await a.broadcast(2)
        await a.confirmed_broadcast(3)
        for who in "ab":
            for expected in (1, 2, 3):
                await events.expect("msg", who, a.id, expected)
        events.log = [e for e in events.log if e[0] != "joined"]
        events.assert_empty()


async def test_deeply_nested_broadcast_is_refused(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """Nesting the receivers' decoders could not undo is refused at broadcast.

    Nesting they can undo crosses, tuples included (decoding does not
    recurse in Python).
    """

    def nest(depth: int, leaf: Any, wrap: Any) -> Any:
        for _ in range(depth):
            leaf = wrap(leaf)
        return leaf

    async with _two_members(sqlite_store, Reporter(events)) as (_n1, _n2, a, _b):
        for too_deep in (nest(1100, [], lambda x: [x]), nest(1022, (), lambda x: (x,))):
            with pytest.raises(ValueError, match=r"^msg"):
                await a.broadcast(too_deep)
        deep = nest(400, ("leaf",), lambda x: (x,))
        await a.confirmed_broadcast(deep)
        await events.expect("msg", "b", a.id, deep)


async def test_message_larger_than_max_message_size_is_refused_naming_both_sizes(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with _two_members(sqlite_store, Reporter(events), max_message_size=1000) as (
        n1,
        _n2,
        a,
        _b,
    ):
        assert n1.max_message_size == 1000
        with pytest.raises(ValueError, match=r"1005 bytes, more than max_message_size=1000"):
            await a.broadcast(b"x" * 1002)
        with pytest.raises(ValueError, match=r"more than max_message_size=1000"):
            await a.confirmed_broadcast(b"x" * 1002)
        await a.confirmed_broadcast(b"x" * 990)
        await events.expect("msg", "b", a.id, b"x" * 990)


async def test_max_message_size_must_leave_room_in_a_frame(
    sqlite_store: trio_gm.GroupStore,
) -> None:
    with pytest.raises(ValueError, match=r"between 1 and 512 bytes with max_frame_size=1024"):
        async with trio_gm.open_node(
            sqlite_store,
            listen="127.0.0.1:0",
            cookie=COOKIE,
            max_frame_size=1024,
            max_message_size=600,
        ):
            pass  # pragma: no cover
    with pytest.raises(TypeError, match=r"max_message_size must be an int"):
        async with trio_gm.open_node(
            sqlite_store, listen="127.0.0.1:0", cookie=COOKIE, max_message_size=1.5
        ):
            pass  # pragma: no cover
    async with trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as node:
        assert node.max_message_size == 48 * 1024 * 1024


async def test_batches_are_cut_by_encoded_bytes(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """80 messages of 10 kB in one go, no size hints, a 64 kB frame limit: all arrive.

    Without the cut they leave in one activity of about 800 kB, which the
    receiver refuses: the link drops and the messages are lost.
    """
    collector = Collector(events)
    payloads = [bytes([i]) * 10_000 for i in range(80)]
    async with _two_members(sqlite_store, collector, max_frame_size=64 * 1024) as (
        n1,
        _n2,
        a,
        _b,
    ):
        for payload in payloads:
            await a.broadcast(payload)
        assert await collector.wait_for(("b", a.id), 80) == payloads
        stats = n1.statistics()
        assert stats is not None
        assert stats.reconnects == 0
        assert len(stats.peers) == 1
        assert stats.frames_out >= 80 * 10_000 // (32 * 1024)


@pytest.mark.slow
async def test_large_messages_arrive_in_order_with_no_nodedown(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """70 x 1 MB then one 40 MB message, heartbeats every 0.5 s: all in order, link up."""
    collector = Collector(events)
    payloads = [bytes([i]) * 1_000_000 for i in range(70)]
    payloads.append(b"\xff" * 40_000_000)
    async with _two_members(sqlite_store, collector, heartbeat_interval=0.5) as (
        n1,
        n2,
        a,
        b,
    ):
        for payload in payloads:
            await a.broadcast(payload)
        await a.confirmed_broadcast("done")
        got = await collector.wait_for(("b", a.id), len(payloads) + 1, timeout=60)
        assert len(got) == len(payloads) + 1
        assert all(x == y for x, y in zip(got, payloads, strict=False))
        assert got[-1] == "done"
        for node in (n1, n2):
            stats = node.statistics()
            assert stats is not None
            assert stats.reconnects == 0
            assert len(stats.peers) == 1
        assert a.alive
        assert b.alive
        assert await a.group_members() == sorted([a.id, b.id])


@attrs.frozen
class Counted:
    text: str


async def test_a_message_is_encoded_once_whatever_the_hops(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """Three nodes in a ring: a user class is unstructured at broadcast only.

    Members forward the bytes they got; none turns the message back into
    bytes (cattrs would be called again if one did).
    """
    unstructured = 0

    def unstructure(value: Counted) -> dict[str, Any]:
        nonlocal unstructured
        unstructured += 1
        return {"text": value.text}

    nodes = [trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) for _ in range(3)]
    collector = Collector(events)
    async with nodes[0] as n1, nodes[1] as n2, nodes[2] as n3:
        for node in (n1, n2, n3):
            assert node.codec is not None
            node.codec.register(Counted, name="Counted")
            node.codec.converter.register_unstructure_hook(Counted, unstructure)
        async with (
            n1.open_member("g", collector, "a") as a,
            n2.open_member("g", collector, "b") as b,
            n3.open_member("g", collector, "c") as c,
        ):
            await a.confirmed_broadcast("warm up")
            before = unstructured
            for i in range(20):
                await a.broadcast(Counted(f"m{i}"))
            await a.confirmed_broadcast(Counted("last"))
            for who in "abc":
                got = await collector.wait_for((who, a.id), 22)
                assert got[1:] == [Counted(f"m{i}") for i in range(20)] + [Counted("last")]
            assert unstructured - before == 21
            del b, c


class _Blaster(Actor):
    """Casts whatever it is told to to a remote actor id."""

    def init(self, ctx: ActorContext) -> None:
        self.ctx = ctx

    def handle_cast(self, msg: Any) -> None:
        to, payload = msg
        self.ctx.cast(to, payload)


async def test_a_frame_over_the_limit_stops_its_sender_loudly(
    sqlite_store: trio_gm.GroupStore,
) -> None:
    """Never a silent drop: the actor that sends it crashes with UnsendableFrame."""
    async with (
        trio_gm.open_node(
            sqlite_store, listen="127.0.0.1:0", cookie=COOKIE, max_frame_size=64 * 1024
        ) as n1,
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as n2,
    ):
        target = trio_gm.ActorId(n2.name, 1)

        async def blast() -> None:
            async with n1.actors.open_actor(_Blaster()) as blaster:
                blaster.cast((target, b"x" * 100_000))
                await trio.sleep_forever()

        with pytest.raises(UnsendableFrame, match=r"more than max_frame_size=65536"):
            await blast()


def _packed(codec: Codec, value: Any) -> Packed:
    return codec.pack(value)


def test_split_entries_keeps_order_numbers_and_acks() -> None:
    codec = Codec(internal_classes())
    p, q = trio_gm.ActorId("n:1#a", 1), trio_gm.ActorId("n:1#a", 2)
    pubs = tuple(_packed(codec, bytes(100)) for _ in range(10))
    entries = [
        ActivityEntry(p, first=5, pubs=pubs, acks=3, ack_last=4),
        ActivityEntry(q, acks=1, ack_last=7),
        ActivityEntry(q, first=8, pubs=pubs[:2]),
    ]
    parts = split_entries(entries, 350)
    assert all(sum(len(x[1]) for e in part for x in e.pubs) <= 350 for part in parts)
    flat = [entry for part in parts for entry in part]
    # The same publications, numbered as before, and p's acks after its last piece.
    p_pieces = [e for e in flat if e.publisher == p]
    assert [x for e in p_pieces for x in e.pubs] == list(pubs)
    assert [e.first for e in p_pieces] == [5 + 3 * i for i in range(len(p_pieces))]
    assert [(e.acks, e.ack_last) for e in p_pieces[:-1]] == [(0, -1)] * (len(p_pieces) - 1)
    assert (p_pieces[-1].acks, p_pieces[-1].ack_last) == (3, 4)
    assert [e for e in flat if e.publisher == q] == entries[1:]
    # A budget that holds everything leaves the entries as they are.
    assert split_entries(entries, 10**9) == [entries]


def test_split_entries_processed_in_order_is_the_whole() -> None:
    """calculate_activity over the parts, one after another, equals over the whole."""
    codec = Codec(internal_classes())
    me, p = trio_gm.ActorId("n:1#a", 1), trio_gm.ActorId("n:1#a", 2)
    group = Group("g", 1, (GroupMember(me), GroupMember(p)))
    view = group_to_view(group)
    pubs = tuple(_packed(codec, bytes([i]) * 100) for i in range(9))
    entries = [ActivityEntry(p, first=0, pubs=pubs, acks=2, ack_last=1)]

    whole_state: dict[Any, Any] = {}
    whole_out, _ = calculate_activity(whole_state, entries, me, view)
    parts_state: dict[Any, Any] = {}
    parts_out: list[ActivityEntry] = []
    for part in split_entries(entries, 250):
        out, _ = calculate_activity(parts_state, part, me, view)
        parts_out.extend(out)
    assert len(parts_out) > 1
    assert repr(parts_state) == repr(whole_state)
    assert [x for e in parts_out for x in e.pubs] == [x for e in whole_out for x in e.pubs]


@pytest.mark.parametrize("request_", ["info", "statistics", "group_members", "no such call", 7])
async def test_a_call_from_another_node_other_than_a_join_is_ignored(
    sqlite_store: trio_gm.GroupStore, events: Events, request_: Any
) -> None:
    """An authenticated peer asking a member for its info (whose reply holds the
    callbacks object, which cannot cross) or anything unknown gets no answer,
    and the member carries on."""
    async with _two_members(sqlite_store, Reporter(events)) as (n1, _n2, a, b):
        peer = await RawPeer.connect(n1, "127.0.0.1:1#rawcaller", COOKIE)
        async with peer.stream:
            await peer.stream.send_all(wire_frame(peer.codec.encode(Call(a.id, request_, 1))))
            # A round trip through the same connection: the call was handled.
            await peer.stream.send_all(
                wire_frame(peer.codec.encode(Call(trio_gm.ActorId(n1.name, 10**6), "x", 2)))
            )
            await a.confirmed_broadcast("still here")
            await events.expect("msg", "b", a.id, "still here")
            assert a.alive
            assert b.alive


def _run_ext(payload: list[Any], tail: bytes = b"") -> Any:
    return msgpack.ExtType(EXT_PACKED_RUN, msgpack.packb(payload) + tail)


@pytest.mark.parametrize(
    ("lengths", "values", "tail"),
    [
        ([1, 1], [1], b"\x01"),  # two lengths, one message
        ([0], [1], b""),  # a length below 1
        (["x"], [1], b"\x01"),  # a length that is no number
        ([1.5], [1], b"\x01"),
        ([10**6], [1], b"\x01"),  # longer than the extension
        ([], [], b""),  # an empty run
    ],
)
def test_a_malformed_run_of_messages_is_a_codec_error(
    lengths: list[Any], values: list[Any], tail: bytes
) -> None:
    codec = Codec(internal_classes())
    me = trio_gm.ActorId("n:1#a", 1)
    good = codec.encode(ActivityEntry(me, first=0, pubs=(codec.pack(1),)))
    assert codec.decode(good) == ActivityEntry(me, first=0, pubs=(codec.pack(1),))
    # The same entry with its run replaced by a hand-made one.
    decoded = msgpack.unpackb(good, raw=False)
    decoded[3] = _run_ext([lengths, *values], tail)
    with pytest.raises(CodecError):
        codec.decode(msgpack.packb(decoded))


def test_a_run_of_messages_only_fills_a_field_declared_for_it() -> None:
    """Anywhere else (a user payload) it is refused, and such a field holds nothing else."""
    codec = Codec(internal_classes())
    me = trio_gm.ActorId("n:1#a", 1)
    run = codec.encode(ActivityEntry(me, first=0, pubs=(codec.pack([1]),)))
    decoded = msgpack.unpackb(run, raw=False)
    send = msgpack.unpackb(codec.encode(Send(me, False, "payload")), raw=False)
    send[3] = decoded[3]  # the run, as the message of a Send
    with pytest.raises(CodecError, match="outside its place"):
        codec.decode(msgpack.packb(send))
    decoded[3] = msgpack.unpackb(codec.encode(((1, b"\x01"),)), raw=False)  # a plain tuple
    with pytest.raises(CodecError, match=r"ActivityEntry\.pubs: expected a run of packed"):
        codec.decode(msgpack.packb(decoded))


@pytest.mark.parametrize(
    "msg",
    [None, True, 0, -(2**63), 2**64 - 1, 1.5, "", "x" * PLAIN_LEN, "\U0001f600" * PLAIN_LEN,
     b"", b"x" * PLAIN_LEN],
)  # fmt: skip
def test_a_plain_message_travels_as_itself(msg: Any) -> None:
    """What ``pack`` gives the ring for a number, None, a bool, a short str or bytes."""
    codec = Codec(internal_classes())
    assert codec.pack(msg) is msg
    assert codec.pack(msg, max_size=PLAIN_BOUND) is msg


@pytest.mark.parametrize(
    "msg", ["x" * (PLAIN_LEN + 1), b"x" * (PLAIN_LEN + 1), bytearray(b"x"), (1,), [1], {"k": 1}]
)
def test_any_other_message_travels_as_its_bytes(msg: Any) -> None:
    codec = Codec(internal_classes())
    packed = codec.pack(msg)
    assert type(packed) is tuple
    assert packed[0] is msg
    assert packed[1] == msgpack.packb(msg, use_bin_type=True) or type(msg) is tuple


def test_a_plain_message_is_still_checked_and_sized() -> None:
    codec = Codec(internal_classes())
    with pytest.raises(ValueError, match=r"^msg: the str has a lone surrogate"):
        codec.pack("\ud800")
    with pytest.raises(ValueError, match=r"^msg: the int 18446744073709551616 is outside"):
        codec.pack(2**64)
    with pytest.raises(ValueError, match=r"9 bytes, more than max_message_size=8 bytes"):
        codec.pack(2**40, max_size=8)
    with pytest.raises(ValueError, match=r"4 bytes, more than max_message_size=3 bytes"):
        codec.pack("abc", max_size=3)
    assert codec.pack(5, max_size=1) == 5


@pytest.mark.parametrize(
    "pubs",
    [
        (1, 2.5, None, True, "s", b"b"),  # all plain: inline
        ((["a"], b"\x91\xa1a"), ({"k": 1}, b"\x81\xa1k\x01")),  # pairs only
        (1, (["a"], b"\x91\xa1a"), "s", ((), b"\x92\xc7\x01\x01\x00")),  # mixed
    ],
)
def test_runs_of_plain_and_packed_messages_round_trip(pubs: tuple[Any, ...]) -> None:
    """A receiver gets what was sent: plain values as themselves, pairs as pairs."""
    codec = Codec(internal_classes())
    me = trio_gm.ActorId("n:1#a", 1)
    pubs = tuple(codec.pack(p if type(p) is not tuple else p[0]) for p in pubs)
    entry = ActivityEntry(me, first=3, pubs=pubs, acks=1, ack_last=2)
    decoded = codec.decode(codec.encode(entry))
    assert [p[0] if type(p) is tuple else p for p in decoded.pubs] == [
        p[0] if type(p) is tuple else p for p in pubs
    ]
    # Forwarded, the bytes are the same again.
    assert codec.encode(decoded) == codec.encode(codec.decode(codec.encode(decoded)))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ([1], r"a tuple holding a list"),
        ({"k": 1}, r"a tuple holding a dict"),
        ((1, b"\x01"), r"a tuple holding a tuple"),
        ("x" * (PLAIN_LEN + 1), rf"a tuple holding a str of length {PLAIN_LEN + 1}, above"),
        (b"x" * (PLAIN_LEN + 1), rf"a tuple holding a bytes of length {PLAIN_LEN + 1}, above"),
    ],
)
def test_an_inline_run_holding_a_message_that_is_not_plain_is_a_codec_error(
    bad: Any, match: str
) -> None:
    """Only plain messages travel inline: anything else there is a broken peer.

    (A tuple there would be taken for a (value, bytes) pair, and a long str
    would escape the bound batches count plain messages at.)
    """
    codec = Codec(internal_classes())
    me = trio_gm.ActorId("n:1#a", 1)
    decoded = msgpack.unpackb(codec.encode(ActivityEntry(me, pubs=(1, "s"))), raw=False)
    decoded[3] = msgpack.unpackb(codec.encode((1, "s", bad)), raw=False)
    with pytest.raises(CodecError, match=rf"^ActivityEntry\.pubs: expected .*, got {match}"):
        codec.decode(msgpack.packb(decoded))


def test_split_entries_counts_a_plain_message_at_its_bound() -> None:
    codec = Codec(internal_classes())
    p = trio_gm.ActorId("n:1#a", 2)
    pubs = (1, "s", codec.pack(b"x" * 100), None)
    parts = split_entries([ActivityEntry(p, first=0, pubs=pubs)], 2 * PLAIN_BOUND)
    # Counted at their few real bytes, all four would fit.
    assert [[e.pubs for e in part] for part in parts] == [[pubs[:2]], [pubs[2:]]]


async def test_batches_of_plain_messages_are_cut_by_their_bound(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    """2000 plain strs of 256 encoded bytes in one go, a 64 kB frame limit: all arrive.

    Plain messages travel as themselves, not as counted bytes; uncounted, they
    would leave in one activity of about 500 kB.
    """
    collector = Collector(events)
    payloads = [f"{i:04}" + "\U0001f600" * (PLAIN_LEN - 4) for i in range(2000)]
    async with _two_members(sqlite_store, collector, max_frame_size=64 * 1024) as (
        n1,
        _n2,
        a,
        _b,
    ):
        for payload in payloads:
            await a.broadcast(payload)
        assert await collector.wait_for(("b", a.id), len(payloads)) == payloads
        stats = n1.statistics()
        assert stats is not None
        assert stats.reconnects == 0
        assert len(stats.peers) == 1
