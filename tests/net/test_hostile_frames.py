"""No frame a peer sends, before or after the handshake, may crash a node.

Every scenario ends the same way: the hostile connection alone is closed, the
node counts it (``malformed_frames``, ``rejected_handshakes``), logs no
traceback (a traceback means a frame reached code that assumed its types),
and keeps serving: an actor on it answers a call from another node, two
members on two nodes keep exchanging broadcasts, and a new connection still
gets through the handshake.

Raw frames are built by :func:`frame_bytes` and read by :class:`RawPeer`
alone, so a change of the wire framing is a change here only.
"""

from __future__ import annotations

import functools
import itertools
import logging
import types
import typing
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_gm
from tests.gm_helpers import Events, Reporter
from tests.net.echo import Echo
from tests.net.rawpeer import raw_internal
from trio_gm.actor import Down, MonitorRef
from trio_gm.store import Group, GroupMember
from trio_gm.transport import handshake, tcp
from trio_gm.transport.codec import Codec, CodecError
from trio_gm.transport.frames import (
    Call,
    CallReply,
    Challenge,
    Demonitor,
    DownFrame,
    Heartbeat,
    Hello,
    Monitor,
    Response,
    Send,
    Welcome,
)
from trio_gm.transport.tcp import TransportStatistics, internal_classes
from trio_gm.transport.validate import validator

COOKIE = "hostile-frames-cookie"
NONCE = b"\x01" * tcp.NONCE_SIZE
WIRE_CLASSES: tuple[type, ...] = (trio_gm.ActorId, *internal_classes())
_names = itertools.count()


def fake_name() -> str:
    """A node name no node has: a hand-made dialer's."""
    return f"127.0.0.1:1#hostile{next(_names)}"


# -- the wire, by hand ------------------------------------------------------------


def frame_bytes(data: bytes, *, after_handshake: bool = False) -> bytes:
    """The bytes of one encoded frame on the wire, in or after the handshake."""
    if after_handshake:
        return tcp.wire_frame(data)
    return tcp._LENGTH.pack(len(data)) + data


class RawPeer:
    """A hand-made dialer on a raw socket: it sends whatever it is told."""

    def __init__(self, stream: trio.SocketStream, codec: Codec) -> None:
        self.stream = stream
        self.codec = codec
        self.buffer = bytearray()
        self.name = ""

    @classmethod
    async def connect(cls, node: trio_gm.Node) -> RawPeer:
        assert node.address is not None
        host, port = tcp.split_address(node.address)
        return cls(await trio.open_tcp_stream(host, port), Codec(internal_classes()))

    @property
    def address(self) -> str:
        host, port = self.stream.socket.getsockname()[:2]
        return f"{host}:{port}"

    async def send(self, data: bytes, *, after_handshake: bool = False) -> None:
        await self.stream.send_all(frame_bytes(data, after_handshake=after_handshake))

    async def send_value(self, value: Any, *, after_handshake: bool = False) -> None:
        await self.send(self.codec.encode(value), after_handshake=after_handshake)

    async def _take(self, size: int) -> bytes:
        with trio.fail_after(10):
            while len(self.buffer) < size:
                data = await self.stream.receive_some(65536)
                assert data, "the node closed the connection"
                self.buffer += data
        taken = bytes(self.buffer[:size])
        del self.buffer[:size]
        return taken

    async def read_handshake_frame(self) -> Any:
        (length,) = tcp._LENGTH.unpack(await self._take(4))
        return self.codec.decode(await self._take(length))

    async def read_frame(self) -> Any:
        """The next frame after the handshake, heartbeats skipped."""
        while True:
            kind, length = tcp._HEADER.unpack(await self._take(tcp._HEADER.size))
            body = await self._take(length)
            if kind == tcp.WHOLE:
                return self.codec.decode(body)
            assert kind == tcp.BEAT, f"unexpected record kind {kind}"

    async def authenticate(self, cookie: str = COOKIE) -> None:
        """The dialer's side of the handshake, proofs and all, up to the Welcome."""
        self.name = fake_name()
        await self.send_value(Hello(self.name, NONCE))
        challenge = await self.read_handshake_frame()
        assert type(challenge) is Challenge
        proof = tcp._proof(
            cookie.encode(), b"dialer", challenge.nonce, NONCE, self.name, challenge.name
        )
        await self.send_value(Response(proof))
        assert await self.read_handshake_frame() == Welcome()

    async def closed_by_node(self) -> None:
        """Wait until the node hangs up (end of stream, or a reset)."""
        with trio.fail_after(10):
            try:
                while await self.stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
        await self.stream.aclose()


# -- a node to attack, and proof that it still serves ---------------------------------


@attrs.define
class Cluster:
    """``node`` (under attack) with an actor and member ``a``; ``other`` with member ``b``."""

    node: trio_gm.Node
    other: trio_gm.Node
    echo: Echo
    echo_id: trio_gm.ActorId
    a: trio_gm.Member
    b: trio_gm.Member
    events: Events
    caplog: pytest.LogCaptureFixture
    rounds: int = 0

    def stats(self) -> TransportStatistics:
        stats = self.node.statistics()
        assert stats is not None
        return stats

    async def assert_serving(self) -> None:
        """The node answers calls, relays broadcasts both ways and accepts a new peer."""
        self.rounds += 1
        tag = ("still serving", self.rounds)
        assert await self.other.actors.call(self.echo_id, tag, timeout=10) == ("echo", tag)
        await self.a.confirmed_broadcast(("a", tag))
        await self.events.expect("msg", "b", self.a.id, ("a", tag))
        await self.b.confirmed_broadcast(("b", tag))
        await self.events.expect("msg", "a", self.b.id, ("b", tag))
        assert self.other.transport is not None
        assert self.other.transport.name in self.stats().peers
        fresh = await RawPeer.connect(self.node)
        await fresh.authenticate()
        await fresh.stream.aclose()
        self.assert_no_tracebacks()

    def assert_no_tracebacks(self) -> None:
        """No frame reached code that could not handle it (the safety net logs a traceback)."""
        caught = [r.getMessage() for r in self.caplog.records if r.exc_info]
        assert caught == [], caught


@asynccontextmanager
async def cluster(
    store: trio_gm.GroupStore, events: Events, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Cluster]:
    caplog.set_level(logging.INFO, logger="trio_gm.transport")
    echo = Echo()
    async with (
        trio_gm.open_node(store, listen="127.0.0.1:0", cookie=COOKIE) as node,
        trio_gm.open_node(store, listen="127.0.0.1:0", cookie=COOKIE) as other,
        node.actors.open_actor(echo) as handle,
        node.open_member("g", Reporter(events), "a") as a,
        other.open_member("g", Reporter(events), "b") as b,
    ):
        await a.confirmed_broadcast("up")
        await events.expect("msg", "b", a.id, "up")
        caplog.clear()
        yield Cluster(node, other, echo, handle.id, a, b, events, caplog)


# -- before the handshake ---------------------------------------------------------------


def _hello(codec: Codec, name: Any, nonce: Any) -> list[bytes]:
    return [raw_internal(codec, Hello, [name, nonce])]


Attack = Callable[[Codec, str], list[bytes]]

#: Scenario -> (the frames a dialer sends, given the node's name; what the log says).
PRE_AUTH_ATTACKS: dict[str, tuple[Attack, str]] = {
    "Hello(5, b'n')": (lambda c, own: _hello(c, 5, b"n"), "Hello.name: expected str, got int"),
    "Hello(5, 16-byte nonce)": (
        lambda c, own: _hello(c, 5, NONCE),
        "Hello.name: expected str, got int",
    ),
    "Hello('x', None)": (
        lambda c, own: _hello(c, "x", None),
        "Hello.nonce: expected bytes, got NoneType",
    ),
    "valid Hello then Response(12345)": (
        lambda c, own: [c.encode(Hello(fake_name(), NONCE)), raw_internal(c, Response, [12345])],
        "Response.proof: expected bytes, got int",
    ),
    "Hello with a 15-byte nonce": (
        lambda c, own: [c.encode(Hello(fake_name(), NONCE[:15]))],
        "nonce of 15 bytes, not 16",
    ),
    "Hello with an empty name": (
        lambda c, own: [c.encode(Hello("", NONCE))],
        "an empty node name",
    ),
    "Hello with a 256-character name": (
        lambda c, own: [c.encode(Hello("127.0.0.1:1#" + "x" * 244, NONCE))],
        "a node name of 256 characters (at most 255)",
    ),
    "Hello with a name that is no address": (
        lambda c, own: [c.encode(Hello("nohost", NONCE))],
        "not 'host:port#incarnation'",
    ),
    "Hello with a newline in the name": (
        lambda c, own: [c.encode(Hello("h:1#a\nb", NONCE))],
        "unprintable characters",
    ),
    "Hello with the node's own name": (
        lambda c, own: [c.encode(Hello(own, NONCE))],
        "this node's own name",
    ),
    "valid Hello then a 31-byte proof": (
        lambda c, own: [c.encode(Hello(fake_name(), NONCE)), c.encode(Response(b"p" * 31))],
        "a proof of 31 bytes, not 32",
    ),
    "valid Hello then a second Hello": (
        lambda c, own: [c.encode(Hello(fake_name(), NONCE)), c.encode(Hello(fake_name(), NONCE))],
        "expected Response, got Hello",
    ),
    "Send before the handshake": (
        lambda c, own: [c.encode(Send(trio_gm.ActorId(own, 1), False, "intrusion"))],
        "expected Hello, got Send",
    ),
    "Heartbeat before the handshake": (
        lambda c, own: [c.encode(Heartbeat())],
        "expected Hello, got Heartbeat",
    ),
    "a value that is no frame": (lambda c, own: [c.encode(5)], "expected Hello, got int"),
    "bytes that do not decode": (lambda c, own: [b"\xc1\xc1\xc1"], "bad handshake frame"),
    "a handshake frame over 4096 bytes": (
        lambda c, own: [c.encode(Hello("h:1#" + "x" * 5000, NONCE))],
        "(at most 4096)",
    ),
}


def log_lines(caplog: pytest.LogCaptureFixture, *fragments: str) -> list[str]:
    """The log messages that hold every one of ``fragments``."""
    messages = [r.getMessage() for r in caplog.records]
    return [m for m in messages if all(f in m for f in fragments)]


@pytest.mark.parametrize("attack", list(PRE_AUTH_ATTACKS))
async def test_a_malformed_handshake_closes_only_its_connection(
    sqlite_store: trio_gm.GroupStore,
    events: Events,
    caplog: pytest.LogCaptureFixture,
    attack: str,
) -> None:
    async with cluster(sqlite_store, events, caplog) as c:
        before = c.stats()
        peer = await RawPeer.connect(c.node)
        frames, reason = PRE_AUTH_ATTACKS[attack]
        for data in frames(peer.codec, c.node.name):
            await peer.send(data)
        address = peer.address
        await peer.closed_by_node()
        after = c.stats()
        assert after.rejected_handshakes == before.rejected_handshakes + 1
        assert after.malformed_frames == before.malformed_frames + 1
        assert after.refused == before.refused + 1
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage() for r in warned] == log_lines(caplog, address, reason)
        await c.assert_serving()


@pytest.mark.parametrize("attack", ["wrong cookie", "silence"])
async def test_a_failed_handshake_without_a_bad_frame_is_counted_but_not_malformed(
    sqlite_store: trio_gm.GroupStore,
    events: Events,
    caplog: pytest.LogCaptureFixture,
    attack: str,
) -> None:
    async with cluster(sqlite_store, events, caplog) as c:
        assert c.node.transport is not None
        before = c.stats()
        if attack == "silence":
            c.node.transport.handshake_timeout = 0.2  # read when the handshake starts
        peer = await RawPeer.connect(c.node)
        if attack == "wrong cookie":
            with pytest.raises(AssertionError, match="closed the connection"):
                await peer.authenticate(cookie="not the cookie")
        else:
            await peer.send_value(Hello(fake_name(), NONCE))
            assert type(await peer.read_handshake_frame()) is Challenge
        await peer.closed_by_node()
        c.node.transport.handshake_timeout = tcp.HANDSHAKE_TIMEOUT
        after = c.stats()
        assert after.rejected_handshakes == before.rejected_handshakes + 1
        assert after.malformed_frames == before.malformed_frames
        await c.assert_serving()


# -- after the handshake --------------------------------------------------------------


def post_auth_attacks(
    codec: Codec, here: str, me: str, echo: trio_gm.ActorId
) -> dict[str, tuple[bytes, str]]:
    """Frames an authenticated peer ``me`` has no business sending to node ``here``.

    Scenario -> (the frame, what the log of the lost connection says).
    """
    third = "127.0.0.1:2#third"
    stranger = trio_gm.ActorId(third, 1)
    mine = trio_gm.ActorId(me, 1)
    wrong_node = "not an actor of this node"
    return {
        "Send(to=5)": (
            raw_internal(codec, Send, [5, False, "x"]),
            "Send.to: expected ActorId, got int",
        ),
        "Send(info='yes')": (
            raw_internal(codec, Send, [echo, "yes", "x"]),
            "Send.info: expected bool, got str",
        ),
        "Call(tag='x')": (
            raw_internal(codec, Call, [echo, "request", "x"]),
            "Call.tag: expected int, got str",
        ),
        "Monitor(ref=7)": (
            raw_internal(codec, Monitor, [7, mine, echo]),
            "Monitor.ref: expected MonitorRef, got int",
        ),
        "CallReply(tag=None)": (
            raw_internal(codec, CallReply, [None, "value"]),
            "CallReply.tag: expected int, got NoneType",
        ),
        "bytes that do not decode": (b"\xc1", "bad frame"),
        "a Hello after the handshake": (codec.encode(Hello(me, NONCE)), "an unexpected Hello"),
        "a Welcome after the handshake": (codec.encode(Welcome()), "an unexpected Welcome"),
        "a value that is no frame": (codec.encode([1, 2]), "an unexpected list"),
        "an ActorId as a frame": (codec.encode(echo), "an unexpected ActorId"),
        "a Send to an actor of another node": (
            codec.encode(Send(stranger, False, "relay me")),
            wrong_node,
        ),
        "a Call to an actor of another node": (
            codec.encode(Call(stranger, "relay me", 1)),
            wrong_node,
        ),
        "a Monitor for a watcher of a third node": (
            codec.encode(Monitor(MonitorRef(me, 1), stranger, echo)),
            "the watcher and ref of the sender",
        ),
        "a Monitor with a ref of this node": (
            codec.encode(Monitor(MonitorRef(here, 1), mine, echo)),
            "the watcher and ref of the sender",
        ),
        "a Monitor of an actor of another node": (
            codec.encode(Monitor(MonitorRef(me, 1), mine, stranger)),
            "the target must be of this node",
        ),
        "a Demonitor with a ref of this node": (
            codec.encode(Demonitor(MonitorRef(here, 1), echo)),
            "the ref of the sender",
        ),
        "a DownFrame for a watcher of a third node": (
            codec.encode(DownFrame(MonitorRef(here, 1), stranger, mine, "x")),
            "the watcher and ref must be of this node",
        ),
        "a DownFrame of a target not on the sender": (
            codec.encode(DownFrame(MonitorRef(here, 1), echo, stranger, "x")),
            "the target of the sender",
        ),
    }


POST_AUTH_ATTACKS = list(
    post_auth_attacks(Codec(internal_classes()), "h:1#a", "h:2#b", trio_gm.ActorId("h:1#a", 1))
)


async def test_a_hand_made_handshake_is_accepted_and_its_frames_delivered(
    sqlite_store: trio_gm.GroupStore, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    """The control for the tests below: what they send is refused for its content."""
    async with cluster(sqlite_store, events, caplog) as c:
        before = c.stats()
        peer = await RawPeer.connect(c.node)
        await peer.authenticate()
        assert peer.name in c.stats().peers
        await peer.send_value(Send(c.echo_id, False, "hello from a raw peer"), after_handshake=True)
        await peer.send_value(Call(c.echo_id, "ping", 41), after_handshake=True)
        assert await peer.read_frame() == CallReply(41, ("echo", "ping"))
        assert c.echo.seen == ["hello from a raw peer"]
        ghost = trio_gm.ActorId(c.node.name, 999_999)
        ref, watcher = MonitorRef(peer.name, 1), trio_gm.ActorId(peer.name, 1)
        await peer.send_value(Monitor(ref, watcher, ghost), after_handshake=True)
        assert await peer.read_frame() == DownFrame(ref, watcher, ghost, "noproc")
        after = c.stats()
        assert (after.malformed_frames, after.rejected_handshakes, after.refused) == (
            before.malformed_frames,
            before.rejected_handshakes,
            before.refused,
        )
        await peer.stream.aclose()
        await c.assert_serving()


@pytest.mark.parametrize("attack", POST_AUTH_ATTACKS)
async def test_an_authenticated_peer_sending_a_bad_frame_loses_only_its_connection(
    sqlite_store: trio_gm.GroupStore,
    events: Events,
    caplog: pytest.LogCaptureFixture,
    attack: str,
) -> None:
    async with cluster(sqlite_store, events, caplog) as c:
        before = c.stats()
        peer = await RawPeer.connect(c.node)
        await peer.authenticate()
        frame, reason = post_auth_attacks(peer.codec, c.node.name, peer.name, c.echo_id)[attack]
        await peer.send(frame, after_handshake=True)
        await peer.closed_by_node()
        assert log_lines(caplog, f"lost {peer.name}", reason), f"no log says {reason!r}"
        after = c.stats()
        assert after.malformed_frames == before.malformed_frames + 1
        assert after.refused == before.refused + 1
        assert after.rejected_handshakes == before.rejected_handshakes
        assert peer.name not in after.peers
        assert c.echo.seen == []  # nothing it sent was delivered
        await c.assert_serving()


# -- a hostile acceptor ----------------------------------------------------------------


async def _hostile_acceptor(
    listener: trio.SocketListener, answer: str, *, task_status: trio.TaskStatus[None]
) -> None:
    """Accept one dial and answer its Hello with ``answer``."""
    task_status.started()
    stream = await listener.accept()
    peer = RawPeer(stream, Codec(internal_classes()))
    assert type(await peer.read_handshake_frame()) is Hello
    peer_name = listener_name(listener)
    replies = {
        "a Challenge with wrong field types": [raw_internal(peer.codec, Challenge, [5, "n", None])],
        "a Challenge with a short nonce": [
            peer.codec.encode(Challenge(peer_name, b"n", b"p" * tcp.PROOF_SIZE))
        ],
        "a Welcome instead of a Challenge": [peer.codec.encode(Welcome())],
        "a Challenge from another name": [
            peer.codec.encode(Challenge(fake_name(), NONCE, b"p" * tcp.PROOF_SIZE))
        ],
        "a Challenge with a wrong proof": [
            peer.codec.encode(Challenge(peer_name, NONCE, b"p" * tcp.PROOF_SIZE))
        ],
        "bytes that do not decode": [b"\xc1"],
        "silence": [],
    }[answer]
    for data in replies:
        await peer.send(data)
    with trio.move_on_after(10):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
    await stream.aclose()


def listener_name(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"{host}:{port}#hostile-acceptor"


@pytest.mark.parametrize(
    ("answer", "malformed"),
    [
        ("a Challenge with wrong field types", 1),
        ("a Challenge with a short nonce", 1),
        ("a Welcome instead of a Challenge", 1),
        ("bytes that do not decode", 1),
        ("a Challenge from another name", 0),
        ("a Challenge with a wrong proof", 0),
        ("silence", 0),
    ],
)
async def test_a_hostile_acceptor_cannot_crash_the_node_that_dials_it(
    sqlite_store: trio_gm.GroupStore,
    events: Events,
    caplog: pytest.LogCaptureFixture,
    answer: str,
    malformed: int,
) -> None:
    async with cluster(sqlite_store, events, caplog) as c:
        assert c.node.transport is not None
        if answer == "silence":
            c.node.transport.handshake_timeout = 0.2
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        name = listener_name(listener)
        before = c.stats()
        async with trio.open_nursery() as nursery:
            await nursery.start(_hostile_acceptor, listener, answer)
            target = trio_gm.ActorId(name, 1)
            c.echo.ctx.monitor(target)  # dials it
            down = await c.echo.wait_for(lambda m: isinstance(m, Down))
            assert (down.target, down.reason) == (target, "noconnection")
        await listener.aclose()
        c.node.transport.handshake_timeout = tcp.HANDSHAKE_TIMEOUT
        after = c.stats()
        assert after.rejected_handshakes == before.rejected_handshakes + 1
        assert after.malformed_frames == before.malformed_frames + malformed
        assert log_lines(caplog, "the handshake with", name, "failed")
        await c.assert_serving()


async def test_an_id_naming_no_address_is_dead_not_a_crash(
    sqlite_store: trio_gm.GroupStore, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    """An id from a frame or a message may name any node; dialing it fails cleanly."""
    async with cluster(sqlite_store, events, caplog) as c:
        # No port; names the resolver refuses; one the IDNA codec refuses (a
        # ValueError where the others are OSErrors).
        for bogus in ("no address at all", "\x00:1#x", "[::1:1#x", "a" * 300 + ":1#x"):
            target = trio_gm.ActorId(bogus, 1)
            c.echo.seen.clear()
            c.echo.ctx.monitor(target)
            down = await c.echo.wait_for(lambda m: isinstance(m, Down))
            assert (down.target, down.reason) == (target, "noconnection")
        await c.assert_serving()


# -- every field of every class ---------------------------------------------------------

#: One codec for the tests that need no node (making one costs a little).
CODEC = Codec(internal_classes())
INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=8)
#: Values of every kind the decoder can produce, for wrong values of a field.
ATOMS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    st.floats(allow_nan=False),
    TEXT,
    st.binary(max_size=8),
    st.lists(INT64, max_size=2),
    st.dictionaries(TEXT, INT64, max_size=2),
    st.tuples(INT64),
    st.builds(trio_gm.ActorId, TEXT, INT64),
    st.builds(MonitorRef, TEXT, INT64),
    st.just(Heartbeat()),
)
#: User payloads: what a field typed Any carries.
PAYLOADS: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | TEXT | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(TEXT, children, max_size=3)
    ),
    max_leaves=6,
)


def _hints(cls: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in attrs.fields(cls)]


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _types_of(hint: Any) -> set[type]:
    """The types a value of a plain (not generic) ``hint`` may have."""
    if _is_union(hint):
        return set().union(*(_types_of(arg) for arg in typing.get_args(hint)))
    if hint is None:
        return {type(None)}
    if hint is float:
        return {float, int}
    assert isinstance(hint, type), hint
    assert typing.get_origin(hint) is None, hint
    return {hint}


@functools.cache
def right(hint: Any) -> st.SearchStrategy[Any]:
    """Values that match ``hint`` (an oracle independent of the validator)."""
    if hint is Any:
        return PAYLOADS
    if _is_union(hint):
        return st.one_of(*(right(arg) for arg in typing.get_args(hint)))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(right(args[0]), max_size=3).map(tuple)
        return st.tuples(*(right(arg) for arg in args))
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: TEXT,
        bytes: st.binary(max_size=8),
        int: INT64,
        bool: st.booleans(),
        float: st.floats(allow_nan=False),
        None: st.none(),
    }
    if hint in simple:
        return simple[hint]
    return instances(hint)


def _packable(value: Any) -> bool:
    try:
        CODEC.pack(value)
    except (TypeError, ValueError):
        return False
    return True


#: A run of packed messages, as the fields declared PACKED hold on the wire.
PACKED_RUNS: st.SearchStrategy[Any] = st.lists(PAYLOADS.filter(_packable), max_size=3).map(
    lambda values: tuple(CODEC.pack(value) for value in values)
)


def right_field(cls: type, name: str, hint: Any) -> st.SearchStrategy[Any]:
    """Values that match field ``name`` of ``cls`` (a run, for a PACKED field)."""
    if attrs.fields_dict(cls)[name].metadata.get("trio_gm.packed"):
        return PACKED_RUNS
    return right(hint)


@functools.cache
def instances(cls: type) -> st.SearchStrategy[Any]:
    """Well-typed instances of the attrs class ``cls``."""
    fields = {name: right_field(cls, name, hint) for name, hint in _hints(cls)}
    if cls is Group:  # its ring holds each member id once
        fields["members"] = st.lists(
            instances(GroupMember), max_size=3, unique_by=lambda m: m.id
        ).map(tuple)
    return st.builds(cls, **fields)


@functools.cache
def wrong(hint: Any) -> st.SearchStrategy[Any]:
    """Values that do not match ``hint``: of another type, or holding one that is."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        not_tuples = ATOMS.filter(lambda v: type(v) is not tuple)
        if len(args) == 2 and args[1] is Ellipsis:
            if args[0] is Any:
                return not_tuples
            items = st.lists(right(args[0]), max_size=2)
            one_bad = st.tuples(items, wrong(args[0]), items).map(lambda t: (*t[0], t[1], *t[2]))
            return st.one_of(not_tuples, one_bad)
        parts = [right(arg) for arg in args]
        bad_ones = [
            st.tuples(
                *(
                    wrong(arg) if i == j else part
                    for j, (arg, part) in enumerate(zip(args, parts, strict=True))
                )
            )
            for i, arg in enumerate(args)
        ]
        return st.one_of(not_tuples, st.tuples(*parts[:-1]), st.tuples(*parts, PAYLOADS), *bad_ones)
    allowed = _types_of(hint)
    return ATOMS.filter(lambda v: type(v) not in allowed)


#: (class, field, type) of every field of every wire class but those typed Any.
TYPED_FIELDS: list[tuple[type, str, Any]] = [
    (cls, name, hint) for cls in WIRE_CLASSES for name, hint in _hints(cls) if hint is not Any
]


def test_every_wire_class_and_field_is_covered() -> None:
    """A class added to the wire is covered by the tests below without a change here."""
    covered = {cls for cls, _, _ in TYPED_FIELDS}
    assert covered == {cls for cls in WIRE_CLASSES if any(h is not Any for _, h in _hints(cls))}
    assert len(TYPED_FIELDS) >= 40


# (One test looping over the fields, not a parametrized one: Hypothesis's
# pytest plugin grows a chain of settings objects by one at every run of a
# parametrized test, and ``--count 50`` over 45 fields overflows the stack.)


def _wrong_field_is_refused(cls: type, name: str) -> Callable[[], None]:
    strategies = [wrong(h) if n == name else right_field(cls, n, h) for n, h in _hints(cls)]

    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(st.tuples(*strategies))
    def check(fields: tuple[Any, ...]) -> None:
        encoded = raw_internal(CODEC, cls, list(fields))
        with pytest.raises(CodecError) as caught:  # and nothing else
            CODEC.decode(encoded)
        message = str(caught.value)
        assert message.startswith(f"{cls.__name__}.{name}"), message
        assert ": expected " in message
        assert ", got " in message

    return check


def test_a_wrong_typed_field_is_a_codec_error_naming_it() -> None:
    for cls, name, _hint in TYPED_FIELDS:
        _wrong_field_is_refused(cls, name)()


def _well_typed_values_round_trip(cls: type) -> Callable[[], None]:
    @settings(
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(instances(cls))
    def check(value: Any) -> None:
        decoded = CODEC.decode(CODEC.encode(value))
        assert decoded == value
        assert type(decoded) is cls

    return check


def test_well_typed_values_round_trip() -> None:
    for cls in WIRE_CLASSES:
        _well_typed_values_round_trip(cls)()


def test_a_group_ring_with_a_duplicate_is_a_codec_error() -> None:
    """The attrs validator of Group still runs on what the wire brings."""
    codec = Codec(internal_classes())
    member = GroupMember(trio_gm.ActorId("h:1#a", 1))
    with pytest.raises(CodecError, match="each member id may appear once"):
        codec.decode(raw_internal(codec, Group, ["g", 1, (member, member)]))


def _sample_right(hint: Any) -> Any:
    """One fixed value that matches ``hint``."""
    if hint is Any:
        return "payload"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return ()
        return tuple(_sample_right(arg) for arg in args)
    fixed = {str: "127.0.0.1:1#sample", bytes: NONCE, int: 1, bool: False}
    if hint in fixed:
        return fixed[hint]
    return hint(*(_sample_right(h) for _, h in _hints(hint)))


def wrong_sample(codec: Codec, cls: type) -> bytes:
    """``cls`` encoded with its first typed field of the wrong type."""
    hints = _hints(cls)
    bad = next(name for name, hint in hints if hint is not Any)
    fields = [
        (5 if hint is str else "wrong") if name == bad else _sample_right(hint)
        for name, hint in hints
    ]
    return raw_internal(codec, cls, fields)


async def test_wrong_typed_frames_of_every_class_over_a_socket(
    sqlite_store: trio_gm.GroupStore, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    """One wrong-typed frame of each class, on a connection of its own, before and
    after the handshake: each closes its connection, and the node carries on."""
    async with cluster(sqlite_store, events, caplog) as c:
        classes = sorted({cls for cls, _, _ in TYPED_FIELDS}, key=lambda cls: cls.__name__)
        before = c.stats()
        for cls in classes:
            peer = await RawPeer.connect(c.node)
            with pytest.raises(CodecError, match=f"^{cls.__name__}\\."):
                peer.codec.decode(wrong_sample(peer.codec, cls))
            await peer.send(wrong_sample(peer.codec, cls))
            await peer.closed_by_node()
        middle = c.stats()
        assert middle.rejected_handshakes == before.rejected_handshakes + len(classes)
        assert middle.malformed_frames == before.malformed_frames + len(classes)
        for cls in classes:
            peer = await RawPeer.connect(c.node)
            await peer.authenticate()
            await peer.send(wrong_sample(peer.codec, cls), after_handshake=True)
            await peer.closed_by_node()
        after = c.stats()
        assert after.rejected_handshakes == middle.rejected_handshakes
        assert after.malformed_frames == middle.malformed_frames + len(classes)
        await c.assert_serving()


# -- the checks can fail -----------------------------------------------------------------


async def test_without_the_hello_check_a_wrong_typed_hello_reaches_the_handshake_code(
    sqlite_store: trio_gm.GroupStore, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    """The injected bug: Hello's validator accepts anything. The decode test would
    fail (no CodecError), and the node-level test sees the frame reach code that
    assumes a str: a traceback, and no malformed frame counted."""
    async with cluster(sqlite_store, events, caplog) as c:
        assert c.node.transport is not None
        codec = c.node.transport.codec
        tag = codec._internal_tags[Hello]
        frame = raw_internal(codec, Hello, [5, NONCE])
        with pytest.raises(CodecError):
            codec.decode(frame)
        real = codec._internal_validators[tag]
        codec._internal_validators[tag] = attrs.evolve(real, check=lambda parts: True)
        try:
            assert codec.decode(frame) == Hello(5, NONCE)  # type: ignore[arg-type]
            before = c.stats()
            peer = await RawPeer.connect(c.node)
            await peer.send(frame)
            await peer.closed_by_node()
        finally:
            codec._internal_validators[tag] = real
        after = c.stats()
        assert after.malformed_frames == before.malformed_frames  # what the tests check
        assert log_lines(caplog, "unexpected TypeError")
        with pytest.raises(AssertionError, match="unexpected TypeError"):
            c.assert_no_tracebacks()
        caplog.clear()
        await c.assert_serving()


async def test_an_exception_in_a_handshake_closes_only_that_connection(
    sqlite_store: trio_gm.GroupStore,
    events: Events,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The safety net around a handshake: a bug there is one lost connection."""

    def broken(name: str, own: str) -> str | None:
        raise RuntimeError("injected")

    async with cluster(sqlite_store, events, caplog) as c:
        monkeypatch.setattr(handshake, "_name_problem", broken)
        before = c.stats()
        peer = await RawPeer.connect(c.node)
        await peer.send_value(Hello(fake_name(), NONCE))
        await peer.closed_by_node()
        monkeypatch.undo()
        assert c.stats().rejected_handshakes == before.rejected_handshakes + 1
        (record,) = [r for r in caplog.records if r.exc_info]
        assert "unexpected RuntimeError: injected" in record.getMessage()
        caplog.clear()
        await c.assert_serving()


async def test_an_exception_handling_a_frame_closes_only_that_connection(
    sqlite_store: trio_gm.GroupStore,
    events: Events,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The safety net around a frame after the handshake."""
    async with cluster(sqlite_store, events, caplog) as c:
        real_deliver = c.node.actors.deliver

        def deliver(to: trio_gm.ActorId, envelope: Any) -> bool:
            if envelope[1] == "boom":
                raise RuntimeError("injected")
            return real_deliver(to, envelope)

        # (The transport hands a Send to ActorNode.deliver.)
        monkeypatch.setattr(c.node.actors, "deliver", deliver)
        before = c.stats()
        peer = await RawPeer.connect(c.node)
        await peer.authenticate()
        await peer.send_value(Send(c.echo_id, False, "boom"), after_handshake=True)
        await peer.closed_by_node()
        after = c.stats()
        assert after.refused == before.refused + 1
        assert peer.name not in after.peers
        (record,) = [r for r in caplog.records if r.exc_info]
        assert "handling a Send frame" in record.getMessage()
        caplog.clear()
        await c.assert_serving()


@attrs.frozen
class Misdeclared:
    """Holds an int in ``serial`` at run time, but says ``str``: a wrong annotation."""

    node: str
    serial: str


@attrs.frozen
class EveryKind:
    a: float
    b: int | None
    c: tuple[str, int]
    d: tuple[()]
    e: list[bytes]
    f: dict[str, tuple[int, ...]]
    g: Any
    h: tuple[trio_gm.ActorId | None, ...]


@attrs.frozen
class Unsupported:
    x: Literal["a"]


def test_a_validator_built_from_a_wrong_annotation_rejects_correct_data() -> None:
    check = validator(Misdeclared)
    assert not check.check([0, "h:1#a", 5])
    assert check.explain([0, "h:1#a", 5]) == "Misdeclared.serial: expected str, got int"


def test_the_validator_checks_every_kind_of_annotation() -> None:
    check = validator(EveryKind)
    a = trio_gm.ActorId("h:1#a", 1)
    good: list[Any] = [0, 1.5, None, ("s", 1), (), [b"x"], {"k": (1, 2)}, object(), (a, None)]
    assert check.check(good)
    assert check.check([0, 2, 3, *good[3:]])  # an int is a float; b: int
    bad = {
        1: ("x", "EveryKind.a: expected float, got str"),
        2: (True, "EveryKind.b: expected int | None, got bool"),
        3: (("s", 1, 2), "EveryKind.c: expected tuple[str, int], got a tuple of 3 items"),
        4: ((1,), "EveryKind.d: expected tuple[()], got a tuple of 1 items"),
        5: ([b"x", "y"], "EveryKind.e[1]: expected bytes, got str"),
        6: ({"k": (1, "2")}, "EveryKind.f['k'][1]: expected int, got str"),
        8: ((a, 5), "EveryKind.h[1]: expected ActorId | None, got int"),
    }
    for index, (value, message) in bad.items():
        parts = [*good[:index], value, *good[index + 1 :]]
        assert not check.check(parts), message
        assert check.explain(parts) == message
    with pytest.raises(TypeError, match=r"Unsupported\.x: field type .* is not one"):
        validator(Unsupported)
