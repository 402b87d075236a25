"""The store on SQLite and PostgreSQL: each gm operation, reads, retries, cancellation."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable

import attrs
import pytest
import sqlalchemy
import trio

from trio_gm import MemberId, StoreError, StoreUnavailable
from trio_gm.store import (
    DELETE,
    EraseMembers,
    Group,
    GroupMember,
    GroupStore,
    LostMembership,
    PruneOrCreate,
    RecordDead,
    RecordNewMember,
    RetryPolicy,
    gm_group,
    open_store,
)

from .conftest import LockHolder, Target

A, B, C, N = (MemberId("n", i) for i in range(1, 5))


def ring(*members: MemberId | tuple[MemberId, str], version: int) -> Group:
    return Group(
        "g",
        version,
        tuple(
            GroupMember(m[0], dead=True) if isinstance(m, tuple) else GroupMember(m)
            for m in members
        ),
    )


def dead(member: MemberId) -> tuple[MemberId, str]:
    return (member, "dead")


async def three_member_group(store: GroupStore) -> Group:
    await store.prune_or_create_group("g", A, 10)
    await store.record_new_member("g", A, B)
    group = await store.record_new_member("g", B, C)
    assert group == ring(A, B, C, version=12)
    return group


# --------------------------------------------------------------------- schema


async def test_create_tables_is_idempotent(target: Target) -> None:
    async with open_store(target.url, schema=target.schema) as store:
        await store.create_tables()
        await store.prune_or_create_group("g", A)
        await store.create_tables()
        assert await store.read_group("g") == ring(A, version=0)
        assert store.table_definitions() == (gm_group,)
        assert store.backend == target.backend


async def test_concurrent_create_tables_do_not_collide(target: Target) -> None:
    async with (
        open_store(target.url, schema=target.schema) as one,
        open_store(target.url, schema=target.schema) as two,
    ):
        async with trio.open_nursery() as nursery:
            for store in (one, two, one, two):
                nursery.start_soon(store.create_tables)
        assert await one.read_group("g") is None


async def test_a_missing_table_is_a_store_error_with_a_hint(target: Target) -> None:
    async with open_store(target.url, schema=target.schema) as store:
        with pytest.raises(StoreError, match=r"create_tables\(\)") as info:
            await store.read_group("g")
        assert "read_group of group 'g'" in str(info.value)


# ------------------------------------------------------------ gm operations


async def test_read_of_a_missing_group_is_none(store: GroupStore) -> None:
    assert await store.read_group("nobody") is None


async def test_prune_or_create_creates_keeps_and_prunes(store: GroupStore) -> None:
    created = await store.prune_or_create_group("g", A, 5)
    assert created == ring(A, version=5)
    # Someone alive: the group is kept, whatever the newcomer knows.
    assert await store.prune_or_create_group("g", B, 50) == created
    await store.record_dead_member("g", A, A)
    # All dead: replaced by the newcomer, above the row's version...
    assert await store.prune_or_create_group("g", B) == ring(B, version=7)
    await store.record_dead_member("g", B, B)
    # ... and never below the newcomer's own version (bug 25670).
    assert await store.prune_or_create_group("g", C, 40) == ring(C, version=40)
    assert await store.read_group("g") == ring(C, version=40)


async def test_record_new_member_inserts_right_of_left(store: GroupStore) -> None:
    await three_member_group(store)
    group = await store.record_new_member("g", A, N)
    assert group == ring(A, N, B, C, version=13)
    assert await store.read_group("g") == group


async def test_record_new_member_never_duplicates_issue_972(store: GroupStore) -> None:
    group = await three_member_group(store)
    assert await store.record_new_member("g", A, C) == group
    assert await store.record_new_member("g", C, B) == group
    assert await store.read_group("g") == group  # no new version either
    assert store.statistics().writes == 3


async def test_record_new_member_needs_left_alive(store: GroupStore) -> None:
    await three_member_group(store)
    await store.record_dead_member("g", A, B)
    lost = await store.record_new_member("g", B, N)
    assert isinstance(lost, LostMembership)
    assert lost.group == "g"
    assert str(B) in lost.reason
    assert await store.read_group("g") == ring(A, dead(B), C, version=13)


async def test_operations_on_a_missing_group_are_lost_membership(store: GroupStore) -> None:
    missing = LostMembership("g", "group 'g' does not exist")
    assert await store.record_new_member("g", A, N) == missing
    assert await store.record_dead_member("g", A, B) == missing
    assert await store.record_dead_member("g", A, B, verify=False) == missing
    assert await store.erase_members("g", A, [B]) == missing
    assert await store.read_group("g") is None


async def test_record_dead_member(store: GroupStore) -> None:
    await three_member_group(store)
    assert await store.record_dead_member("g", A, B) == ring(A, dead(B), C, version=13)
    # Already dead, or never there: no change, no new version.
    assert await store.record_dead_member("g", C, B) == ring(A, dead(B), C, version=13)
    assert await store.record_dead_member("g", C, N) == ring(A, dead(B), C, version=13)
    # A member others recorded dead has lost its membership...
    lost = await store.record_dead_member("g", B, C)
    assert isinstance(lost, LostMembership)
    assert str(B) in lost.reason
    # ... but a joiner, not in the ring yet, may record its dead left.
    assert await store.record_dead_member("g", N, C, verify=False) == ring(
        A, dead(B), dead(C), version=14
    )


async def test_erase_members(store: GroupStore) -> None:
    await three_member_group(store)
    await store.record_dead_member("g", A, B)
    await store.record_dead_member("g", A, C)
    assert await store.erase_members("g", A, [A, N]) == ring(A, dead(B), dead(C), version=14)
    assert await store.erase_members("g", A, [C]) == ring(A, dead(B), version=15)
    lost = await store.erase_members("g", C, [B])
    assert isinstance(lost, LostMembership)
    assert await store.erase_members("g", A, iter([B])) == ring(A, version=16)


async def test_forget_group(store: GroupStore) -> None:
    await three_member_group(store)
    await store.forget_group("g")
    assert await store.read_group("g") is None
    await store.forget_group("g")  # a missing group is no error
    assert isinstance(await store.record_dead_member("g", A, B), LostMembership)
    # A forgotten group starts again where its first member says.
    assert await store.prune_or_create_group("g", N, 12) == ring(N, version=12)


# -------------------------------------------------------------------- transact


async def test_transact_runs_an_op_and_writes_only_a_change(store: GroupStore) -> None:
    assert await store.transact("g", PruneOrCreate(A, 4)) == ring(A, version=4)
    assert await store.transact("g", RecordNewMember(A, B)) == ring(A, B, version=5)
    # No change: the stored group comes back, and nothing is written.
    assert await store.transact("g", RecordNewMember(A, B)) == ring(A, B, version=5)
    assert await store.transact("g", RecordDead(A, B)) == ring(A, dead(B), version=6)
    lost = await store.transact("g", RecordDead(B, A))
    assert isinstance(lost, LostMembership)
    assert await store.transact("g", EraseMembers(A, (B,))) == ring(A, version=7)
    assert await store.read_group("g") == ring(A, version=7)
    stats = store.statistics()
    assert (stats.transactions, stats.commits, stats.writes) == (6, 6, 4)
    missing = await store.transact("h", RecordDead(A, B))
    assert missing == LostMembership("h", "group 'h' does not exist")
    assert await store.read_group("h") is None


async def test_transact_writes_deletes_or_leaves_the_row(store: GroupStore) -> None:
    def create(current: Group | None) -> tuple[Group, str]:
        assert current is None
        return ring(A, version=1), "created"

    assert await store.transact("g", create) == "created"

    def keep(current: Group | None) -> tuple[None, Group | None]:
        return None, current

    assert await store.transact("g", keep) == ring(A, version=1)

    def remove(current: Group | None) -> tuple[object, int]:
        return DELETE, 7

    assert await store.transact("g", remove) == 7  # type: ignore[arg-type]
    assert await store.read_group("g") is None
    stats = store.statistics()
    assert (stats.transactions, stats.commits, stats.writes, stats.retries) == (3, 3, 2, 0)


async def test_an_exception_in_the_function_rolls_back(store: GroupStore) -> None:
    await store.prune_or_create_group("g", A)

    class Boom(Exception):
        pass

    def fail(current: Group | None) -> tuple[Group, None]:
        raise Boom

    with pytest.raises(Boom):
        await store.transact("g", fail)

    def wrong_name(current: Group | None) -> tuple[Group, None]:
        return Group("other", 1, ()), None

    with pytest.raises(ValueError, match="tried to write group 'other'"):
        await store.transact("g", wrong_name)
    assert await store.read_group("g") == ring(A, version=0)
    assert await store.read_group("other") is None


async def test_a_malformed_row_is_a_store_error(store: GroupStore, target: Target) -> None:
    def write_garbage(conn: sqlalchemy.Connection) -> None:
        conn.execute(gm_group.insert().values(name="g", version=1, members=[{"id": 3}]))

    engine = sqlalchemy.create_engine(target.url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.execution_options(schema_translate_map={None: target.schema}).begin() as conn:
            write_garbage(conn)
    finally:
        engine.dispose()
    with pytest.raises(StoreError, match="stored row of group 'g' is malformed"):
        await store.read_group("g")


async def test_reads_see_every_commit_of_another_store(store: GroupStore, target: Target) -> None:
    async with open_store(target.url, schema=target.schema) as other:
        for i in range(5):
            written = await other.prune_or_create_group(f"g{i}", A, i)
            assert await store.read_group(f"g{i}") == written
            await other.record_new_member(f"g{i}", A, B)
            assert await store.read_group(f"g{i}") == Group(
                f"g{i}", i + 1, (GroupMember(A), GroupMember(B))
            )


async def test_in_memory_sqlite_is_usable_from_worker_threads() -> None:
    async with open_store("sqlite://") as store:
        await store.create_tables()
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(store.prune_or_create_group, f"g{i}", A, i)
        for i in range(8):
            assert await store.read_group(f"g{i}") == Group(f"g{i}", i, (GroupMember(A),))
    # A new in-memory store is a new, empty database.
    async with open_store("sqlite://") as store:
        await store.create_tables()
        assert await store.read_group("g0") is None


async def test_a_closed_store_refuses_calls(target: Target) -> None:
    async with open_store(target.url, schema=target.schema) as store:
        pass
    with pytest.raises(StoreError, match="closed"):
        await store.read_group("g")


# --------------------------------------------------------------------- retries


@attrs.frozen
class SignallingRetry(RetryPolicy):
    """A retry policy that tells the test when the store first backs off."""

    retrying: trio.Event = attrs.field(factory=trio.Event, eq=False)

    def backoff(self, failures: int, rng: random.Random) -> float:
        self.retrying.set()
        return super().backoff(failures, rng)

    def outage_backoff(self, failures: int, rng: random.Random) -> float:
        self.retrying.set()
        return super().outage_backoff(failures, rng)


async def test_a_busy_database_is_retried_until_it_is_free(
    target: Target, lock_holder: Callable[[str], LockHolder]
) -> None:
    policy = SignallingRetry()
    async with open_store(
        target.url, schema=target.schema, lock_timeout=0.05, retry=policy
    ) as store:
        await store.create_tables()
        await store.prune_or_create_group("g", A)
        holder = lock_holder("g")
        await trio.to_thread.run_sync(holder.acquire)
        async with trio.open_nursery() as nursery:
            results: list[Group | LostMembership] = []

            async def add() -> None:
                results.append(await store.record_new_member("g", A, B))

            nursery.start_soon(add)
            await policy.retrying.wait()
            await trio.to_thread.run_sync(holder.release)
        assert results == [ring(A, B, version=1)]
        stats = store.statistics()
        assert stats.busy_errors >= 1
        assert stats.retries == stats.busy_errors + stats.serialization_failures
        assert stats.disconnects == 0
        assert stats.conflicts == 0


async def test_a_lock_held_past_the_outage_timeout_is_store_unavailable_saying_locked(
    target: Target, lock_holder: Callable[[str], LockHolder]
) -> None:
    policy = RetryPolicy(max_attempts=3, first_outage_backoff=0.01, max_outage_backoff=0.02)
    async with open_store(
        target.url, schema=target.schema, lock_timeout=0.05, retry=policy, outage_timeout=0.3
    ) as store:
        await store.create_tables()
        await store.prune_or_create_group("g", A)
        holder = lock_holder("g")
        await trio.to_thread.run_sync(holder.acquire)
        try:
            with trio.fail_after(10), pytest.raises(StoreUnavailable) as info:
                await store.record_dead_member("g", A, A)
        finally:
            await trio.to_thread.run_sync(holder.release)
        message = str(info.value)
        assert "record_dead_member of group 'g'" in message
        assert "has been locked for" in message
        assert "outage_timeout of 0.3 s" in message
        assert "locked/busy" in message
        assert "conflict" not in message
        assert info.value.url == store.url
        assert info.value.unavailable_for is not None
        assert info.value.unavailable_for >= 0.3
        stats = store.statistics()
        # Bounded by time, not by max_attempts: more than 3 attempts ran.
        assert stats.busy_errors > 3
        assert stats.conflicts == 0
        assert stats.outages == 1
        assert stats.unavailable_for >= 0.3
        # The next success ends the outage.
        await store.record_dead_member("g", A, A)
        assert store.statistics().unavailable_for == 0.0


@pytest.mark.postgres
async def test_a_serialization_failure_reruns_the_whole_transaction(
    postgres_target: Target,
) -> None:
    """Another client commits between our read and our write: 40001, then a re-run.

    PostgreSQL only: SQLite's BEGIN IMMEDIATE lets no one in between.
    """
    target = postgres_target
    async with open_store(target.url, schema=target.schema) as store:
        await store.create_tables()
        await store.prune_or_create_group("g", A)
        await rerun_after_a_concurrent_commit(store, target)


async def rerun_after_a_concurrent_commit(store: GroupStore, target: Target) -> None:
    engine = sqlalchemy.create_engine(target.url, poolclass=sqlalchemy.pool.NullPool)
    seen: list[int] = []

    def add_after_a_concurrent_commit(current: Group | None) -> tuple[Group, int]:
        assert current is not None
        seen.append(current.version)
        if len(seen) == 1:
            with engine.execution_options(
                schema_translate_map={None: target.schema}
            ).begin() as conn:
                conn.execute(gm_group.update().where(gm_group.c.name == "g").values(version=100))
        return Group("g", current.version + 1, (*current.members, GroupMember(B))), 0

    try:
        await store.transact("g", add_after_a_concurrent_commit)
    finally:
        engine.dispose()
    assert seen == [0, 100]
    assert await store.read_group("g") == ring(A, B, version=101)
    stats = store.statistics()
    assert (stats.serialization_failures, stats.retries, stats.commits) == (1, 1, 2)


@pytest.mark.postgres
async def test_a_dropped_pooled_connection_is_replaced(postgres_target: Target) -> None:
    """The server ends our idle connection; the next call reconnects, once."""
    target = postgres_target
    app = f"trio_gm_test_{uuid.uuid4().hex[:12]}"
    url = sqlalchemy.make_url(target.url).update_query_dict({"application_name": app})
    async with open_store(url, schema=target.schema, pool_size=1) as store:
        await store.create_tables()
        await store.prune_or_create_group("g", A)
        engine = sqlalchemy.create_engine(target.url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.begin() as conn:
                ended = conn.execute(
                    sqlalchemy.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = :app"
                    ),
                    {"app": app},
                ).scalar_one()
        finally:
            engine.dispose()
        assert ended == 1
        assert await store.record_new_member("g", A, B) == ring(A, B, version=1)
        stats = store.statistics()
        assert (stats.disconnects, stats.retries, stats.conflicts) == (1, 1, 0)


# ---------------------------------------------------------------- cancellation


async def test_a_caller_cancelled_before_the_transaction_commits_nothing(
    store: GroupStore,
) -> None:
    await store.prune_or_create_group("g", A)
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.record_new_member("g", A, B)
    assert scope.cancelled_caught
    assert await store.read_group("g") == ring(A, version=0)


async def test_a_caller_cancelled_while_retrying_commits_nothing(
    target: Target, lock_holder: Callable[[str], LockHolder]
) -> None:
    policy = SignallingRetry()
    async with open_store(
        target.url, schema=target.schema, lock_timeout=0.05, retry=policy
    ) as store:
        await store.create_tables()
        await store.prune_or_create_group("g", A)
        holder = lock_holder("g")
        await trio.to_thread.run_sync(holder.acquire)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.record_new_member, "g", A, B)
            await policy.retrying.wait()
            assert store.statistics().busy_errors == 1
            nursery.cancel_scope.cancel()
        await trio.to_thread.run_sync(holder.release)
        assert await store.read_group("g") == ring(A, version=0)
        assert store.statistics().commits == 1  # the prune_or_create only


async def test_a_cancel_during_a_committed_attempt_returns_the_result(
    store: GroupStore,
) -> None:
    """The worker is never abandoned: the result arrives, then the cancellation."""
    await store.prune_or_create_group("g", A)
    scope = trio.CancelScope()

    def add_and_get_cancelled(current: Group | None) -> tuple[Group, str]:
        assert current is not None
        trio.from_thread.run_sync(scope.cancel)
        return Group("g", current.version + 1, (*current.members, GroupMember(B))), "done"

    results: list[str] = []
    with scope:
        results.append(await store.transact("g", add_and_get_cancelled))
        await trio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert results == ["done"]
    assert await store.read_group("g") == ring(A, B, version=1)
