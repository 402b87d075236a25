"""The advertised address: what a node's name says, and so what its peers dial.

A wildcard listen names no address, so it needs ``advertise``; the
advertised host goes into the node's name (and every member id); IPv6 works
in both; the name does not change across reconnects; a peer that dials an
address the node does not advertise still authenticates.
"""

from __future__ import annotations

import socket

import pytest
import trio

import trio_gm
from tests.gm_helpers import Events, Reporter
from tests.net.rawpeer import RawPeer
from trio_gm._address import parse_advertise
from trio_gm.transport.tcp import split_address

COOKIE = "advertise-cookie"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "*:0"])
async def test_a_wildcard_listen_without_advertise_is_an_error_that_explains_the_fix(
    sqlite_store: trio_gm.GroupStore, listen: str
) -> None:
    if listen.startswith("[::]") and not _ipv6_loopback():
        pytest.skip("no IPv6 here")
    with pytest.raises(ValueError, match="binds every interface") as info:
        async with trio_gm.open_node(sqlite_store, listen=listen, cookie=COOKIE):
            pass  # pragma: no cover
    assert "advertise=" in str(info.value)
    assert "--advertise" in str(info.value)


async def test_the_advertised_host_names_the_node_and_its_port_defaults_to_the_bound_one(
    sqlite_store: trio_gm.GroupStore,
) -> None:
    async with trio_gm.open_node(
        sqlite_store, listen="0.0.0.0:0", advertise="127.0.0.1", cookie=COOKIE
    ) as node:
        assert node.listen_address is not None
        bound_host, bound_port = split_address(node.listen_address)
        assert bound_host == "0.0.0.0"
        assert node.address == f"127.0.0.1:{bound_port}"
        assert node.name.startswith(f"127.0.0.1:{bound_port}#")
    async with trio_gm.open_node(
        sqlite_store, listen="127.0.0.1:0", advertise="gm.example:7000", cookie=COOKIE
    ) as node:
        assert node.address == "gm.example:7000"
        assert node.listen_address is not None
        assert node.listen_address.startswith("127.0.0.1:")


async def test_members_on_wildcard_nodes_that_advertise_reach_each_other(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with (
        trio_gm.open_node(
            sqlite_store, listen="0.0.0.0:0", advertise="127.0.0.1", cookie=COOKIE
        ) as n1,
        trio_gm.open_node(
            sqlite_store, listen="0.0.0.0:0", advertise="127.0.0.1", cookie=COOKIE
        ) as n2,
        n1.open_member("g", Reporter(events), "a") as a,
        n2.open_member("g", Reporter(events), "b") as b,
    ):
        assert a.id.node == n1.name
        await b.confirmed_broadcast("over tcp")
        await events.expect("msg", "a", b.id, "over tcp")
        stored = await sqlite_store.read_group("g")
        assert stored is not None
        assert {m.id.node for m in stored.members} == {n1.name, n2.name}
        assert all(not m.id.node.startswith("0.0.0.0") for m in stored.members)


@needs_ipv6
async def test_ipv6_in_listen_and_advertise(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with (
        trio_gm.open_node(sqlite_store, listen="[::1]:0", cookie=COOKIE) as n1,
        trio_gm.open_node(sqlite_store, listen="[::]:0", advertise="[::1]", cookie=COOKIE) as n2,
        n1.open_member("g", Reporter(events), "a") as a,
        n2.open_member("g", Reporter(events), "b") as b,
    ):
        for node in (n1, n2):
            assert node.address is not None
            assert node.address.startswith("[::1]:")
            assert split_address(node.address)[0] == "::1"
        await a.confirmed_broadcast("v6")
        await events.expect("msg", "b", a.id, "v6")
        assert sorted(await b.group_members()) == sorted([a.id, b.id])


async def test_a_peer_dialing_an_address_the_node_does_not_advertise_still_authenticates(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    # n1 listens everywhere and advertises "localhost"; n2's members dial
    # that name, which resolves to an address n1 never named: the handshake
    # checks the cookie, not the address.
    async with (
        trio_gm.open_node(
            sqlite_store, listen="0.0.0.0:0", advertise="localhost", cookie=COOKIE
        ) as n1,
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as n2,
        n1.open_member("g", Reporter(events), "a"),
        n2.open_member("g", Reporter(events), "b") as b,
    ):
        assert n1.address is not None
        assert n1.address.startswith("localhost:")
        await b.confirmed_broadcast("dialed localhost")
        await events.expect("msg", "a", b.id, "dialed localhost")
        stats = n2.statistics()
        assert stats is not None
        assert len(stats.peers) == 1


async def test_a_peer_dialing_another_of_the_nodes_addresses_authenticates_normally(
    sqlite_store: trio_gm.GroupStore,
) -> None:
    # The node advertises 127.0.0.1; a peer reaches it on 127.0.0.2 (also
    # this host's loopback): the Challenge names the advertised node.
    async with trio_gm.open_node(
        sqlite_store, listen="0.0.0.0:0", advertise="127.0.0.1", cookie=COOKIE
    ) as node:
        assert node.listen_address is not None
        port = split_address(node.listen_address)[1]
        peer = await RawPeer.dial(f"127.0.0.2:{port}", "127.0.0.9:1#raw", COOKIE)
        try:
            assert peer.node_name == node.name
        finally:
            await peer.stream.aclose()


async def test_a_node_name_is_stable_across_reconnects(
    sqlite_store: trio_gm.GroupStore, events: Events
) -> None:
    async with (
        trio_gm.open_node(
            sqlite_store, listen="0.0.0.0:0", advertise="127.0.0.1", cookie=COOKIE
        ) as n1,
        trio_gm.open_node(sqlite_store, listen="127.0.0.1:0", cookie=COOKIE) as n2,
    ):
        names = (n1.name, n2.name)
        async with (
            n1.open_member("g", Reporter(events), "a") as a,
            n2.open_member("g", Reporter(events), "b"),
        ):
            await a.confirmed_broadcast(1)
            await events.expect("msg", "b", a.id, 1)
            assert n1.transport is not None
            assert n2.transport is not None
            peer = n1.transport._peers[n2.transport.name]
            assert peer.conn is not None
            peer.conn.scope.cancel()  # the connection breaks: both members lose the other
            await events.receive(lambda e: e[0] == "members_changed" and e[1] == "a")
        # New members dial again, to the same advertised names.
        async with (
            n1.open_member("g2", Reporter(events), "c") as c,
            n2.open_member("g2", Reporter(events), "d") as d,
        ):
            await d.confirmed_broadcast(2)
            await events.expect("msg", "c", d.id, 2)
            assert (c.id.node, d.id.node) == names
        assert (n1.name, n2.name) == names
        stats = n1.statistics()
        assert stats is not None
        assert stats.reconnects == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.5", ("10.0.0.5", None)),
        ("10.0.0.5:7000", ("10.0.0.5", 7000)),
        ("gm-1.example", ("gm-1.example", None)),
        ("[fd00::5]", ("fd00::5", None)),
        ("[fd00::5]:7000", ("fd00::5", 7000)),
        ("fd00::5", ("fd00::5", None)),
    ],
)
def test_advertise_forms(value: str, expected: tuple[str, int | None]) -> None:
    assert parse_advertise(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "names no host"),
        (":7000", "names no host"),
        ("0.0.0.0", "wildcard"),
        ("[::]", "wildcard"),
        ("host:0", "port must be 1-65535"),
        ("host:99999", "port must be 1-65535"),
        ("host:http", "port must be 1-65535"),
        ("[10.0.0.1]:7000", "not an IPv6 address"),
        ("[fd00::1", "expected"),
        ("a:b:c", "not a host"),
        ("evil#host", "cannot contain"),
        ("two words", "cannot contain"),
    ],
)
async def test_bad_advertise_values_are_refused_saying_why(
    sqlite_store: trio_gm.GroupStore, value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        async with trio_gm.open_node(
            sqlite_store, listen="127.0.0.1:0", advertise=value, cookie=COOKIE
        ):
            pass  # pragma: no cover


async def test_advertise_needs_listen(sqlite_store: trio_gm.GroupStore) -> None:
    with pytest.raises(ValueError, match="only make sense with listen"):
        async with trio_gm.open_node(sqlite_store, advertise="10.0.0.5"):
            pass  # pragma: no cover
    with pytest.raises(TypeError, match="advertise must be a str"):
        async with trio_gm.open_node(
            sqlite_store,
            listen="127.0.0.1:0",
            advertise=5,  # type: ignore[arg-type]
            cookie=COOKIE,
        ):
            pass  # pragma: no cover
    await trio.lowlevel.checkpoint()
