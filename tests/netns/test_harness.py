"""The simulated-hosts harness itself (trio_gm.testing.netns): reach, cuts, cleanup.

Connections across a cut are dropped silently, so "cannot connect" is seen
as a connect that gets no answer within ``CUT_TIMEOUT``; a reachable peer
answers at once and gets ``REACH_TIMEOUT``, which only bounds a broken test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import trio

from tests.conftest import MakeNetwork, MakePostgres
from trio_gm.testing import netns
from trio_gm.testing.netns import (
    PREFIX,
    Host,
    SimulatedNetwork,
    SimulatedNetworkError,
    remove_leftovers,
)

PY = sys.executable
REACH_TIMEOUT = 10.0
CUT_TIMEOUT = 0.5

#: A TCP server: listens on each address in argv, prints the ports, then
#: answers every connection with the address it came from.
SERVER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
ports = []
for address in sys.argv[1:]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    server = socket.create_server((address, 0), family=family)
    sel.register(server, selectors.EVENT_READ)
    ports.append(str(server.getsockname()[1]))
print(" ".join(ports), flush=True)
while True:
    for key, _ in sel.select():
        conn, peer = key.fileobj.accept()
        with conn:
            conn.sendall(f"hello {peer[0]}\\n".encode())
"""

#: A TCP client: for each ADDRESS PORT pair in argv, prints the server's line.
CLIENT = """
import socket, sys
for address, port in zip(sys.argv[1::2], sys.argv[2::2]):
    with socket.create_connection((address, int(port)), timeout=10) as conn:
        print(conn.makefile().readline().strip(), flush=True)
"""

#: Opens the store at argv[1] (creating gm's table) and prints "ok", or the
#: StoreUnavailable it met.
STORE_CLIENT = """
import sys, trio, trio_gm
async def main():
    try:
        async with trio_gm.open_store(sys.argv[1], connect_timeout=2) as store:
            await store.create_tables()
            print("ok")
    except trio_gm.StoreUnavailable as exc:
        print("StoreUnavailable:", exc)
trio.run(main)
"""


# ------------------------------------------------------------------- helpers


class Listeners:
    """A listening TCP socket on each address of each host, made in the host's namespace.

    The kernel completes a handshake without accept(), so a connect that
    succeeds has crossed the link both ways.
    """

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self.ports: dict[str, int] = {}

    def add(self, *hosts: Host) -> None:
        for host in hosts:
            for address in host.addresses():
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sock = self._stack.enter_context(host.socket(family))
                sock.bind((address, 0))
                sock.listen(256)
                self.ports[address] = sock.getsockname()[1]


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    with contextlib.ExitStack() as stack:
        yield Listeners(stack)


def connects(src: Host, address: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection from ``src`` to ``address`` opens within ``timeout``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with src.socket(family) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except TimeoutError:
            return False
    return True


def assert_connectivity(
    net: SimulatedNetwork, listeners: Listeners, blocked: Iterable[tuple[str, str]] = ()
) -> None:
    """TCP works between any two hosts over both families, except ``blocked`` pairs (either way)."""
    cut = {frozenset(pair) for pair in blocked}
    attempts = [
        (src, dst, address, frozenset((src.name, dst.name)) not in cut)
        for src in net.hosts
        for dst in net.hosts
        if src is not dst
        for address in dst.addresses()
    ]

    def attempt(item: tuple[Host, Host, str, bool]) -> tuple[str, str, str, bool, bool]:
        src, dst, address, expected = item
        timeout = REACH_TIMEOUT if expected else CUT_TIMEOUT
        return (
            src.name,
            dst.name,
            address,
            expected,
            connects(src, address, listeners.ports[address], timeout),
        )

    with ThreadPoolExecutor(max_workers=len(attempts)) as pool:
        results = list(pool.map(attempt, attempts))
    wrong = [
        f"{src} -> {dst} ({address}): {'connected' if got else 'no answer'}"
        for src, dst, address, expected, got in results
        if got != expected
    ]
    assert wrong == [], f"blocked {sorted(sorted(pair) for pair in cut)}"


def kernel_drops(net: SimulatedNetwork) -> dict[str, set[tuple[str, str]]]:
    """Per family, the (from, to) pairs that have a drop rule in the receiving host."""
    by_address = {address: host.name for host in net.hosts for address in host.addresses()}
    found: dict[str, set[tuple[str, str]]] = {"-4": set(), "-6": set()}
    for host in net.hosts:
        for family, pairs in found.items():
            result = subprocess.run(
                ["ip", "-n", host.netns, family, "-j", "rule", "show"],
                capture_output=True,
                text=True,
                check=True,
            )
            for rule in json.loads(result.stdout):
                if rule.get("action") == "blackhole":
                    pairs.add((by_address[rule["src"]], host.name))
    return found


def assert_kernel_matches(net: SimulatedNetwork) -> None:
    dropped = set(net.dropped)
    assert kernel_drops(net) == {"-4": dropped, "-6": dropped}


def leftovers(network_id: str) -> list[str]:
    """Namespaces and links named after network ``network_id`` that exist now."""
    namespaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    found = [line.split()[0] for line in namespaces.splitlines()]
    found += [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    return [
        name
        for name in found
        if name.startswith((f"{PREFIX}-{network_id}-", f"{PREFIX}{network_id}"))
    ]


def assert_removed(network_id: str) -> None:
    assert leftovers(network_id) == []
    assert not (netns.OWNER_DIR / f"{network_id}.json").exists()


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            state = file.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def serve(host: Host) -> tuple[subprocess.Popen[str], list[int]]:
    """The SERVER script on ``host``'s addresses, and its ports."""
    server = host.popen([PY, "-c", SERVER, *host.addresses()], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    ports = [int(port) for port in server.stdout.readline().split()]
    assert len(ports) == len(host.addresses()), "the server did not start"
    return server, ports


# ---------------------------------------------------------------- reaching


def test_processes_on_two_hosts_talk_over_ipv4_and_ipv6(simulated_network: MakeNetwork) -> None:
    net = simulated_network(hosts=2)
    a, b = net.hosts
    server, (port4, port6) = serve(a)
    client = b.run(
        [PY, "-c", CLIENT, a.address, str(port4), a.address6, str(port6)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert client.returncode == 0, client.stderr
    # The server saw each connection come from b's own address.
    assert client.stdout.splitlines() == [f"hello {b.address}", f"hello {b.address6}"]
    assert server.poll() is None
    assert server.pid in a.processes()
    assert server.pid not in b.processes()


def test_hosts_have_their_own_loopback_and_no_way_out(simulated_network: MakeNetwork) -> None:
    net = simulated_network(hosts=1)
    (a,) = net.hosts
    with (
        socket.create_server(("127.0.0.1", 0)) as root4,
        socket.create_server(("::1", 0), family=socket.AF_INET6) as root6,
    ):
        for address, root in (("127.0.0.1", root4), ("::1", root6)):
            port = root.getsockname()[1]
            with pytest.raises(ConnectionRefusedError):
                connects(a, address, port, REACH_TIMEOUT)
            # ... and the port is free on the host's own loopback.
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            with a.socket(family) as sock:
                sock.bind((address, port))
    links = a.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()] == [
        "lo",
        "eth0",
    ]
    for option, subnets in (("-4", {net.subnet}), ("-6", {net.subnet6, "fe80::/64"})):
        routes = a.run(["ip", option, "route"], capture_output=True, text=True, check=True)
        assert {line.split()[0] for line in routes.stdout.splitlines()} == subnets


def test_the_root_namespace_does_not_reach_the_hosts(
    simulated_network: MakeNetwork, listeners: Listeners
) -> None:
    net = simulated_network(hosts=1)
    (a,) = net.hosts
    listeners.add(a)
    for address in a.addresses():
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family) as sock:
            sock.settimeout(CUT_TIMEOUT)
            try:
                sock.connect((address, listeners.ports[address]))
            except OSError:  # no route, no answer, or a refusal from whoever has the route
                continue
        pytest.fail(f"the test process reached {address} from outside the simulated network")


# -------------------------------------------------------------------- cuts


def test_a_cut_blocks_both_ways_while_both_reach_the_rest(
    simulated_network: MakeNetwork, listeners: Listeners
) -> None:
    net = simulated_network(hosts=3)
    a, b, c = net.hosts
    listeners.add(a, b, c)
    assert_connectivity(net, listeners)
    net.cut(a, b)
    assert net.cuts == {("a", "b"), ("b", "a")}
    assert_connectivity(net, listeners, blocked=[("a", "b")])
    net.heal(b, a)  # either order
    assert net.cuts == frozenset()
    assert_connectivity(net, listeners)


def test_a_cut_is_silent(simulated_network: MakeNetwork, listeners: Listeners) -> None:
    """The sender's connect hears nothing (no EINVAL, no refusal): a firewall's DROP."""
    net = simulated_network(hosts=2)
    a, b = net.hosts
    listeners.add(b)
    net.cut(a, b)
    for address in b.addresses():
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with a.socket(family) as sock:
            sock.settimeout(CUT_TIMEOUT)
            with pytest.raises(TimeoutError):
                sock.connect((address, listeners.ports[address]))


def test_a_one_way_cut_drops_one_direction_only(
    simulated_network: MakeNetwork, listeners: Listeners
) -> None:
    net = simulated_network(hosts=3)
    a, b, c = net.hosts
    listeners.add(a, b, c)
    net.cut_one_way(a, b)
    assert net.cuts == {("a", "b")}
    assert net.dropped == {("a", "b")}
    # TCP needs both directions, so it fails both ways...
    assert_connectivity(net, listeners, blocked=[("a", "b")])
    # ... but b's datagrams reach a, and a's do not reach b.
    for a_address, b_address, c_address in zip(
        a.addresses(), b.addresses(), c.addresses(), strict=True
    ):
        family = socket.AF_INET6 if ":" in a_address else socket.AF_INET
        with contextlib.ExitStack() as stack:
            sockets = {}
            for host, address in ((a, a_address), (b, b_address), (c, c_address)):
                sock = stack.enter_context(host.socket(family, socket.SOCK_DGRAM))
                sock.bind((address, 0))
                sockets[host.name] = sock
            sockets["b"].sendto(b"from b", sockets["a"].getsockname())
            sockets["a"].settimeout(REACH_TIMEOUT)
            assert sockets["a"].recvfrom(100)[0] == b"from b"
            sockets["a"].sendto(b"from a", sockets["b"].getsockname())
            sockets["c"].sendto(b"from c", sockets["b"].getsockname())
            sockets["b"].settimeout(REACH_TIMEOUT)
            assert sockets["b"].recvfrom(100)[0] == b"from c"
            sockets["b"].settimeout(CUT_TIMEOUT)
            with pytest.raises(TimeoutError):
                sockets["b"].recvfrom(100)
    net.heal(a, b)
    assert net.dropped == frozenset()
    assert_connectivity(net, listeners)


def test_cuts_are_idempotent_and_undone_exactly(simulated_network: MakeNetwork) -> None:
    net = simulated_network(hosts=3)
    a, b, c = net.hosts
    assert_kernel_matches(net)
    net.cut(a, b)
    net.cut(b, a)
    net.cut_one_way(a, b)
    assert net.dropped == {("a", "b"), ("b", "a")}
    assert_kernel_matches(net)
    net.heal(a, b)  # once undoes them all
    assert net.dropped == frozenset()
    assert_kernel_matches(net)
    net.heal(a, c)  # healing what is not cut does nothing
    net.cut_one_way(c, a)
    net.cut_one_way("c", "b")  # names work too
    assert net.dropped == {("c", "a"), ("c", "b")}
    assert_kernel_matches(net)
    net.heal("b", "c")
    assert net.dropped == {("c", "a")}
    assert_kernel_matches(net)
    net.heal_all()
    assert net.dropped == frozenset()
    assert kernel_drops(net) == {"-4": set(), "-6": set()}


def test_isolation_and_cuts_are_tracked_apart(simulated_network: MakeNetwork) -> None:
    net = simulated_network(hosts=3)
    a, b, c = net.hosts
    net.cut(a, b)
    net.isolate(a)
    net.isolate(a)
    assert net.isolated == {"a"}
    everyone = {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")}
    assert net.dropped == everyone
    assert_kernel_matches(net)
    net.heal(a, b)  # a stays isolated
    assert net.dropped == everyone
    net.cut(a, b)
    net.rejoin(a)  # the cut stays
    assert net.isolated == frozenset()
    assert net.dropped == {("a", "b"), ("b", "a")}
    assert_kernel_matches(net)
    net.rejoin(a)
    net.isolate(c)
    net.heal_all()
    assert (net.cuts, net.isolated, net.dropped) == (frozenset(), frozenset(), frozenset())
    assert kernel_drops(net) == {"-4": set(), "-6": set()}


def test_an_isolated_host_reaches_nobody_until_it_rejoins(
    simulated_network: MakeNetwork, listeners: Listeners
) -> None:
    net = simulated_network(hosts=3)
    a, b, c = net.hosts
    listeners.add(a, b, c)
    net.isolate(a)
    assert_connectivity(net, listeners, blocked=[("a", "b"), ("a", "c")])
    d = net.add_host()  # a host added meanwhile cannot reach it either
    assert (d.name, d.index) == ("d", 4)
    listeners.add(d)
    assert_connectivity(net, listeners, blocked=[("a", "b"), ("a", "c"), ("a", "d")])
    assert_kernel_matches(net)
    net.rejoin(a)
    assert_connectivity(net, listeners)
    assert_kernel_matches(net)


# --------------------------------------------------------------- the store


def store_client(host: Host, url: str) -> str:
    result = host.run([PY, "-c", STORE_CLIENT, url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return str(result.stdout).strip()


def test_a_private_postgres_on_a_simulated_host_can_be_cut_off(
    simulated_network: MakeNetwork, make_private_postgres: MakePostgres
) -> None:
    net = simulated_network(hosts=2)
    a, b = net.hosts
    db = net.add_host("db")
    pg = make_private_postgres(db.address, netns=db.netns)
    assert pg.url == f"postgresql+psycopg://postgres@{db.address}:{pg.port}/test"
    assert pg.netns == db.netns
    assert pg.processes()
    assert set(pg.processes()) <= set(db.processes())
    assert store_client(a, pg.url) == "ok"

    net.isolate(db)
    assert store_client(a, pg.url).startswith(
        f"StoreUnavailable: open_store: cannot connect to {pg.url}"
    )
    # The Unix socket still reaches it, from outside the simulated network.
    assert store_client_here(pg.socket_url) == "ok"
    net.rejoin(db)
    assert store_client(a, pg.url) == "ok"

    net.cut(a, db)  # a loses the store, b keeps it
    assert store_client(a, pg.url).startswith("StoreUnavailable")
    assert store_client(b, pg.url) == "ok"
    net.heal(a, db)
    # The server's own controls work inside the namespace.
    pg.kill()
    assert store_client(a, pg.url).startswith("StoreUnavailable")
    pg.start()
    assert store_client(a, pg.url) == "ok"


def store_client_here(url: str) -> str:
    result = subprocess.run(
        [PY, "-c", STORE_CLIENT, url], capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip()


def test_postgres_refuses_a_namespace_that_is_not_there() -> None:
    from trio_gm.testing.postgres import PostgresServer

    with pytest.raises(ValueError, match=r"network namespace .* got 'trgm-nowhere'"):
        PostgresServer.create(host="10.231.0.1", netns="trgm-nowhere")
    with pytest.raises(TypeError, match="netns must be a str"):
        PostgresServer.create(netns=3)  # type: ignore[arg-type]


# ----------------------------------------------------------------- cleanup


def test_close_kills_every_process_and_removes_everything(
    simulated_network: MakeNetwork,
) -> None:
    net = simulated_network(hosts=2)
    a, b = net.hosts
    net.cut(a, b)
    server, _ = serve(a)
    # Once it prints, ip has entered the namespace and exec'd the shell.
    stopped = b.popen(["sh", "-c", "echo in; exec sleep 1000"], stdout=subprocess.PIPE, text=True)
    assert stopped.stdout is not None
    assert stopped.stdout.readline() == "in\n"
    os.kill(stopped.pid, signal.SIGSTOP)
    # A daemon that nobody tracks: only its namespace says where it runs.
    b.run(["sh", "-c", "sleep 1000 >/dev/null 2>&1 &"], check=True)
    pids = a.processes() + b.processes()
    assert len(pids) == 3
    net.close()
    assert [pid for pid in pids if running(pid)] == []
    assert server.returncode == -signal.SIGKILL  # reaped, so no zombie and no warning
    assert stopped.returncode == -signal.SIGKILL
    assert_removed(net.id)
    assert net.closed
    net.close()  # twice is fine
    with pytest.raises(SimulatedNetworkError, match="cannot be used any more"):
        a.popen(["true"])
    with pytest.raises(SimulatedNetworkError, match="cannot be used any more"):
        net.cut(a, b)


@pytest.mark.parametrize("error", [KeyError, KeyboardInterrupt])
def test_a_failing_block_still_removes_everything(
    netns_available: None, error: type[BaseException]
) -> None:
    seen: list[SimulatedNetwork] = []
    pids: list[int] = []

    def fail_inside() -> None:
        with SimulatedNetwork.create(hosts=2) as net:
            seen.append(net)
            net.isolate("a")
            pids.append(net["b"].popen(["sleep", "1000"]).pid)
            raise error("boom")

    with pytest.raises(error, match="boom"):
        fail_inside()
    assert not running(pids[0])
    assert_removed(seen[0].id)


@pytest.mark.parametrize("error", [SimulatedNetworkError, KeyboardInterrupt])
def test_a_failure_while_creating_removes_what_was_made(
    netns_available: None, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    made: list[SimulatedNetwork] = []
    real_new = SimulatedNetwork._new
    real_batch = netns._ip_batch

    def new(ipv6: bool) -> SimulatedNetwork:
        made.append(real_new(ipv6))
        return made[-1]

    def batch(lines: list[str], *options: str) -> None:
        real_batch(lines, *options)
        if any(line.startswith("netns add") and line.endswith("-b") for line in lines):
            raise error("interrupted while making host b")

    monkeypatch.setattr(SimulatedNetwork, "_new", staticmethod(new))
    monkeypatch.setattr(netns, "_ip_batch", batch)
    with pytest.raises(error, match="interrupted while making host b"):
        SimulatedNetwork.create(hosts=3)
    assert_removed(made[0].id)


def test_a_host_that_fails_to_be_added_is_removed_and_the_rest_works(
    simulated_network: MakeNetwork, listeners: Listeners, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = simulated_network(hosts=2)
    net.cut("a", "b")
    real_batch = netns._ip_batch

    def batch(lines: list[str], *options: str) -> None:
        real_batch(lines, *options)
        if "-6" in options:  # after its veth, addresses and rules exist
            raise KeyboardInterrupt("interrupted while adding host c")

    with monkeypatch.context() as patch:
        patch.setattr(netns, "_ip_batch", batch)
        with pytest.raises(KeyboardInterrupt, match="adding host c"):
            net.add_host("c")
    assert [host.name for host in net.hosts] == ["a", "b"]
    c_names = {f"{PREFIX}-{net.id}-c", f"{PREFIX}{net.id}v3"}  # its namespace and veth
    assert c_names & set(leftovers(net.id)) == set()
    assert_kernel_matches(net)
    listeners.add(*net.hosts)
    assert_connectivity(net, listeners, blocked=[("a", "b")])
    c = net.add_host("c")  # the name is free again
    assert c.index == 4
    listeners.add(c)
    assert_connectivity(net, listeners, blocked=[("a", "b")])


def test_leftovers_of_a_dead_run_are_removed_and_live_networks_kept(
    simulated_network: MakeNetwork, listeners: Listeners
) -> None:
    mine = simulated_network(hosts=2)
    crashed = subprocess.run(
        [
            PY,
            "-c",
            "import os, subprocess\n"
            "from trio_gm.testing.netns import SimulatedNetwork\n"
            "net = SimulatedNetwork.create(hosts=2)\n"
            "devnull = {'stdout': subprocess.DEVNULL, 'stderr': subprocess.DEVNULL}\n"
            "net['a'].popen(['sleep', '1000'], **devnull)\n"
            "net.cut('a', 'b')\n"
            "print(net.id, flush=True)\n"
            "os._exit(0)\n",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    dead_id = crashed.stdout.strip()
    left = leftovers(dead_id)
    assert len(left) == 5  # 2 namespaces, 2 veths, the bridge
    orphans = [
        pid
        for name in left
        if name.startswith(f"{PREFIX}-")
        for pid in netns._processes_in([name])[name]
    ]
    assert len(orphans) == 1
    assert sorted(remove_leftovers()) == sorted(left)
    assert_removed(dead_id)
    assert not running(orphans[0])
    # A live network (ours) is left alone.
    assert len(leftovers(mine.id)) == 5
    listeners.add(*mine.hosts)
    assert_connectivity(mine, listeners)
    assert remove_leftovers() == []


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """unavailable_reason() asks again, and the real answer is back afterwards."""
    netns._probe.cache_clear()
    yield
    netns._probe.cache_clear()


def test_unavailable_reason_says_why(
    netns_available: None, fresh_probe: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SimulatedNetwork.unavailable_reason() is None
    with monkeypatch.context() as patch:
        patch.setattr(os, "geteuid", lambda: 1000)
        netns._probe.cache_clear()
        assert SimulatedNetwork.unavailable_reason() == (
            "not root: making network namespaces, veths and bridges needs root"
        )
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "which", lambda name: None)
        netns._probe.cache_clear()
        assert SimulatedNetwork.unavailable_reason() == "no ip command (iproute2) on PATH"

    def refuse(lines: list[str], *options: str) -> None:
        raise SimulatedNetworkError("ip -b - failed with status 2: Operation not permitted")

    with monkeypatch.context() as patch:
        patch.setattr(netns, "_ip_batch", refuse)
        netns._probe.cache_clear()
        reason = SimulatedNetwork.unavailable_reason()
    assert reason == (
        "a network namespace could not be made and removed here: "
        "ip -b - failed with status 2: Operation not permitted"
    )


# --------------------------------------------------------------- arguments


def test_bad_arguments_name_the_value(simulated_network: MakeNetwork) -> None:
    net = simulated_network(hosts=["web", "db"])
    other = simulated_network(hosts=1)
    web = net["web"]
    with pytest.raises(KeyError, match=r"no host 'a' on .*; its hosts are \['db', 'web'\]"):
        net.cut(web, "a")
    with pytest.raises(ValueError, match="cannot be cut from itself, got 'web' twice"):
        net.cut(web, "web")
    with pytest.raises(ValueError, match="is on another network"):
        net.isolate(other["a"])
    with pytest.raises(TypeError, match="expected a Host or a host name, got 3"):
        net.rejoin(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already has a host 'db'"):
        net.add_host("db")
    with pytest.raises(ValueError, match=r"1 to 32 letters.*got 'a b'"):
        net.add_host("a b")
    with pytest.raises(ValueError, match="got '-x'"):
        SimulatedNetwork.create(hosts=["-x"])
    with pytest.raises(ValueError, match=r"unique, got \['a'\] more than once"):
        SimulatedNetwork.create(hosts=["a", "b", "a"])
    with pytest.raises(TypeError, match="not the string 'abc'"):
        SimulatedNetwork.create(hosts="abc")
    with pytest.raises(ValueError, match="hosts must be 0 to 254, got 255"):
        SimulatedNetwork.create(hosts=255)
    with pytest.raises(TypeError, match="not the string 'true'"):
        web.command("true")
    v4_only = simulated_network(hosts=1, ipv6=False)
    assert v4_only["a"].addresses() == [v4_only["a"].address]
    with pytest.raises(SimulatedNetworkError, match="ipv6=False"):
        _ = v4_only["a"].address6


# ------------------------------------------------------------------- trio


async def test_the_async_api(netns_available: None) -> None:
    async with SimulatedNetwork.running_async(hosts=2) as net:
        a, b = net.hosts
        server = await a.open_process([PY, "-c", SERVER, a.address], stdout=subprocess.PIPE)
        assert server.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            line += await server.stdout.receive_some()
        port = int(line.decode())
        client = [PY, "-c", CLIENT, a.address, str(port)]
        result = await b.run_process(client, capture_stdout=True)
        assert result.stdout.decode().split() == ["hello", b.address]
        await net.cut_async(a, b)
        await net.cut_one_way_async(b, a)
        await net.isolate_async(b)
        assert net.dropped == {("a", "b"), ("b", "a")}
        await net.rejoin_async(b)
        await net.heal_async(a, b)
        await net.isolate_async(a)
        await net.heal_all_async()
        assert net.dropped == frozenset()
        c = await net.add_host_async("c")
        result = await c.run_process([PY, "-c", CLIENT, a.address, str(port)], capture_stdout=True)
        assert result.stdout.decode().split() == ["hello", c.address]
    # Closing killed the server; waiting for it stays ours.
    with trio.fail_after(REACH_TIMEOUT):
        assert await server.wait() == -signal.SIGKILL
    assert_removed(net.id)
