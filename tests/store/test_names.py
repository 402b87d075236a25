"""Group names: what no store can hold is a ValueError everywhere, on every backend.

The rules (trio_gm.store.names) are the union of what SQLite and PostgreSQL
refuse, so that a name that works on one backend works on the other, and a
bad one fails before any database work with a message naming the problem,
not deep inside a driver (a UnicodeEncodeError, PostgreSQL's "cannot contain
NUL" as a StoreError inside an ExceptionGroup, a btree "index row size"
error for a long name).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import trio_gm
from tests.gm_helpers import Events, Reporter
from trio_gm import MemberId
from trio_gm.store import MAX_GROUP_NAME_LENGTH, GroupStore, check_group_name, open_store, ops

from .conftest import Target

A, B = MemberId("n", 1), MemberId("n", 2)

BAD_NAMES = [
    pytest.param("", "non-empty str, got ''", id="empty"),
    pytest.param(42, "non-empty str, got 42", id="not-a-str"),
    pytest.param("a\x00b", r"contains a NUL character \(at index 1\)", id="nul"),
    pytest.param("\x00", r"NUL character \(at index 0\), which PostgreSQL cannot", id="only-nul"),
    pytest.param("room\ud800", r"lone surrogate '\\ud800' \(at index 4\)", id="lone-surrogate"),
    pytest.param("\udcff", r"lone surrogate '\\udcff'.*not valid Unicode", id="argv-byte"),
    pytest.param(
        "x" * (MAX_GROUP_NAME_LENGTH + 1),
        rf"'x{{40}}'\.\.\. is {MAX_GROUP_NAME_LENGTH + 1} characters long: "
        rf"at most {MAX_GROUP_NAME_LENGTH} fit",
        id="too-long",
    ),
]

#: Every public store method that takes a group name, called with ``name``.
STORE_CALLS: dict[str, Callable[[GroupStore, Any], Awaitable[object]]] = {
    "read_group": lambda store, name: store.read_group(name),
    "transact": lambda store, name: store.transact(name, lambda current: (None, None)),
    "transact_op": lambda store, name: store.transact(name, ops.RecordDead(A, B)),
    "forget_group": lambda store, name: store.forget_group(name),
    "prune_or_create_group": lambda store, name: store.prune_or_create_group(name, A),
    "record_new_member": lambda store, name: store.record_new_member(name, A, B),
    "record_dead_member": lambda store, name: store.record_dead_member(name, A, B),
    "erase_members": lambda store, name: store.erase_members(name, A, [B]),
}


@pytest.mark.parametrize(("name", "match"), BAD_NAMES)
@pytest.mark.parametrize("call", sorted(STORE_CALLS))
async def test_every_store_method_refuses_a_name_no_store_can_hold(
    store: GroupStore, call: str, name: Any, match: str
) -> None:
    before = store.statistics()
    with pytest.raises(ValueError, match=match):
        await STORE_CALLS[call](store, name)
    # Refused before any database work: nothing was read, tried or counted.
    assert store.statistics() == before


@pytest.mark.parametrize(("name", "match"), BAD_NAMES)
async def test_open_member_refuses_a_name_no_store_can_hold(
    target: Target, name: Any, match: str
) -> None:
    async with open_store(target.url, schema=target.schema) as store:
        await store.create_tables()
        async with trio_gm.open_node(store) as node:
            with pytest.raises(ValueError, match=match):
                async with node.open_member(name, Reporter(Events())):
                    pytest.fail("must not join")  # pragma: no cover


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("x" * MAX_GROUP_NAME_LENGTH, id="longest-ascii"),
        # 4 bytes of UTF-8 each: the longest key PostgreSQL is asked to index.
        pytest.param("\U0010fffd" * MAX_GROUP_NAME_LENGTH, id="longest-4-byte"),
        pytest.param("\u9fa5" * MAX_GROUP_NAME_LENGTH, id="longest-cjk"),
        pytest.param(" \t\n\x01\x7f\ufeff\ufffe", id="controls-and-oddities"),
        pytest.param("\U0001f600 room", id="emoji"),
    ],
)
async def test_names_at_the_edges_are_stored_and_read_back_exactly(
    store: GroupStore, name: str
) -> None:
    await _round_trip(store, name)


async def test_open_member_joins_a_group_with_the_longest_name(target: Target) -> None:
    name = "\U0010fffd" * MAX_GROUP_NAME_LENGTH
    events = Events()
    async with open_store(target.url, schema=target.schema) as store:
        await store.create_tables()
        async with trio_gm.open_node(store) as node:
            async with node.open_member(name, Reporter(events), "a") as a:
                await a.broadcast("hello")
                await events.expect("msg", "a", a.id, "hello")
                assert (await a.info()).group_name == name


def _storable(name: str) -> bool:
    """The documented rules, written independently of check_group_name."""
    return (
        0 < len(name) <= MAX_GROUP_NAME_LENGTH
        and "\x00" not in name
        and not any(unicodedata.category(c) == "Cs" for c in name)
    )


async def _round_trip(store: GroupStore, name: str) -> None:
    created = await store.prune_or_create_group(name, A)
    assert created.name == name
    read = await store.read_group(name)
    assert read is not None
    assert read.name == name
    assert read.members == created.members
    await store.forget_group(name)
    assert await store.read_group(name) is None


_CHARACTERS = st.characters(exclude_categories=()) | st.sampled_from(
    ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\udc80", "\U0010ffff", "\u9fa5"]
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.text(_CHARACTERS, max_size=12)
    | st.text(_CHARACTERS, min_size=MAX_GROUP_NAME_LENGTH - 3, max_size=MAX_GROUP_NAME_LENGTH + 3)
)
async def test_every_name_is_refused_with_value_error_or_round_trips(
    target: Target, name: str
) -> None:
    try:
        check_group_name(name)
    except ValueError:
        refused = True
    else:
        refused = False
    assert refused is not _storable(name)
    event("refused" if refused else "stored")
    # Each example is a trio run of its own (pytest-trio), so it opens its own store.
    async with open_store(target.url, schema=target.schema) as store:
        await store.create_tables()
        if refused:
            for call in STORE_CALLS.values():
                with pytest.raises(ValueError, match="group name"):
                    await call(store, name)
            return
        await _round_trip(store, name)
        # A name that round-trips also works through a transaction of the ring's own.
        changed = await store.transact(
            name, lambda current: (ops.PruneOrCreate(B).apply(current, name), "done")
        )
        assert changed == "done"
        assert (await store.read_group(name)) is not None
        await store.forget_group(name)
