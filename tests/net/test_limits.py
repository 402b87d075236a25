"""What a peer can cost a node: descriptors, handshakes, send queues, frames.

Issue 10: too many connections must not crash a node (EMFILE at accept, a
cap on connections in their handshake, slowloris); a peer that stops
reading must not grow our memory without bound (a bounded send queue that
must drain); a large frame must not hold up heartbeats (chunked records).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import trio_gm
from tests.net.echo import Echo
from tests.net.procs import open_module_process
from tests.net.rawpeer import RawPeer, handshake_frame
from trio_gm.actor import ActorNode, Down
from trio_gm.transport.codec import Codec
from trio_gm.transport.frames import Hello, Send
from trio_gm.transport.tcp import (
    _BEAT_RECORD,
    _HEADER,
    BEAT,
    LAST,
    MORE,
    WHOLE,
    Transport,
    _Connection,
    internal_classes,
    wire_frame,
)

COOKIE = "limits-cookie"
MiB = 1024 * 1024


async def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    """A fence on state another task changes (real sockets: no autojump).

    The transport's counters have no event to wait on: poll them.
    """
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - see above
            await trio.sleep(0.01)


def transport_of(node: trio_gm.Node) -> Transport:
    assert node.transport is not None
    return node.transport


async def _connect(node: trio_gm.Node) -> trio.SocketStream:
    assert node.address is not None
    host, port = node.address.rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def _closed_at(stream: trio.SocketStream) -> float:
    """Read until the node hangs up; when it did."""
    try:
        while await stream.receive_some(4096):
            pass
    except trio.BrokenResourceError:
        pass
    return trio.current_time()


def _records(data: bytes, *, whole: bool = True) -> list[tuple[int, bytes]]:
    """Split bytes written after the handshake into (kind, body) records
    (those complete so far, unless ``whole``)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while len(data) - pos >= 5:
        kind, length = _HEADER.unpack_from(data, pos)
        if len(data) - pos - 5 < length:
            break
        out.append((kind, data[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    assert pos == len(data) or not whole
    return out


# -- accepting -------------------------------------------------------------------


class _Lines:
    """The lines a process writes to one of its pipes, as they arrive."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = trio.Event()

    async def read(self, pipe: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async for data in pipe:
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            self.lines += [line.decode() for line in lines]
            self._changed.set()
            self._changed = trio.Event()

    async def expect(self, needle: str, timeout: float = 20) -> str:
        with trio.fail_after(timeout):
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                await self._changed.wait()


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_NOFILE is POSIX")
async def test_a_node_out_of_file_descriptors_pauses_accepting_and_serves_on(
    sqlite_store: trio_gm.GroupStore,
) -> None:
    """With RLIMIT_NOFILE at 256 and 300 idle connections, accept fails with
    EMFILE: the node logs it once, keeps serving the peers it has, and accepts
    again once descriptors are free."""
    process = await open_module_process("tests.net._fd_node", "256", COOKIE, "60")
    out, err = _Lines(), _Lines()
    idle: list[trio.SocketStream] = []
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None
            assert process.stderr is not None
            nursery.start_soon(out.read, process.stdout)
            nursery.start_soon(err.read, process.stderr)
            ready = json.loads(await out.expect('"address"'))
            echo = trio_gm.ActorId(*ready["actor"])
            host, port = ready["address"].rsplit(":", 1)
            async with trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as n1:
                # A peer connected before the flood...
                assert await n1.actors.call(echo, "before") == ("echo", "before")
                for _ in range(300):
                    idle.append(await trio.open_tcp_stream(host, int(port)))
                await err.expect("cannot accept connections: EMFILE")
                assert process.returncode is None
                # ...is served during it.
                assert await n1.actors.call(echo, "during") == ("echo", "during")
                # Let the accept loop fail and retry a few times (every 0.1 s):
                # the point is that it logs once for all of them.
                await trio.sleep(0.5)
                assert process.returncode is None
                for stream in idle:
                    await stream.aclose()
                idle.clear()
                again = await err.expect("accepts connections again")
                attempts = int(again.split("after ")[1].split(" failed")[0])
                assert attempts >= 2
                assert sum("cannot accept connections" in line for line in err.lines) == 1
                # A peer that connects afterwards is served too.
                async with trio_gm.open_node(
                    sqlite_store, listen="127.0.0.1:0", cookie=COOKIE
                ) as n2:
                    assert await n2.actors.call(echo, "after") == ("echo", "after")
                assert await n1.actors.call(echo, "still") == ("echo", "still")
            assert process.stdin is not None
            await process.stdin.aclose()
            with trio.fail_after(20):
                assert await process.wait() == 0
    finally:
        for stream in idle:
            await stream.aclose()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_connections_beyond_the_handshake_cap_are_closed_and_slowloris_times_out(
    sqlite_store: trio_gm.GroupStore,
) -> None:
    """A slowloris peer (a Hello trickled byte by byte) and 500 idle
    connections against a cap of 50 handshakes: the 451 beyond the cap are
    closed at once, the 50 within it when the handshake timeout runs out
    (trickling does not extend it), and real peers are served meanwhile."""
    timeout, cap, flood = 3.0, 50, 500
    open_ = trio_gm.open_node
    async with (
        open_(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE, max_handshakes=cap) as a,
        open_(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as b,
        a.actors.open_actor(Echo(sizes=True)) as echo,
        trio.open_nursery() as nursery,
    ):
        ta = transport_of(a)
        ta.handshake_timeout = timeout
        assert await b.actors.call(echo.id, 1) == ("echo", 1)
        hello = handshake_frame(Codec(internal_classes()), Hello("127.0.0.1:1#slow", b"n" * 16))
        assert len(hello) > 10 * timeout  # the trickle outlasts the timeout
        slow = await _connect(a)
        slow_open = trio.current_time()
        slow_closed: list[float] = []

        async def trickle() -> None:
            try:
                for byte in hello[:-1]:  # all but the last byte, 10 a second
                    await slow.send_all(bytes([byte]))
                    await trio.sleep(0.1)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async def watch_slow() -> None:
            slow_closed.append(await _closed_at(slow))

        nursery.start_soon(trickle)
        nursery.start_soon(watch_slow)
        await wait_until(lambda: ta._handshakes == 1)
        # A new peer connects and is served while slowloris holds its slot.
        async with open_(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as c:
            assert await c.actors.call(echo.id, 2) == ("echo", 2)
            assert ta._handshakes == 1

            opened: list[tuple[float, trio.SocketStream]] = []
            start = trio.current_time()
            for _ in range(flood):
                opened.append((trio.current_time(), await _connect(a)))
            assert trio.current_time() - start < timeout / 2, "connecting took too long"
            await wait_until(lambda: ta._rejected_handshakes == flood - (cap - 1))
            assert ta._handshakes == cap
            # The cap is full; the peers already connected are served.
            assert await b.actors.call(echo.id, 3) == ("echo", 3)
            assert await c.actors.call(echo.id, 4) == ("echo", 4)

            closed: list[tuple[float, float]] = []

            async def watch(opened_at: float, stream: trio.SocketStream) -> None:
                closed.append((opened_at, await _closed_at(stream)))
                await stream.aclose()

            async with trio.open_nursery() as watchers:
                for opened_at, stream in opened:
                    watchers.start_soon(watch, opened_at, stream)
            at_once = sum(end - begin < timeout / 2 for begin, end in closed)
            timed_out = sum(end - begin >= timeout - 0.2 for begin, end in closed)
            assert (at_once, timed_out) == (flood - (cap - 1), cap - 1)
            await wait_until(lambda: bool(slow_closed))
            assert timeout - 0.2 <= slow_closed[0] - slow_open < timeout + 2
            await slow.aclose()
            await wait_until(lambda: ta._handshakes == 0)
            # Slots are free again: a new peer gets in.
            async with open_(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as d:
                assert await d.actors.call(echo.id, 5) == ("echo", 5)
            assert await c.actors.call(echo.id, 6) == ("echo", 6)
        stats = a.statistics()
        assert stats is not None
        assert stats.reconnects == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"max_handshakes": 0}, ValueError),
        ({"max_handshakes": True}, TypeError),
        ({"max_send_queue": 1023, "max_frame_size": 1024}, ValueError),
        ({"max_send_queue": 1.5}, TypeError),
    ],
)
async def test_limits_are_checked(
    sqlite_store: trio_gm.GroupStore, kwargs: dict[str, Any], bad: type[Exception]
) -> None:
    with pytest.raises(bad, match=r"max_handshakes|max_send_queue"):
        async with trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE, **kwargs):
            pass  # pragma: no cover


# -- send queues -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["stalled", "overflowing"])
async def test_a_peer_that_stops_reading_is_declared_down(
    sqlite_store: trio_gm.GroupStore, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A peer that sends heartbeats but reads nothing: once the kernel's
    buffers are full our queue stops draining, and the peer is down after a
    heartbeat interval (or at once when the queue outgrows max_send_queue)."""
    caplog.set_level(logging.INFO, logger="trio_gm.transport")
    interval = 0.5
    limits = {"max_frame_size": 2 * MiB, "max_send_queue": 8 * MiB} if how == "overflowing" else {}
    async with (
        trio_gm.open_node(
            sqlite_store,
            listen="127.0.0.1:0",
            cookie=COOKIE,
            heartbeat_interval=interval,
            **limits,
        ) as a,
        a.actors.open_actor(behaviour := Echo(sizes=True)),
        trio.open_nursery() as nursery,
    ):
        ta = transport_of(a)
        peer = await RawPeer.connect(a, "127.0.0.1:9#deaf", COOKIE)
        nursery.start_soon(peer.beat_forever, 0.1)
        await wait_until(lambda: peer.name in transport_of(a).statistics().peers)
        target = trio_gm.ActorId(peer.name, 1)
        behaviour.ctx.monitor(target)
        payload = b"x" * MiB
        sent_at = trio.current_time()
        for i in range(24):
            a.actors.cast(target, (i, payload))
        down = await behaviour.wait_for(lambda m: isinstance(m, Down), timeout=10)
        elapsed = trio.current_time() - sent_at
        assert (down.target, down.reason) == (target, "noconnection")
        if how == "stalled":
            # It waited for a whole interval without progress, and not much more.
            assert interval <= elapsed < 6 * interval
            assert "it stopped reading" in caplog.text
            assert ta._send_queue_peak <= 24 * MiB + 4096
        else:
            assert elapsed < interval
            assert "more than max_send_queue=8388608" in caplog.text
            assert ta._send_queue_peak <= 8 * MiB
        stats = a.statistics()
        assert stats is not None
        assert peer.name not in stats.peers
        assert stats.send_queue_bytes == 0
        a.actors.cast(target, (99, payload))  # dead for good: nothing is queued
        assert a.statistics().send_queue_bytes == 0  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()
        await peer.stream.aclose()


async def test_frames_waiting_for_a_dial_are_bounded(
    sqlite_store: trio_gm.GroupStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that accepts TCP but never answers the handshake: what we queue
    for it meanwhile is bounded by max_send_queue too."""
    caplog.set_level(logging.INFO, logger="trio_gm.transport")
    (hole,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    held: list[trio.SocketStream] = []

    async def black_hole() -> None:
        while True:
            held.append(await hole.accept())

    async with (
        trio_gm.open_node(
            sqlite_store,
            listen="127.0.0.1:0",
            cookie=COOKIE,
            max_frame_size=2 * MiB,
            max_send_queue=8 * MiB,
        ) as a,
        a.actors.open_actor(behaviour := Echo(sizes=True)),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(black_hole)
        target = trio_gm.ActorId(f"127.0.0.1:{hole.socket.getsockname()[1]}#hole", 1)
        behaviour.ctx.monitor(target)
        await wait_until(lambda: bool(held))  # the dial is in its handshake
        for i in range(12):
            a.actors.cast(target, (i, b"x" * MiB))
        down = await behaviour.wait_for(lambda m: isinstance(m, Down))
        assert (down.target, down.reason) == (target, "noconnection")
        assert "while dialing it, more than max_send_queue=8388608" in caplog.text
        peer = transport_of(a)._peers[target.node]
        assert (peer.pending, peer.pending_bytes) == ([], 0)
        nursery.cancel_scope.cancel()
    for stream in held:
        await stream.aclose()
    await hole.aclose()


# -- chunked frames --------------------------------------------------------------


def test_wire_frame_chunks_only_large_frames() -> None:
    small = b"s" * 100
    assert _records(wire_frame(small)) == [(WHOLE, small)]
    large = bytes(range(256)) * 40  # 10240 bytes
    records = _records(wire_frame(large, chunk_size=4096))
    assert [kind for kind, _ in records] == [MORE, MORE, LAST]
    assert [len(body) for _, body in records] == [4096, 4096, 2048]
    assert b"".join(body for _, body in records) == large
    assert _records(wire_frame(large, chunk_size=len(large))) == [(WHOLE, large)]


async def test_large_frames_arrive_in_order_without_holding_up_heartbeats(
    sqlite_store: trio_gm.GroupStore,
) -> None:
    """70 casts of 1 MB and one of 40 MB with a 0.5 s heartbeat: all arrive,
    in order, and neither node takes the other for dead."""
    open_ = trio_gm.open_node
    async with (
        open_(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE, heartbeat_interval=0.5) as n1,
        open_(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE, heartbeat_interval=0.5) as n2,
    ):
        echo = Echo(sizes=True)
        async with n2.actors.open_actor(echo) as remote:
            assert await n1.actors.call(remote.id, "hi") == ("echo", "hi")
            mb = b"m" * 1_000_000
            large = b"L" * 40_000_000
            for i in range(70):
                n1.actors.cast(remote.id, (i, mb))
            # Plain bytes: the codec copies a payload once per level of
            # nesting, and both nodes share this thread and its 0.5 s.
            n1.actors.cast(remote.id, large)
            n1.actors.cast(remote.id, (71, b"after"))
            assert await n1.actors.call(remote.id, "sync", timeout=60) == ("echo", "sync")
            expected = [(i, 1_000_000) for i in range(70)] + [("bytes", len(large)), (71, 5)]
            assert echo.seen == expected
        for node, other in ((n1, n2), (n2, n1)):
            stats = node.statistics()
            assert stats is not None
            assert stats.peers == (other.name,)
            assert stats.reconnects == 0
        assert transport_of(n1).statistics().bytes_out > 110_000_000


async def test_heartbeats_pass_between_the_chunks_of_a_large_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A peer reading slowly: the writer puts heartbeats between the chunks
    of a large frame, and the frames keep their order."""
    transport = Transport(
        ActorNode("127.0.0.1:1#a"),
        Codec(internal_classes()),
        cookie=b"c",
        heartbeat_interval=1.0,
        chunk_size=1024,
    )
    ours, theirs = trio.testing.lockstep_stream_pair()
    conn = _Connection(transport, ours, "127.0.0.1:2#b", b"")
    before, large, after = b"b" * 10, bytes(range(256)) * 64, b"a" * 10  # large: 16 KiB
    received = bytearray()

    async def keep_alive() -> None:
        while True:
            await theirs.send_all(_BEAT_RECORD)
            await trio.sleep(0.25)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        nursery.start_soon(keep_alive)
        for frame in (before, large, after):
            conn.write(frame)
        # 256 bytes every 0.05 s: a 1 KiB chunk takes 0.2 s, the frame 3.2 s.
        while (WHOLE, after) not in _records(bytes(received), whole=False):
            received += await theirs.receive_some(256)
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    records = _records(bytes(received), whole=False)
    frames = [(kind, body) for kind, body in records if kind != BEAT]
    assert frames[0] == (WHOLE, before)
    assert frames[-1] == (WHOLE, after)
    assert [kind for kind, _ in frames[1:-1]] == [MORE] * 15 + [LAST]
    assert b"".join(body for _, body in frames[1:-1]) == large
    kinds = [kind for kind, _ in records]
    first_chunk, last_chunk = kinds.index(MORE), kinds.index(LAST)
    assert BEAT in kinds[first_chunk:last_chunk]
    assert transport._beats_between_chunks >= 10
    assert conn.reason == "closed"  # cancelled by us: no stall, no missed heartbeat


async def test_a_chunked_frame_from_a_peer_is_reassembled(
    sqlite_store: trio_gm.GroupStore,
) -> None:
    async with (
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as node,
        node.actors.open_actor(echo := Echo(sizes=True)) as handle,
    ):
        peer = await RawPeer.connect(node, "127.0.0.1:9#chunks", COOKIE)
        payload = bytes(range(256)) * 100
        data = peer.codec.encode(Send(handle.id, False, ("big", payload)))
        records = _records(wire_frame(data, chunk_size=1000))
        assert len(records) > 20
        # Heartbeats between every chunk, then a small frame behind the large one.
        wire = _BEAT_RECORD.join(_HEADER.pack(kind, len(body)) + body for kind, body in records)
        wire += wire_frame(peer.codec.encode(Send(handle.id, False, "small")))
        await peer.stream.send_all(wire)
        await echo.wait_for(lambda m: m == "small")
        assert echo.seen == [("big", len(payload)), "small"]
        await peer.stream.aclose()


@pytest.mark.parametrize(
    "attack", ["chunks above the limit", "whole above the limit", "unknown kind", "beat body"]
)
async def test_bad_records_close_the_connection_on_their_header(
    sqlite_store: trio_gm.GroupStore, attack: str
) -> None:
    """Chunks whose total would pass max_frame_size are refused as soon as a
    header says so: the node never waits for (or buffers) that body."""
    limit = MiB
    async with trio_gm.open_node(
        sqlite_store, listen="127.0.0.1:0", cookie=COOKIE, max_frame_size=limit
    ) as node:
        transport = transport_of(node)
        peer = await RawPeer.connect(node, "127.0.0.1:9#hostile", COOKIE)
        await wait_until(lambda: peer.name in transport.statistics().peers)
        chunk = 600 * 1024
        wire = {
            # 600 KiB, then a header announcing 600 KiB more (and no body).
            "chunks above the limit": _HEADER.pack(MORE, chunk)
            + b"\0" * chunk
            + _HEADER.pack(MORE, chunk),
            "whole above the limit": _HEADER.pack(WHOLE, limit + 1),
            "unknown kind": _HEADER.pack(7, 0),
            "beat body": _HEADER.pack(BEAT, 3) + b"abc",
        }[attack]
        await peer.stream.send_all(wire)
        with trio.fail_after(10):
            await peer.wait_closed()
        await wait_until(lambda: peer.name not in transport.statistics().peers)
        assert transport._malformed_frames == 1
        await peer.stream.aclose()
