"""Members in separate processes over TCP, beside the same N in one process.

Run: ``pytest benchmarks/bench_net.py --benchmark-enable``.

* ``members_over_tcp``: each case runs ``trio-gm bench`` (a 3 s flood,
  every member broadcasting, then 200 idle confirmed broadcasts) and
  records its figures in ``extra_info``: ``delivered_to_all_per_s`` (the
  throughput), ``confirmed_us`` (the idle confirmed latency percentiles)
  and ``memory_per_member_kib``. The in-process case in the same group is
  the baseline for the ratio.
* ``round_trip``: one request at a time to another process on loopback,
  ``ROUND_TRIPS`` times: a remote ``call`` to an actor there (through the
  transport, its codec and both actor loops), beside a raw trio TCP echo of
  a length-prefixed frame (the floor). The timed figure is the whole run
  of round trips; ``extra_info["round_trip_us"]`` has the percentiles of
  one round trip.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_gm
from trio_gm import ActorId
from trio_gm._bench import percentiles

SECONDS = "3"
ROUND_TRIPS = 2_000
ROOT = Path(__file__).resolve().parents[1]


def _bench(*extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "trio_gm.cli", "bench", "--seconds", SECONDS, "--confirms",
         "200", "--json", *extra],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("where", ["one process", "processes"])
def test_bench_members_over_tcp(benchmark: Any, n: int, where: str) -> None:
    benchmark.group = f"N={n}: processes over TCP vs one process"
    extra = ["--members", str(n)] + (["--processes"] if where == "processes" else [])
    figures: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: figures.append(_bench(*extra)), rounds=1)
    benchmark.extra_info["delivered_to_all_per_s"] = figures[0]["delivered_to_all_per_s"]
    benchmark.extra_info["confirmed_us"] = figures[0]["confirmed_us"]
    benchmark.extra_info["memory_per_member_kib"] = figures[0]["memory_per_member_kib"]


async def _round_trips(kind: str) -> dict[str, float]:
    """Percentiles (µs) of ``ROUND_TRIPS`` round trips of ``kind`` to another process."""
    cookie = secrets.token_hex(16)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "benchmarks._echo_node", cookie],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "the echo node exited"
                line += chunk
        ready = json.loads(line)
        if kind == "remote call":
            async with trio_gm.open_store("sqlite://") as store:
                await store.create_tables()
                async with trio_gm.open_node(store, listen="127.0.0.1:0", cookie=cookie) as node:
                    echo = ActorId(*ready["actor"])

                    async def call() -> None:
                        await node.actors.call(echo, 12345)

                    return await _timed(call)
        stream = await trio.open_tcp_stream("127.0.0.1", ready["raw_port"])
        async with stream:
            frame = struct.pack(">I", 3) + b"\x93\x01\x02"  # a small msgpack array

            async def echo_frame() -> None:
                await stream.send_all(frame)
                got = b""
                while len(got) < len(frame):
                    got += await stream.receive_some(65536)

            return await _timed(echo_frame)
    finally:
        await process.stdin.aclose()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()


async def _timed(once: Callable[[], Awaitable[None]]) -> dict[str, float]:
    for _ in range(100):  # connect, warm up
        await once()
    samples = []
    for _ in range(ROUND_TRIPS):
        start = time.perf_counter()
        await once()
        samples.append((time.perf_counter() - start) * 1e6)
    return percentiles(samples)


@pytest.mark.parametrize("kind", ["remote call", "raw trio TCP"])
def test_bench_round_trip(benchmark: Any, kind: str) -> None:
    benchmark.group = f"round trip to another process ({ROUND_TRIPS} one at a time)"
    figures: list[dict[str, float]] = []
    benchmark.pedantic(lambda: figures.append(trio.run(_round_trips, kind)), rounds=1)
    benchmark.extra_info["round_trip_us"] = figures[0]
