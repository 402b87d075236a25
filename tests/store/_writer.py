"""One concurrent writer for the lost-update tests, run in a thread or a process.

Kept apart from the test modules so that a spawned process can import it
without importing pytest's fixtures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from trio_gm import MemberId
from trio_gm.store import Group, GroupMember, open_store

GROUP = "hot"


class Barrier(Protocol):
    def wait(self, timeout: float | None = None) -> object: ...


def increment(worker: int, first: Callable[[], None] | None) -> Callable[..., Any]:
    """A transact function: bump the version and this worker's counter.

    The first time a worker runs it, its entry is inserted (and the row, if
    nobody made it yet). ``first`` runs inside the worker's very first
    attempt, after its read: a barrier there makes every writer read the
    same row before any of them writes.
    """
    node = f"w{worker}"
    pending = [first] if first is not None else []

    def bump(current: Group | None) -> tuple[Group, None]:
        while pending:
            pending.pop()()
        members = list(current.members) if current is not None else []
        for i, member in enumerate(members):
            if member.id.node == node:
                members[i] = GroupMember(MemberId(node, member.id.serial + 1))
                break
        else:
            members.append(GroupMember(MemberId(node, 1)))
        version = current.version + 1 if current is not None else 1
        return Group(GROUP, version, tuple(members)), None

    return bump


async def write(
    url: str, schema: str | None, worker: int, count: int, barrier: Barrier | None
) -> dict[str, int]:
    first = None
    if barrier is not None:

        def first() -> None:
            barrier.wait(60)

    async with open_store(url, schema=schema, durable=False) as store:
        bump = increment(worker, first)
        for _ in range(count):
            await store.transact(GROUP, bump, operation="increment")
        return attrs.asdict(store.statistics())


def run_in_thread(
    url: str,
    schema: str | None,
    worker: int,
    count: int,
    barrier: Barrier | None,
    results: list[object],
) -> None:
    try:
        results.append(trio.run(write, url, schema, worker, count, barrier))
    except BaseException as exc:
        results.append(exc)


def run_in_process(
    url: str, schema: str | None, worker: int, count: int, barrier: Barrier | None, queue: Any
) -> None:
    try:
        queue.put(trio.run(write, url, schema, worker, count, barrier))
    except BaseException as exc:
        queue.put(f"worker {worker} failed: {exc!r}")
