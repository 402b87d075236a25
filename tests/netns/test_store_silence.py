"""A PostgreSQL store whose server falls silent: an outage, not a hang.

A partition drops packets rather than refusing them, so a query on a pooled
connection gets no answer and no error: without a bound of its own it would
wait out TCP's retransmissions (about 15 minutes), and a member cut off from
its peers and its store would never stop. The store's connections bound it
by ``connect_timeout`` (a TCP user timeout, and keepalives every second), so
the outage is noticed and, past ``outage_timeout``, the operation fails.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio

from tests.conftest import MakeNetwork, MakePostgres

pytestmark = pytest.mark.postgres

#: Opens the store at argv[1] (a pooled connection, used once), prints
#: "ready", and on a line of input reads the group again: prints "answered"
#: or the StoreUnavailable it met.
CLIENT = """
import sys, trio, trio_gm
async def main():
    async with trio_gm.open_store(sys.argv[1], connect_timeout=2, outage_timeout=2) as store:
        await store.create_tables()
        await store.read_group("g")
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        try:
            await store.read_group("g")
            print("answered", flush=True)
        except trio_gm.StoreUnavailable as exc:
            print("StoreUnavailable:", exc, flush=True)
trio.run(main)
"""

#: Bounds a broken test only: the client is done in about 6 s.
WAIT = 60.0


async def test_a_query_to_a_server_that_falls_silent_fails_as_an_outage(
    simulated_network: MakeNetwork, make_private_postgres: MakePostgres
) -> None:
    net = simulated_network(["a", "db"])
    a, db = net.hosts
    pg = make_private_postgres(db.address, netns=db.netns)
    client = await a.open_process(
        [sys.executable, "-c", CLIENT, pg.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert client.stdin is not None
    assert client.stdout is not None
    try:
        with trio.fail_after(WAIT):
            output = b""
            while b"\n" not in output:
                output += await client.stdout.receive_some()
            assert output == b"ready\n"
            await net.isolate_async(db)  # the pooled connection's packets are dropped
            await client.stdin.send_all(b"go\n")
            async for chunk in client.stdout:
                output += chunk
            assert await client.wait() == 0
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    line = output.decode().splitlines()[1]
    assert line.startswith("StoreUnavailable: read_group of group 'g': the store"), line
    assert "unreachable for" in line
    assert "outage_timeout of 2 s" in line
