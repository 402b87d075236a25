"""Nodes over loopback in one process: routing, security, failures."""

from __future__ import annotations

import struct
import time
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_gm
from tests.gm_helpers import Events, Reporter
from tests.net.echo import Echo
from trio_gm._cookie import load_cookie
from trio_gm.actor import Down
from trio_gm.transport.codec import Codec, CodecError
from trio_gm.transport.frames import Hello, Send
from trio_gm.transport.tcp import internal_classes, wire_frame

COOKIE = "test-cookie"


async def _pair(store: trio_gm.GroupStore, **kwargs: Any) -> Any:
    return (
        trio_gm.open_node(store, listen="127.0.0.1:0", cookie=COOKIE, **kwargs),
        trio_gm.open_node(store, listen="127.0.0.1:0", cookie=COOKIE, **kwargs),
    )


async def test_members_on_three_nodes_form_one_ring(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with (
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as n1,
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as n2,
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as n3,
    ):
        assert n1.address is not None
        assert n1.address.startswith("127.0.0.1:")
        async with n1.open_member("g", Reporter(events), "a") as a:
            async with n2.open_member("g", Reporter(events), "b") as b:
                async with n3.open_member("g", Reporter(events), "c") as c:
                    for i in range(300):
                        await a.broadcast(i)
                        await b.broadcast(("b", i))
                    await c.confirmed_broadcast("end")
                    for who in "abc":
                        got = [e[3] for e in events.log if e[:2] == ("msg", who) and e[2] == a.id]
                        assert got == list(range(300))
                        got_b = [e[3] for e in events.log if e[:2] == ("msg", who) and e[2] == b.id]
                        assert got_b == [("b", i) for i in range(300)]
                    stats = n1.statistics()
                    assert stats is not None
                    assert stats.frames_out > 0
                    assert stats.bytes_in > 0
                    assert len(stats.peers) == 2
                c.kill()
                await a.confirmed_broadcast("x")
                await a.confirmed_broadcast("y")
                await events.expect("members_changed", "a", [], [c.id])
                await events.expect("members_changed", "b", [], [c.id])


async def test_unencodable_broadcast_is_refused_naming_the_type(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    @attrs.frozen
    class Point:
        x: int
        y: int

    async with trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as node:
        async with node.open_member("g", Reporter(events), "a") as a:
            with pytest.raises(TypeError, match=r"type .*Point cannot be sent"):
                await a.broadcast([1, Point(1, 2)])
            with pytest.raises(TypeError, match=r"builtins\.set cannot be sent"):
                await a.confirmed_broadcast({1, 2})
            assert node.codec is not None
            node.codec.register(Point)
            await a.confirmed_broadcast([1, Point(1, 2)])
            await events.expect("msg", "a", a.id, [1, Point(1, 2)])


async def test_remote_calls_casts_and_monitors(sqlite_store: trio_gm.GroupStore) -> None:
    n1_cm, n2_cm = await _pair(sqlite_store)
    async with n1_cm as n1, n2_cm as n2:
        echo, watcher = Echo(), Echo()
        async with n1.actors.open_actor(watcher):
            async with n2.actors.open_actor(echo) as remote:
                assert await n1.actors.call(remote.id, "hi") == ("echo", "hi")
                n1.actors.cast(remote.id, ("cast", 1))
                n1.actors.send(remote.id, ("info", 2))
                assert await n1.actors.call(remote.id, "sync") == ("echo", "sync")
                assert echo.seen == [("cast", 1), ("info", 2)]
                # A remote monitor fires when the remote actor stops.
                ref = watcher.ctx.monitor(remote.id)
                await n1.actors.call(remote.id, "settle")
            down = await watcher.wait_for(lambda m: isinstance(m, Down))
            assert (down.ref, down.target, down.reason) == (ref, remote.id, "normal")
            with pytest.raises(trio_gm.ActorStopped):
                await n1.actors.call(remote.id, "gone")
            # Monitoring an actor that does not exist there: noproc at once.
            ghost = trio_gm.ActorId(remote.id.node, 999)
            watcher.ctx.monitor(ghost)
            down = await watcher.wait_for(lambda m: isinstance(m, Down) and m.target == ghost)
            assert down.reason == "noproc"


async def test_a_lost_connection_kills_every_remote_actor_for_good(
    sqlite_store: trio_gm.GroupStore,
) -> None:
    n1_cm, n2_cm = await _pair(sqlite_store)
    async with n1_cm as n1, n2_cm as n2:
        echo = Echo()
        async with n2.actors.open_actor(echo) as remote:
            assert await n1.actors.call(remote.id, "hi") == ("echo", "hi")
            assert n1.transport is not None
            peer = n1.transport._peers[n2.transport.name if n2.transport else ""]
            assert peer.conn is not None
            peer.conn.scope.cancel()  # the connection breaks
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio_gm.ActorStopped, match="noconnection"):
                await n1.actors.call(remote.id, "after the loss")
            n1.actors.cast(remote.id, "dropped")
            # A new actor on that node is reachable again (a reconnect)...
            async with n2.actors.open_actor(Echo()) as fresh:
                assert await n1.actors.call(fresh.id, "new") == ("echo", "new")
            # ...but the old one stays dead to n1.
            with pytest.raises(trio_gm.ActorStopped):
                await n1.actors.call(remote.id, "still dead")
            assert "dropped" not in echo.seen
            stats = n1.statistics()
            assert stats is not None
            assert stats.reconnects == 1


async def test_a_stall_of_this_process_longer_than_the_heartbeat_is_no_nodedown(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    # Both nodes share this process's loop: while it is blocked neither can
    # beat, and when it resumes the silence checks wake late. They must not
    # take their own loop's stall for the peer's silence.
    n1_cm, n2_cm = await _pair(sqlite_store, heartbeat_interval=0.5)
    async with (
        n1_cm as n1,
        n2_cm as n2,
        n1.open_member("g", Reporter(events), "a") as a,
        n2.open_member("g", Reporter(events), "b") as b,
    ):
        await a.confirmed_broadcast("before")
        for _ in range(3):
            time.sleep(1.2)  # noqa: ASYNC251 - the point: the whole loop stalls, 2.4 intervals
            await b.confirmed_broadcast("after a stall")
        await a.confirmed_broadcast("after the stalls")
        assert sorted(await a.group_members()) == sorted([a.id, b.id])
        for node in (n1, n2):
            stats = node.statistics()
            assert stats is not None
            assert stats.reconnects == 0
            assert len(stats.peers) == 1


async def _raw_connect(node: trio_gm.Node) -> trio.SocketStream:
    assert node.address is not None
    host, port = node.address.rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


def _frame(codec: Codec, value: Any) -> bytes:
    """``value`` in handshake framing (a 4-byte length); after the handshake
    frames go in records: ``tcp.wire_frame``."""
    data = codec.encode(value)
    return struct.pack(">I", len(data)) + data


@pytest.mark.parametrize(
    "attack",
    ["wrong cookie", "no handshake", "records, no handshake", "random bytes", "truncated",
     "oversized"],
)  # fmt: skip
async def test_bad_peers_are_refused_and_the_node_carries_on(
    sqlite_store: trio_gm.GroupStore, events: Events, attack: str
) -> None:
    async with (
        trio_gm.open_node(
            sqlite_store, listen="127.0.0.1:0", cookie=COOKIE, max_frame_size=1024
        ) as node,
        node.open_member("g", Reporter(events), "a") as a,
    ):
        codec = Codec(internal_classes())
        if attack == "wrong cookie":
            async with trio_gm.open_node(
                sqlite_store, listen="127.0.0.1:0", cookie="not the cookie"
            ) as intruder:
                intruder.actors.cast(a.id, "intrusion")
                await trio.sleep(0.5)
        else:
            stream = await _raw_connect(node)
            payload = {
                "no handshake": _frame(codec, Send(a.id, False, "intrusion")),
                "records, no handshake": wire_frame(codec.encode(Send(a.id, False, "intrusion"))),
                "random bytes": b"\xff\x00\x13garbage" * 100,
                "truncated": _frame(codec, Hello("x", b"n"))[:7],
                "oversized": struct.pack(">I", 10_000_000) + b"x" * 100,
            }[attack]
            await stream.send_all(payload)
            if attack == "truncated":
                await stream.send_eof()
            # The node hangs up on us: end of stream, or a reset.
            with trio.fail_after(10):
                try:
                    assert await stream.receive_some(4096) == b""
                except trio.BrokenResourceError:
                    pass
            await stream.aclose()
            assert node.statistics().refused >= 1  # type: ignore[union-attr]
        await trio.sleep(0.2)
        assert node.transport is not None
        stats = node.statistics()
        assert stats is not None
        assert stats.peers == ()
        assert not any(e[0] == "msg" and e[3] == "intrusion" for e in events.log)
        await a.confirmed_broadcast("still serving")
        await events.expect("msg", "a", a.id, "still serving")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=200))
def test_the_frame_decoder_takes_any_bytes(data: bytes) -> None:
    codec = Codec(internal_classes())
    try:
        codec.decode(data)
    except CodecError:
        pass


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary()
        | st.floats(allow_nan=False),
        lambda children: st.lists(children) | st.tuples(children, children)
        | st.dictionaries(st.text(), children),
        max_leaves=20,
    )
)  # fmt: skip
def test_payloads_round_trip_exactly(value: Any) -> None:
    codec = Codec(internal_classes())
    assert codec.decode(codec.encode(value)) == value
    assert type(codec.decode(codec.encode(value))) is type(value)


async def test_no_cookie_means_the_cookie_file_on_any_address_and_an_empty_one_is_refused(
    sqlite_store: trio_gm.GroupStore,
) -> None:
    # A node always has a cookie, so listening beyond loopback needs no cookie=.
    async with trio_gm.open_node(sqlite_store, listen="0.0.0.0:0", advertise="127.0.0.1") as node:
        assert node.transport is not None
        assert node.transport.cookie == await load_cookie()
        assert len(node.transport.cookie) == 64
    for empty in ("", b""):
        with pytest.raises(ValueError, match="cookie must not be empty"):
            async with trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=empty):
                pass  # pragma: no cover


@pytest.mark.parametrize("bad", ["nohost", "host:", "host:99999", ":80"])
async def test_bad_listen_addresses(sqlite_store: trio_gm.GroupStore, bad: str) -> None:
    with pytest.raises(ValueError, match="expected an address 'host:port'"):
        async with trio_gm.open_node(sqlite_store, listen=bad, cookie="c"):
            pass  # pragma: no cover


async def test_soak_across_three_nodes(sqlite_store: trio_gm.GroupStore) -> None:
    from trio_gm.testing.soak import run_soak

    report = await run_soak(
        sqlite_store, seconds=1.0, members=4, seed=3, change_every=0.05, min_changes=12, nodes=3
    )
    assert report.violations == []
    assert report.kills + report.leaves > 0
    assert report.delivered > 1000


async def test_tls_between_nodes(sqlite_store: trio_gm.GroupStore, events: Events) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    tls = {"ssl_context": server, "ssl_client_context": client}
    async with (
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE, **tls) as n1,
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE, **tls) as n2,
        n1.open_member("g", Reporter(events), "a") as a,
        n2.open_member("g", Reporter(events), "b"),
    ):
        await a.confirmed_broadcast("over TLS")
        await events.expect("msg", "b", a.id, "over TLS")
        # A plain-text peer cannot talk to a TLS node.
        async with trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as plain:
            with pytest.raises(trio_gm.ActorStopped, match="noconnection"):
                await plain.actors.call(a.id, "hello?")


async def test_tls_needs_both_contexts(sqlite_store: trio_gm.GroupStore) -> None:
    import ssl

    with pytest.raises(ValueError, match="TLS needs both"):
        async with trio_gm.open_node(
            sqlite_store,
            listen="127.0.0.1:0",
            cookie=COOKIE,
            ssl_context=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        ):
            pass  # pragma: no cover


async def test_simultaneous_first_contact_keeps_one_connection(
    sqlite_store: trio_gm.GroupStore,
) -> None:
    """Both nodes dial each other at once: one connection wins and nobody
    mistakes the other for a reconnect (which would declare it down)."""
    for _ in range(5):
        n1_cm, n2_cm = await _pair(sqlite_store)
        async with n1_cm as n1, n2_cm as n2:
            e1, e2 = Echo(), Echo()
            async with n1.actors.open_actor(e1) as a1, n2.actors.open_actor(e2) as a2:
                for i in range(20):
                    n1.actors.cast(a2.id, ("from n1", i))
                    n2.actors.cast(a1.id, ("from n2", i))
                await e2.wait_for(lambda m: m == ("from n1", 19))
                await e1.wait_for(lambda m: m == ("from n2", 19))
                assert e2.seen == [("from n1", i) for i in range(20)]
                assert e1.seen == [("from n2", i) for i in range(20)]
                for node in (n1, n2):
                    stats = node.statistics()
                    assert stats is not None
                    assert stats.reconnects == 0
                    assert len(stats.peers) == 1
