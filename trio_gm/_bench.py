"""Speed measurements shared by ``trio-gm bench`` and ``benchmarks/``.

A flood (after RabbitMQ's gm_speed_test and the Erlang flood test in
``BASELINES.md``): N members, all or one broadcasting small integers, each
broadcast loop yielding every 100 messages, for a fixed time; then, once the
group is idle, confirmed broadcasts one at a time for latency.

"Delivered to all" is the rate at which broadcasts reached every member:
the smallest per-member delivery rate.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Any

import attrs
import trio

from . import GroupStore, Member, MemberId, open_node


@attrs.frozen
class BenchResult:
    members: int
    senders: int
    seconds: float
    processes: bool
    #: Broadcasts per second that reached every member.
    delivered_to_all_per_s: float
    #: Broadcasts per second, all senders together.
    sent_per_s: float
    #: Deliveries per second at each member.
    received_per_s: list[float]
    #: Idle confirmed_broadcast latency percentiles, microseconds.
    confirmed_us: dict[str, float]
    #: Peak resident memory growth per member, KiB: in one process, the
    #: process's growth divided by the members; with ``processes``, the mean
    #: growth of the member processes' peak RSS from just before the flood
    #: to the end of the run.
    memory_per_member_kib: float | None
    #: With ``processes``: each member process's resident memory (VmRSS) at
    #: the end of the run, KiB (``None`` where the system does not say).
    rss_per_process_kib: list[float | None] | None = None
    #: With ``processes``: each member process's VmRSS at the end of the run
    #: less its VmRSS just before the flood, KiB (may be negative).
    rss_growth_per_process_kib: list[float | None] | None = None
    #: With ``processes``: messages each member process delivered in the
    #: whole run (ramp-up and latency samples included), for the growth above.
    delivered_per_process: list[int] | None = None
    #: With ``processes``: frames and bytes each member process received per
    #: second during the flood (deliveries per frame: ``received_per_s`` over these).
    frames_in_per_s: list[float | None] | None = None
    bytes_in_per_s: list[float | None] | None = None


class CountingMember:
    """Callbacks that count deliveries and do nothing else."""

    def __init__(self) -> None:
        self.delivered = 0

    def joined(self, args: Any, members: list[MemberId]) -> None:
        pass

    def members_changed(self, args: Any, births: list[MemberId], deaths: list[MemberId]) -> None:
        pass

    def handle_msg(self, args: Any, sender: MemberId, msg: Any) -> None:
        self.delivered += 1

    def handle_terminate(self, args: Any, reason: Any) -> None:
        pass


async def flood(member: Member, stop: trio.Event) -> int:
    """Broadcast 0, 1, 2, ... until ``stop``; return how many were sent."""
    sent = 0
    while not stop.is_set():
        for _ in range(100):
            await member.broadcast(sent)
            sent += 1
        await trio.lowlevel.checkpoint()
    return sent


async def confirmed_latencies(member: Member, count: int) -> dict[str, float]:
    """Percentiles (µs) of ``count`` idle confirmed broadcasts, one at a time."""
    for _ in range(min(50, count)):  # warm up, and drain what the flood left
        await member.confirmed_broadcast(-1)
    samples = []
    for i in range(count):
        start = time.perf_counter()
        await member.confirmed_broadcast(i)
        samples.append((time.perf_counter() - start) * 1e6)
    return percentiles(samples)


def _status_kib(field: str) -> float | None:
    """A ``/proc/self/status`` memory line (``VmRSS``, ``VmHWM``) in KiB."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_kib() -> float | None:
    """This process's resident memory now, KiB (``None`` where unknown)."""
    return _status_kib("VmRSS")


def peak_rss_kib() -> float:
    """This process's peak resident memory, KiB."""
    peak = _status_kib("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 1024 if sys.platform == "darwin" else float(maxrss)  # bytes on macOS


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "mean": round(statistics.fmean(ordered), 1),
    }


async def bench_in_process(
    store: GroupStore,
    *,
    members: int,
    seconds: float,
    one_sender: bool = False,
    confirms: int = 300,
    group: str = "bench",
) -> BenchResult:
    """Flood a group of ``members`` in this process for ``seconds``."""
    rss_before = peak_rss_kib()
    counters = [CountingMember() for _ in range(members)]
    joined: list[Member] = []
    all_joined, go, stop, done = trio.Event(), trio.Event(), trio.Event(), trio.Event()
    sent: list[int] = []

    async with open_node(store) as node, trio.open_nursery() as nursery:

        async def run(index: int) -> None:
            async with node.open_member(group, counters[index]) as member:
                joined.append(member)
                if len(joined) == members:
                    all_joined.set()
                await go.wait()
                if index == 0 or not one_sender:
                    sent.append(await flood(member, stop))
                await done.wait()

        for index in range(members):
            nursery.start_soon(run, index)
        await all_joined.wait()
        go.set()
        await trio.sleep(min(0.5, seconds / 4))  # ramp up
        base = [c.delivered for c in counters]
        start = time.perf_counter()
        await trio.sleep(seconds)
        elapsed = time.perf_counter() - start
        counts = [c.delivered - b for c, b in zip(counters, base, strict=True)]
        stop.set()
        latencies = await confirmed_latencies(joined[0], confirms)
        done.set()
    rss_after = peak_rss_kib()
    received = [count / elapsed for count in counts]
    return BenchResult(
        members=members,
        senders=1 if one_sender else members,
        seconds=round(elapsed, 3),
        processes=False,
        delivered_to_all_per_s=round(min(received)),
        sent_per_s=round(sum(sent) / (elapsed + min(0.5, seconds / 4))),
        received_per_s=[round(r) for r in received],
        confirmed_us=latencies,
        memory_per_member_kib=round(max(0, rss_after - rss_before) / members, 1),
    )
